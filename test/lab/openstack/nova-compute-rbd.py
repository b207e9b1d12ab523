#!/usr/bin/python3
"""nova-compute for the lab's second hypervisor (RBD disks), on the SAME libvirtd.

Nova's libvirt driver names its node after libvirt's hostname (virConnectGetHostname), so two
computes on one libvirtd would report the same hypervisor_hostname and fight over one
Placement resource provider. This launcher makes the node name $LAB_NOVA_NODENAME instead;
everything else is the unmodified nova-compute.
"""
import os
import sys

from nova.virt.libvirt import host

NODENAME = os.environ["LAB_NOVA_NODENAME"]
host.Host.get_hostname = lambda self: NODENAME

from nova.cmd.compute import main  # noqa: E402

sys.exit(main())
