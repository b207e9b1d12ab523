"""ML2 mechanism driver for the vprotect lab: binds every port, wires nothing.

The lab has no L2 agents (no OVS, no bridges, no namespaces: loopback only), so no real
mechanism driver could bind a port and Nova would fail the boot with PortBindingFailed.
This driver binds any port on any host to the first segment with
    vif_type = "tap", vif_details = {"port_filter": False}
so Nova's libvirt driver creates a host tap device (tapXXXXXXXX-XX, no address) and gives
the guest a NIC on it; nothing is connected behind it. Port status becomes ACTIVE, as an
agent would report. Nova must not wait for network-vif-plugged
(vif_plugging_timeout = 0 in nova.conf).
"""
from neutron_lib.api.definitions import portbindings
from neutron_lib import constants
from neutron_lib.plugins.ml2 import api
from oslo_log import log

LOG = log.getLogger(__name__)


class LabNoWireMechanismDriver(api.MechanismDriver):

    def initialize(self):
        LOG.info("lab_nowire mechanism driver: ports are bound but not wired")

    def bind_port(self, context):
        vnic_type = context.current.get(portbindings.VNIC_TYPE, portbindings.VNIC_NORMAL)
        if vnic_type != portbindings.VNIC_NORMAL:
            return
        for segment in context.segments_to_bind:
            context.set_binding(segment[api.ID], portbindings.VIF_TYPE_TAP,
                                {portbindings.CAP_PORT_FILTER: False},
                                status=constants.PORT_STATUS_ACTIVE)
            return

    @property
    def connectivity(self):
        return portbindings.CONNECTIVITY_L2
