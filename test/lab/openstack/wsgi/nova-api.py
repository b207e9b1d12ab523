# uwsgi entry point for nova-api (compute API). Config: $OS_NOVA_CONFIG_DIR/$OS_NOVA_CONFIG_FILES.
from nova.api.openstack.compute.wsgi import init_application

application = init_application()
