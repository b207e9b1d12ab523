# Shared by openstack-up.sh and openstack-down.sh (source after lib.sh).
OS=$LAB/openstack
OS_ETC=$OS/etc OS_DATA=$OS/data OS_RUN=$OS/run OS_BIN=$OS/bin
OS_READY=$LAB_STATE/openstack.ready
TPL=$LAB_SRC/openstack

# Every daemon of this part, in start order (openstack-down.sh stops them in reverse).
OS_INFRA=(os-mariadb os-epmd os-rabbitmq os-memcached)
OS_SERVICES=(os-keystone os-glance-api os-placement os-nova-api os-nova-conductor
  os-nova-scheduler os-cinder-api os-cinder-scheduler os-neutron-server os-cinder-volume
  os-vhu-sink os-nova-compute os-nova-compute-rbd)

os_sql() { mariadb --defaults-file="$OS_ETC/my.cnf" -uroot -N -B "$@"; }
os_virsh() { lab_timeout 30 virsh -q -c qemu:///system "$@"; }

# UUIDs of the libvirt domains this part's Nova created: Nova writes the console log into the
# instance directory, which lies under $OS_DATA/nova. Other domains on the same libvirtd
# (the hypervisor part's vp-*, anything else) never match.
os_nova_domains() {
  local u
  for u in $(os_virsh list --all --uuid 2>/dev/null); do
    os_virsh dumpxml "$u" 2>/dev/null | grep -q "$OS_DATA/nova/instances" && echo "$u"
  done
  return 0
}
