#!/usr/bin/env bash
# The whole lab, in dependency order: packages → Ceph → hypervisor → OpenStack (when its script
# exists and LAB_OPENSTACK != 0). Every step is idempotent, so this is also "make sure it runs".
# `npm run lab:up`. Env: see ceph-up.sh (CEPH_OBJECTSTORE, CEPH_FRESH), hypervisor-up.sh
# (HV_NETNS), openstack-up.sh.
. "$(dirname "$0")/lib.sh"

step() { # NAME SCRIPT...
  local name=$1 t=$SECONDS; shift
  bash "$@" || die "$name failed (see the messages above; logs in $LAB_LOGS)"
  log "== $name: $((SECONDS - t)) s"
}

t0=$SECONDS
step install "$LAB_SRC/install.sh"
step ceph "$LAB_SRC/ceph-up.sh"
step hypervisor "$LAB_SRC/hypervisor-up.sh"
if [ -f "$LAB_SRC/openstack-up.sh" ] && [ "${LAB_OPENSTACK:-1}" != 0 ]; then
  step openstack "$LAB_SRC/openstack-up.sh"
fi
log "lab up in $((SECONDS - t0)) s — $LAB/lab.json; bash test/lab/status.sh"
