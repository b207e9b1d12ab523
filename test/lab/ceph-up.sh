#!/usr/bin/env bash
# A single-node Ceph cluster on 127.0.0.1: one mon, one mgr, one OSD, pools volumes/images/vms
# (size 1), cephx user client.volumes. Ready marker: $LAB/state/ceph.ready.
#
#   CEPH_OBJECTSTORE=bluestore (default; on a sparse file, no block device needed: survives a
#                    killed daemon, RAM stays bounded) | memstore (dev only: everything in RAM,
#                    faster exports, lost on SIGKILL)
#   CEPH_FRESH=1     wipe the cluster and build it again (same as ceph-down.sh --wipe first)
#
# Idempotent: when everything runs this is a quick check; daemons that died (stale pid files)
# are restarted on their existing data; a missing cluster is built.
. "$(dirname "$0")/lib.sh"
. "$LAB_SRC/ceph-lib.sh"

OBJECTSTORE=${CEPH_OBJECTSTORE:-}
OSD_FILE_SIZE=${CEPH_OSD_FILE_SIZE:-20G}   # sparse: only written data takes disk space

write_conf() {
  local fsid=$1 store=$2
  cat >"$CEPH_CONF" <<EOF
# written by vprotect test/lab/ceph-up.sh — single-node lab cluster on 127.0.0.1
[global]
fsid = $fsid
mon_host = [v2:127.0.0.1:$CEPH_MON_PORT_V2,v1:127.0.0.1:$CEPH_MON_PORT_V1]
mon_initial_members = $CEPH_MON_ID
# Loopback only: every daemon binds 127.0.0.1, never 0.0.0.0.
public_addr = 127.0.0.1
cluster_addr = 127.0.0.1
ms_bind_ipv6 = false
auth_cluster_required = cephx
auth_service_required = cephx
auth_client_required = cephx
auth_allow_insecure_global_id_reclaim = false
# One OSD: pools of size 1, few PGs, no autoscaler moving them around.
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
osd_crush_chooseleaf_type = 0
mon_allow_pool_size_one = true
mon_allow_pool_delete = true
mon_warn_on_pool_no_redundancy = false
# The mon stops itself at 5 % free disk and warns at 30 %: this machine's / has ~30 % free.
mon_data_avail_warn = 10
mon_data_avail_crit = 2

[mon]
mon_data = $CEPH_DIR/mon/\$cluster-\$id
keyring = $CEPH_DIR/mon/\$cluster-\$id/keyring
log_file = $CEPH_DIR/log/\$cluster-\$name.log
run_dir = $CEPH_DIR/run
admin_socket = $CEPH_DIR/run/\$cluster-\$name.asok

[mgr]
mgr_data = $CEPH_DIR/mgr/\$cluster-\$id
keyring = $CEPH_DIR/mgr/\$cluster-\$id/keyring
log_file = $CEPH_DIR/log/\$cluster-\$name.log
run_dir = $CEPH_DIR/run
admin_socket = $CEPH_DIR/run/\$cluster-\$name.asok

[osd]
osd_data = $CEPH_DIR/osd/\$cluster-\$id
keyring = $CEPH_DIR/osd/\$cluster-\$id/keyring
log_file = $CEPH_DIR/log/\$cluster-\$name.log
run_dir = $CEPH_DIR/run
admin_socket = $CEPH_DIR/run/\$cluster-\$name.asok
osd_objectstore = $store
# bluestore on a sparse file beside osd_data (no block device, no LVM); osd_data/block
# becomes a symlink to it (so it must not be osd_data/block itself)
bluestore_block_path = $CEPH_DIR/osd/\$cluster-\$id.block
bluestore_block_create = true
bluestore_block_size = $(numfmt --from=iec "$OSD_FILE_SIZE")
# Bounded RAM (the minimum Ceph accepts is 896 MiB; the real RSS stays far below).
osd_memory_target = 1073741824
# A file-backed OSD counts as a hard disk, whose snapshot trimming sleeps 5 s between steps:
# the space of removed snapshots came back at ~100 objects a minute, and a few bench runs
# (256 MiB of writes between snapshots, each time) filled the 20 GiB OSD until rbd hung.
osd_snap_trim_sleep_hdd = 0
# memstore: 2 GiB ceiling; a graceful stop must umount (= save) the store. Pacific's default
# fast shutdown skips that and the OSD comes back with no data.
memstore_device_bytes = 2147483648
$( [ "$store" = memstore ] && echo "osd_fast_shutdown = false" )

[client]
# librados/rbd wait for ever when a PG is inactive or the mon is gone: never in this lab.
rados_mon_op_timeout = 60
rados_osd_op_timeout = 120
client_mount_timeout = 60
# This cluster's own keyrings first: /etc/ceph may hold another cluster's (second lab).
keyring = $CEPH_DIR/keyrings/\$cluster.\$name.keyring,/etc/ceph/\$cluster.\$name.keyring
EOF
}

