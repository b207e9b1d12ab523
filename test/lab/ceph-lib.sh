# Shared by ceph-up.sh, ceph-down.sh and status.sh (source after lib.sh).
CEPH_DIR=$LAB/ceph
CEPH_CONF=$CEPH_DIR/ceph.conf
CEPH_READY=$LAB_STATE/ceph.ready
CEPH_MON_ID=a
CEPH_MGR_ID=x
# Ports, secret uuid and $LAB can be overridden to run a second, throw-away lab beside the
# main one (the lab's own destructive tests do that).
CEPH_MON_PORT_V2=${CEPH_MON_PORT_V2:-3300}
CEPH_MON_PORT_V1=${CEPH_MON_PORT_V1:-6789}
# The libvirt secret that holds client.volumes' key. The same UUID is Cinder's
# rbd_secret_uuid in the OpenStack part, so Nova's libvirt driver finds it for volume attach.
CEPH_LIBVIRT_SECRET_UUID=${CEPH_LIBVIRT_SECRET_UUID:-8a1c3f9e-6d2b-4c1e-9f0a-0b5e1ab0c0de}
# Files the lab put into /etc/ceph (where librbd, qemu, cinder and nova look by default).
ETC_CEPH_MANIFEST=/etc/ceph/.vprotect-lab

ceph_admin() {
  lab_timeout 60 ceph --conf "$CEPH_CONF" --name client.admin \
    --keyring "$CEPH_DIR/keyrings/ceph.client.admin.keyring" --connect-timeout 15 "$@"
}

# Daemons run in the foreground (-f) under lab_start: it keeps the pid, they keep their logs in
# $CEPH_DIR/log. They run as root (no --setuser): everything lives under $LAB anyway.
start_mon() {
  lab_running ceph-mon && return 0
  lab_start ceph-mon ceph-mon -f -c "$CEPH_CONF" -i "$CEPH_MON_ID"
  wait_for "ceph-mon" 60 ceph_admin mon stat
}
start_mgr() { lab_start ceph-mgr ceph-mgr -f -c "$CEPH_CONF" -i "$CEPH_MGR_ID"; }
start_osd() { lab_start ceph-osd ceph-osd -f -c "$CEPH_CONF" -i 0; }

all_running() { lab_running ceph-mon && lab_running ceph-mgr && lab_running ceph-osd; }

# The OSD first (it flushes and tells the mon), the mon last.
stop_all() {
  local d
  for d in ceph-osd ceph-mgr ceph-mon; do lab_stop "$d"; done
}

# Ready = every PG of the three pools answers: `rados ls` visits every PG of a pool, and blocks
# while one is inactive (so: a deadline). rados is C++ (~50 ms); the `ceph` CLI is Python
# (0.4-1 s) and `ceph pg stat` even waits for the mgr to become active and collect stats.
CEPH_POOLS=(volumes images vms)
pools_readable() {
  local p
  for p in "${CEPH_POOLS[@]}"; do
    lab_timeout 10 rados --conf "$CEPH_CONF" --name client.admin \
      --keyring "$CEPH_DIR/keyrings/ceph.client.admin.keyring" -p "$p" ls >/dev/null 2>&1 || return 1
  done
}

etc_ceph_is_ours() {
  if [ -f "$ETC_CEPH_MANIFEST" ]; then
    grep -qF "($LAB)" "$ETC_CEPH_MANIFEST"
    return
  fi
  [ -f /etc/ceph/ceph.conf ] && grep -q '^# written by vprotect test/lab' /etc/ceph/ceph.conf \
    && grep -qF "$CEPH_DIR/" /etc/ceph/ceph.conf
}

# Put the config and the two client keyrings into /etc/ceph — unless someone else's ceph.conf
# is there: that one is never touched, and clients must then use CEPH_CONF=$CEPH_CONF.
install_etc_ceph() {
  if { [ -e /etc/ceph/ceph.conf ] || [ -e "$ETC_CEPH_MANIFEST" ]; } && ! etc_ceph_is_ours; then
    log "WARNING: /etc/ceph/ceph.conf exists and is not the lab's: left alone; use CEPH_CONF=$CEPH_CONF"
    return 0
  fi
  mkdir -p /etc/ceph
  # The manifest first: whatever happens next, --wipe knows what to remove.
  printf '%s\n' "# created by vprotect's test lab ($LAB); removed by ceph-down.sh --wipe" \
    /etc/ceph/ceph.conf /etc/ceph/ceph.client.admin.keyring /etc/ceph/ceph.client.volumes.keyring \
    >"$ETC_CEPH_MANIFEST"
  install -m 644 "$CEPH_CONF" /etc/ceph/ceph.conf
  install -m 600 "$CEPH_DIR/keyrings/ceph.client.admin.keyring" /etc/ceph/ceph.client.admin.keyring
  install -m 644 "$CEPH_DIR/keyrings/ceph.client.volumes.keyring" /etc/ceph/ceph.client.volumes.keyring
}

remove_etc_ceph() {
  etc_ceph_is_ours || return 0
  local f
  if [ -f "$ETC_CEPH_MANIFEST" ]; then
    while read -r f; do
      case "$f" in /etc/ceph/*) rm -f "$f" ;; esac
    done <"$ETC_CEPH_MANIFEST"
  else
    rm -f /etc/ceph/ceph.conf
  fi
  rm -f "$ETC_CEPH_MANIFEST"
}
