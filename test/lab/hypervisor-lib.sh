# Shared by hypervisor-up.sh, hypervisor-down.sh and status.sh (source after lib.sh).
SSH_DIR=$LAB/ssh
VMS_DIR=$LAB/vms                     # disks, scratch files, NBD sockets: libvirt-qemu writes here
HV_READY=$LAB_STATE/hypervisor.ready
LIBVIRT_URI=qemu:///system           # the machine's one libvirtd, shared with nova-compute
# Overridable so that a second, throw-away lab can run beside the main one on the same
# libvirtd (the lab's destructive self-tests): ssh port, domain name prefix, netns names.
SSH_PORT=${HV_SSH_PORT:-2222}
HV_PREFIX=${HV_PREFIX:-vp-}
# The sample domains (templates test/lab/domains/vp-KIND.xml); the rbd one only while Ceph is up.
HV_KINDS=(qcow2 raw two agent)
HV_DOMAINS=("${HV_KINDS[@]/#/$HV_PREFIX}" "${HV_PREFIX}rbd")
RBD_IMAGE=vms/${HV_PREFIX}rbd-disk
# Optional second hypervisor in a network namespace, reached over a veth pair.
NETNS_HV=${HV_PREFIX}hv NETNS_CI=${HV_PREFIX}ci
NETNS_HV_IP=10.200.0.2 NETNS_CI_IP=10.200.0.1
NETNS_HV_DEV=${NETNS_HV}0 NETNS_CI_DEV=${NETNS_CI}0

virsh_() { lab_timeout 60 virsh -q -c "$LIBVIRT_URI" "$@"; }
libvirt_answers() { lab_timeout 10 virsh -c "$LIBVIRT_URI" version >/dev/null 2>&1; }

# A libvirtd the lab did not start (e.g. the machine's own) is used, never stopped.
# Its pid file is /run/libvirtd.pid (fcntl-locked while it runs).
foreign_daemon() {
  local name=$1 pid
  lab_running "$name" && return 1
  pid=$(cat "/run/$name.pid" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ]
}

# DOM_STATE[name] = libvirt's state ("running", "shut off", ...) of every defined domain: one
# virsh call for all (each virsh call costs 0.1-0.8 s here).
declare -A DOM_STATE=()
read_dom_states() {
  local line
  DOM_STATE=()
  while read -r line; do
    [[ "$line" =~ ^[-0-9]+[[:space:]]+([^[:space:]]+)[[:space:]]+(.+)$ ]] || continue
    DOM_STATE[${BASH_REMATCH[1]}]=${BASH_REMATCH[2]}
  done < <(virsh_ list --all)
}
