#!/usr/bin/env bash
# Stops the hypervisor part: powers off the lab's sample domains (vp-*, see HV_PREFIX), then the netns sshd,
# libvirtd, virtlogd and sshd — only daemons the lab started (pid files), never by name.
# Disks, keys and domain definitions stay, so hypervisor-up.sh brings the same lab back.
#
# --wipe also undefines the sample domains (with their checkpoint/snapshot metadata), removes
# the libvirt ceph secret and the rbd image vms/vp-rbd-disk, the disks, keys, domain logs, and
# libvirt's qemu capability cache, so the machine is as it was before the lab.
#
# Domains that are not the lab's (e.g. nova's instance-*) are never touched: if any still run,
# they keep running without libvirtd, which reconnects to them when it starts again.
. "$(dirname "$0")/lib.sh"
. "$LAB_SRC/hypervisor-lib.sh"
. "$LAB_SRC/ceph-lib.sh"

wipe=0
for a in "$@"; do
  case "$a" in --wipe) wipe=1 ;; *) die "usage: hypervisor-down.sh [--wipe]" ;; esac
done

stop_netns() {
  lab_stop sshd-netns
  local ns
  for ns in "$NETNS_HV" "$NETNS_CI"; do   # deleting a namespace deletes its veth end too
    [ -e "/run/netns/$ns" ] && ip netns del "$ns"
  done
  return 0
}

# --wipe must undefine domains even when libvirtd is down: start ours for the clean-up.
ensure_libvirt_for_cleanup() {
  libvirt_answers && return 0
  foreign_daemon virtlogd || lab_start virtlogd /usr/sbin/virtlogd
  foreign_daemon libvirtd || lab_start libvirtd /usr/sbin/libvirtd
  wait_for "libvirtd" 90 libvirt_answers
}

clean_domains() {
  local name others=()
  read_dom_states
  for name in "${HV_DOMAINS[@]}"; do
    [ -n "${DOM_STATE[$name]:-}" ] || continue
    [ "${DOM_STATE[$name]}" = running ] && virsh_ destroy "$name" >/dev/null
    if [ $wipe = 1 ]; then
      virsh_ undefine "$name" --checkpoints-metadata --snapshots-metadata >/dev/null
    fi
    unset "DOM_STATE[$name]"
  done
  for name in "${!DOM_STATE[@]}"; do [ "${DOM_STATE[$name]}" = running ] && others+=("$name"); done
  [ ${#others[@]} = 0 ] || log "other domains still run on this libvirtd (not the lab's, left alone): ${others[*]}"
}

wipe_ceph_bits() {
  if [ -f "$LAB_STATE/created-libvirt-secret" ]; then
    virsh_ secret-undefine "$CEPH_LIBVIRT_SECRET_UUID" >/dev/null 2>&1 || true
    rm -f "$LAB_STATE/created-libvirt-secret"
  fi
  # The rbd image goes with the cluster anyway; remove it when the cluster stays.
  if [ -f "$CEPH_READY" ] && lab_running ceph-mon; then
    local rbd=(lab_timeout 60 rbd --conf "$CEPH_CONF" --id admin --keyring "$CEPH_DIR/keyrings/ceph.client.admin.keyring")
    if "${rbd[@]}" info "$RBD_IMAGE" >/dev/null 2>&1; then
      "${rbd[@]}" snap purge "$RBD_IMAGE" >/dev/null 2>&1 || true
      "${rbd[@]}" rm --no-progress "$RBD_IMAGE" >/dev/null
    fi
  fi
}

main() {
  local t0=$SECONDS ours_libvirtd=0
  rm -f "$HV_READY"
  stop_netns
  if [ $wipe = 1 ]; then ensure_libvirt_for_cleanup; fi
  lab_running libvirtd && ours_libvirtd=1
  if libvirt_answers; then
    clean_domains
    [ $wipe = 0 ] || wipe_ceph_bits
  fi
  lab_stop libvirtd
  lab_stop virtlogd
  lab_stop sshd
  if [ $wipe = 1 ]; then
    rm -rf "$VMS_DIR" "$SSH_DIR" "$LAB/domains" "$LAB_STATE/accel"
    rm -f "/var/log/libvirt/qemu/$HV_PREFIX"*.log
    # libvirtd's probe of qemu (cached in /var/cache/libvirt): written by our libvirtd.
    [ $ours_libvirtd = 0 ] || rm -f /var/cache/libvirt/qemu/capabilities/*.xml
    if [ -f "$LAB_STATE/created-run-sshd" ]; then
      rmdir /run/sshd 2>/dev/null || true
      rm -f "$LAB_STATE/created-run-sshd"
    fi
    lab_unpublish hypervisor
    log "hypervisor stopped and wiped in $((SECONDS - t0)) s"
  else
    log "hypervisor stopped in $((SECONDS - t0)) s (disks and definitions kept)"
  fi
}

main "$@"
