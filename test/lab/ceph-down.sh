#!/usr/bin/env bash
# Stops the lab's Ceph daemons (by pid file only). Data stays, so ceph-up.sh brings the same
# cluster back. --wipe also deletes the cluster's data and the files the lab put in /etc/ceph.
#
# Stop the hypervisor part first (down.sh does): a running vp-rbd domain would otherwise hang
# on I/O to a cluster that is gone.
. "$(dirname "$0")/lib.sh"
. "$LAB_SRC/ceph-lib.sh"

wipe=0
for a in "$@"; do
  case "$a" in --wipe) wipe=1 ;; *) die "usage: ceph-down.sh [--wipe]" ;; esac
done

t0=$SECONDS
rm -f "$CEPH_READY"
stop_all
if [ $wipe = 1 ]; then
  rm -rf "$CEPH_DIR"
  remove_etc_ceph
  lab_unpublish ceph
  log "ceph stopped and wiped in $((SECONDS - t0)) s"
else
  log "ceph stopped in $((SECONDS - t0)) s (data kept in $CEPH_DIR)"
fi
