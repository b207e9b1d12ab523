# uwsgi entry point for Keystone (the keystone package's keystone-wsgi-public is not installed).
# Config: $OS_KEYSTONE_CONFIG_DIR/keystone.conf.
from keystone.server.wsgi import initialize_public_application

application = initialize_public_application()
