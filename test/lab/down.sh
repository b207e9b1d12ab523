#!/usr/bin/env bash
# Stops the whole lab in reverse order: OpenStack → hypervisor → Ceph. Only processes the lab
# started (pid files) are stopped, never anything by name. Data is kept, so up.sh brings the
# same lab back. `npm run lab:down`.
#
# --wipe: also delete everything the lab created — $LAB, the files it put in /etc/ceph, the
# sample domains and secret in libvirt, libvirt's capability cache — so the machine is as it was
# (installed packages stay). LAB_OPENSTACK=0 leaves the OpenStack part alone (and then keeps
# $LAB if the OpenStack part has data there).
. "$(dirname "$0")/lib.sh"

wipe=()
for a in "$@"; do
  case "$a" in --wipe) wipe=(--wipe) ;; *) die "usage: down.sh [--wipe]" ;; esac
done

t0=$SECONDS
# Each part is stopped even when an earlier one failed: a half-stopped lab is the worst case.
rc=0
if [ -f "$LAB_SRC/openstack-down.sh" ] && [ "${LAB_OPENSTACK:-1}" != 0 ]; then
  bash "$LAB_SRC/openstack-down.sh" "${wipe[@]}" || rc=1
fi
bash "$LAB_SRC/hypervisor-down.sh" "${wipe[@]}" || rc=1
bash "$LAB_SRC/ceph-down.sh" "${wipe[@]}" || rc=1

if [ ${#wipe[@]} -gt 0 ] && [ $rc = 0 ]; then
  if [ "${LAB_OPENSTACK:-1}" = 0 ] && [ -d "$LAB/openstack" ]; then
    log "LAB_OPENSTACK=0: $LAB kept (the OpenStack part's data lives in $LAB/openstack)"
  else
    # Last check: nothing the lab started may still run before its pid files go.
    for f in "$LAB_PIDS"/*.pid; do
      [ -e "$f" ] || continue
      n=$(basename "$f" .pid)
      if lab_running "$n"; then log "still running: $n (pid $(lab_pid "$n")); $LAB kept"; rc=1; fi
    done
    [ $rc = 0 ] && rm -rf "$LAB"
  fi
fi
[ $rc = 0 ] || die "down finished with errors after $((SECONDS - t0)) s"
log "lab down${wipe:+ and wiped} in $((SECONDS - t0)) s"
