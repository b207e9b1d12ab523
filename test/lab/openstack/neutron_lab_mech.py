"""ML2 mechanism driver for the vprotect lab: binds every port, wires nothing.

The lab has no L2 agent (no OVS, no bridges, no namespaces: loopback only), so no real
mechanism driver would bind a port, and Nova would fail the boot with PortBindingFailed.
This driver binds any normal port on any host to its first segment as

    vif_type = "vhostuser", vif_details = {vhostuser_socket: <state_path>/vhu/vhu<port id>,
                                          vhostuser_mode: "server", port_filter: false}

Nova turns that into an os-vif VIFVHostUser with the "noop" plugin: nothing is created on
the host (no tap, no bridge, no address), and the guest gets a virtio NIC whose vhost-user
socket (created by qemu, server mode) nobody ever connects to: link down, no traffic.
The port goes ACTIVE, as an agent would report. Nova must not wait for
network-vif-plugged: vif_plugging_timeout = 0 in nova.conf.

(vif_type "tap" was tried first: Nova Zed pre-creates the tap and libvirt 9 refuses it with
"The tapXXX interface already exists".)
"""
import os

from neutron_lib.api.definitions import portbindings
from neutron_lib import constants
from neutron_lib.plugins.ml2 import api
from oslo_config import cfg
from oslo_log import log

LOG = log.getLogger(__name__)


class LabNoWireMechanismDriver(api.MechanismDriver):

    def initialize(self):
        self.sock_dir = os.path.join(cfg.CONF.state_path, "vhu")
        LOG.info("lab_nowire: ports are bound as vhostuser (sockets in %s), never wired",
                 self.sock_dir)

    def bind_port(self, context):
        port = context.current
        if port.get(portbindings.VNIC_TYPE, portbindings.VNIC_NORMAL) != portbindings.VNIC_NORMAL:
            return
        details = {
            portbindings.CAP_PORT_FILTER: False,
            portbindings.VHOST_USER_MODE: portbindings.VHOST_USER_MODE_SERVER,
            portbindings.VHOST_USER_SOCKET: os.path.join(self.sock_dir, ("vhu" + port["id"])[:14]),
        }
        for segment in context.segments_to_bind:
            context.set_binding(segment[api.ID], portbindings.VIF_TYPE_VHOST_USER, details,
                                status=constants.PORT_STATUS_ACTIVE)
            return