# All keys are made offline and imported into the mon's keyring before mkfs: that saves a
# `ceph auth` round trip (~0.4 s of python start-up each) per key, and the OSD/mgr can
# authenticate at their very first start.
make_keys() {
  local k=$CEPH_DIR/keyrings
  mkdir -p "$k" "$CEPH_DIR/mon/ceph-$CEPH_MON_ID" "$CEPH_DIR/mgr/ceph-$CEPH_MGR_ID" "$CEPH_DIR/osd/ceph-0"
  ceph-authtool --create-keyring "$k/mon.keyring" --gen-key -n mon. --cap mon 'allow *'
  ceph-authtool --create-keyring "$k/ceph.client.admin.keyring" --gen-key -n client.admin \
    --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' --cap mds 'allow *'
  ceph-authtool --create-keyring "$CEPH_DIR/mgr/ceph-$CEPH_MGR_ID/keyring" --gen-key \
    -n "mgr.$CEPH_MGR_ID" --cap mon 'allow profile mgr' --cap osd 'allow *' --cap mds 'allow *'
  ceph-authtool --create-keyring "$CEPH_DIR/osd/ceph-0/keyring" --gen-key -n osd.0 \
    --cap mon 'allow profile osd' --cap mgr 'allow profile osd' --cap osd 'allow *'
  # What cinder-volume, nova-compute (libvirt) and vprotect's ceph-rbd strategy use.
  # mon 'profile rbd' = read the maps + blocklist dead clients (exclusive-lock takeover).
  local pools='profile rbd pool=volumes, profile rbd pool=vms, profile rbd pool=images'
  ceph-authtool --create-keyring "$k/ceph.client.volumes.keyring" --gen-key -n client.volumes \
    --cap mon 'profile rbd' --cap osd "$pools" --cap mgr "$pools"
  local f
  for f in "$k/ceph.client.admin.keyring" "$CEPH_DIR/mgr/ceph-$CEPH_MGR_ID/keyring" \
    "$CEPH_DIR/osd/ceph-0/keyring" "$k/ceph.client.volumes.keyring"; do
    ceph-authtool "$k/mon.keyring" --import-keyring "$f"
  done
  chmod 600 "$k/ceph.client.admin.keyring" "$k/mon.keyring"
  chmod 644 "$k/ceph.client.volumes.keyring"   # cinder/nova may run as other users
}

build_cluster() {
  local store=${OBJECTSTORE:-bluestore} fsid t0=$SECONDS
  case "$store" in bluestore|memstore) ;; *) die "CEPH_OBJECTSTORE must be bluestore or memstore" ;; esac
  log "building a new cluster ($store) in $CEPH_DIR"
  stop_all   # leftovers of a build that failed half-way
  rm -rf "$CEPH_DIR"
  mkdir -p "$CEPH_DIR/log" "$CEPH_DIR/run"
  fsid=$(cat /proc/sys/kernel/random/uuid)
  write_conf "$fsid" "$store"
  make_keys >/dev/null
  monmaptool --create --fsid "$fsid" \
    --addv "$CEPH_MON_ID" "[v2:127.0.0.1:$CEPH_MON_PORT_V2,v1:127.0.0.1:$CEPH_MON_PORT_V1]" \
    "$CEPH_DIR/monmap" >/dev/null
  ceph-mon -c "$CEPH_CONF" --mkfs -i "$CEPH_MON_ID" --monmap "$CEPH_DIR/monmap" \
    --keyring "$CEPH_DIR/keyrings/mon.keyring"
  install_etc_ceph
  start_mon
  # Register osd.0 (its key is already in the mon's keyring), then make its store.
  local uuid; uuid=$(cat /proc/sys/kernel/random/uuid)
  ceph_admin osd new "$uuid" 0 >/dev/null
  ceph-osd -c "$CEPH_CONF" -i 0 --mkfs --osd-uuid "$uuid" >>"$CEPH_DIR/log/mkfs.log" 2>&1 \
    || { tail -20 "$CEPH_DIR/log/mkfs.log" >&2; die "ceph-osd --mkfs failed"; }
  start_mgr
  start_osd
  local pool
  for pool in "${CEPH_POOLS[@]}"; do
    # size/min_size 1 come from osd_pool_default_size (needs mon_allow_pool_size_one)
    ceph_admin osd pool create "$pool" 8 8 replicated >/dev/null 2>&1 || die "pool create $pool failed"
    ceph_admin osd pool application enable "$pool" rbd >/dev/null 2>&1 || die "application enable $pool failed"
  done
  wait_for "the pools' PGs to become active" 180 pools_readable
  # Written last: its presence means "a complete cluster exists here" (restart, don't rebuild).
  echo "$store" >"$CEPH_DIR/objectstore"
  log "cluster built in $((SECONDS - t0)) s"
}

