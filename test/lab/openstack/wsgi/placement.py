# uwsgi entry point for Placement. Config: $OS_PLACEMENT_CONFIG_DIR/placement.conf.
from placement.wsgi import init_application

application = init_application()
