#!/usr/bin/env bash
# Stops the OpenStack part of the lab: only the processes openstack-up.sh started (pid
# files), in this order: OpenStack services (in parallel), then the guests of this lab's Nova
# (virsh destroy; other domains on the libvirtd are never touched), then memcached,
# RabbitMQ, epmd, MariaDB. Data is kept: openstack-up.sh brings the same cloud back, and
# nova-compute restarts the guests (resume_guests_state_on_host_boot).
#
# --wipe: also undefine this lab's Nova domains, delete the RBD images Cinder and Nova made
# (volumes/volume-*, vms/<uuid>_disk*; only when Ceph is up — a Ceph wipe removes them
# anyway) and delete $LAB/openstack, $LAB/etc's OpenStack files and $LAB/openstack.json.
. "$(dirname "$0")/lib.sh"
. "$LAB_SRC/openstack/os-lib.sh"

wipe=0
for a in "$@"; do
  case "$a" in --wipe) wipe=1 ;; *) die "usage: openstack-down.sh [--wipe]" ;; esac
done
t0=$SECONDS
rm -f "$OS_READY"

# 1. OpenStack services, all at once (each gets SIGTERM, SIGKILL after 10 s).
pids=()
for s in "${OS_SERVICES[@]}"; do lab_stop "$s" & pids+=($!); done
for p in "${pids[@]}"; do wait "$p" || true; done

# 2. This lab's guests. Only when libvirtd answers (the hypervisor part may be down already).
if os_virsh uri >/dev/null 2>&1; then
  for u in $(os_nova_domains); do
    if [ "$(os_virsh domstate "$u" 2>/dev/null)" = running ] || [ "$(os_virsh domstate "$u" 2>/dev/null)" = paused ]; then
      os_virsh destroy "$u" >/dev/null 2>&1 || true
    fi
    if [ $wipe = 1 ]; then
      os_virsh undefine "$u" --nvram >/dev/null 2>&1 || os_virsh undefine "$u" >/dev/null 2>&1 || true
    fi
  done
elif [ $wipe = 1 ]; then
  log "WARNING: libvirtd does not answer: Nova's domain definitions (if any) stay; the next openstack-up.sh removes them"
fi

# 3. Infrastructure, in reverse start order.
for ((i = ${#OS_INFRA[@]} - 1; i >= 0; i--)); do lab_stop "${OS_INFRA[$i]}"; done

if [ $wipe = 1 ]; then
  # RBD images of Cinder volumes/snapshots and Nova rbd disks. Clones must go before their
  # parents' snapshots, so loop a few passes; best effort (Ceph may be down or gone).
  ceph_json=$LAB_STATE/ceph.json
  if [ -f "$LAB_STATE/ceph.ready" ] && [ -f "$ceph_json" ]; then
    conf=$(jq -r .ceph.conf "$ceph_json") keyring=$(jq -r .ceph.keyring "$ceph_json")
    rbd_=(lab_timeout 60 rbd --conf "$conf" --id volumes --keyring "$keyring")
    for pass in 1 2 3 4; do
      left=0
      for pool in volumes vms; do
        for img in $("${rbd_[@]}" ls "$pool" 2>/dev/null | grep -E '^(volume-|[0-9a-f-]{36}_disk)' || true); do
          left=1
          for snap in $("${rbd_[@]}" snap ls --format json "$pool/$img" 2>/dev/null | jq -r '.[].name' 2>/dev/null); do
            "${rbd_[@]}" snap unprotect "$pool/$img@$snap" >/dev/null 2>&1 || true
          done
          "${rbd_[@]}" snap purge "$pool/$img" >/dev/null 2>&1 || true
          "${rbd_[@]}" rm "$pool/$img" >/dev/null 2>&1 || true
        done
      done
      [ $left = 1 ] || break
    done
  fi
  rm -rf "$OS" "$LAB/openstack.json"
  rm -f "$LAB/etc/clouds.yaml" "$LAB/etc/"{admin,backup,alice}-openrc "$LAB/etc/backup-appcred.json" \
    "$LAB/etc/alice-key" "$LAB/etc/alice-key.pub"
  rm -f "$LAB_LOGS"/os-*.log
  declare -F lab_unpublish >/dev/null && lab_unpublish openstack
  log "openstack stopped and wiped in $((SECONDS - t0)) s"
else
  log "openstack stopped in $((SECONDS - t0)) s (data kept in $OS)"
fi