# After a stop or a killed session: start whatever is down, on the existing data.
restart_cluster() {
  local store; store=$(cat "$CEPH_DIR/objectstore" 2>/dev/null || echo bluestore)
  if [ -n "$OBJECTSTORE" ] && [ "$OBJECTSTORE" != "$store" ]; then
    die "the existing cluster uses $store, not $OBJECTSTORE: run with CEPH_FRESH=1 to rebuild"
  fi
  # memstore keeps its data only across a clean stop (ceph-down.sh). A stale pid file means
  # the OSD was killed: its store is gone, so rebuild rather than wait for PGs that never come.
  if [ "$store" = memstore ] && [ -f "$LAB_PIDS/ceph-osd.pid" ] && ! lab_running ceph-osd; then
    log "memstore OSD was killed (stale pid file): its data is lost, rebuilding"
    stop_all
    build_cluster
    return
  fi
  refresh_conf
  start_mon
  start_mgr
  start_osd
  wait_for "the pools' PGs to become active" 180 pools_readable
}

# Re-render the config of an existing cluster (fsid and store kept), so changes to this script
# reach it; running daemons read it at their next start.
refresh_conf() {
  write_conf "$(awk '$1 == "fsid" {print $3}' "$CEPH_CONF")" "$(cat "$CEPH_DIR/objectstore")"
  install_etc_ceph
}

publish() {
  local fsid conf keyring
  fsid=$(awk '$1 == "fsid" {print $3}' "$CEPH_CONF")
  conf=$CEPH_CONF keyring=$CEPH_DIR/keyrings/ceph.client.volumes.keyring
  if etc_ceph_is_ours; then conf=/etc/ceph/ceph.conf keyring=/etc/ceph/ceph.client.volumes.keyring; fi
  jq -n --arg conf "$conf" --arg keyring "$keyring" --arg fsid "$fsid" \
    --arg admin "$CEPH_DIR/keyrings/ceph.client.admin.keyring" \
    --arg store "$(cat "$CEPH_DIR/objectstore")" \
    --arg key "$(ceph-authtool -p -n client.volumes "$CEPH_DIR/keyrings/ceph.client.volumes.keyring")" \
    --arg v2 "$CEPH_MON_PORT_V2" --arg v1 "$CEPH_MON_PORT_V1" '{ceph: {
      conf: $conf, keyring: $keyring, user: "volumes", key: $key, fsid: $fsid,
      monitors: ["127.0.0.1:\($v1)"], monHost: "[v2:127.0.0.1:\($v2),v1:127.0.0.1:\($v1)]",
      pools: ["volumes", "images", "vms"], adminKeyring: $admin, objectstore: $store,
      libvirtSecretUuid: "'"$CEPH_LIBVIRT_SECRET_UUID"'"}}' | lab_publish ceph
}

main() {
  [ "$(id -u)" = 0 ] || die "run as root"
  command -v ceph-mon >/dev/null || die "ceph is not installed: run test/lab/install.sh"
  if [ "${CEPH_FRESH:-0}" = 1 ]; then
    bash "$LAB_SRC/ceph-down.sh" --wipe
  fi
  local t0=$SECONDS
  if all_running && [ -f "$CEPH_READY" ] && pools_readable; then
    log "ceph is up (no-op)"
    refresh_conf
    publish
    return 0
  fi
  rm -f "$CEPH_READY"
  if [ -f "$CEPH_DIR/objectstore" ]; then
    restart_cluster
  else
    build_cluster
  fi
  publish
  touch "$CEPH_READY"
  log "ceph ready in $((SECONDS - t0)) s (mon pid $(lab_pid ceph-mon), mgr $(lab_pid ceph-mgr)," \
    "osd $(lab_pid ceph-osd)); health: ceph --conf $CEPH_CONF -s"
}

main "$@"
