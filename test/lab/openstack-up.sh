#!/usr/bin/env bash
# The OpenStack control plane of the vprotect test lab, from Debian 12's OpenStack Zed
# packages, everything on 127.0.0.1, no systemd:
#
#   MariaDB, RabbitMQ (+epmd), memcached, Keystone, Glance, Placement, Nova (api, conductor,
#   scheduler, two libvirt computes on the lab's libvirtd at qemu:///system: one with qcow2
#   file disks, one with RBD disks in pool vms), Cinder (api, scheduler, volume on RBD pool
#   volumes), Neutron (neutron-server, ML2, no agents).
#
# Usage: openstack-up.sh        (idempotent: starts what is down, re-renders configs and
#                                restarts a service whose config changed, else a no-op)
# Env:   LAB_TOKEN_TTL=3600     Keystone token lifetime in seconds
#        LAB_NOVA_RBD=1         0: no second (rbd) compute
#        LAB_DEPS_TIMEOUT=900   seconds to wait for $LAB/state/{ceph,hypervisor}.ready
#        LAB_OS_RESETUP=1       re-apply the Keystone content and resources (normally done
#                               only when lab-setup.py changed: they live in the database)
#
# Layout: configs $LAB/openstack/etc, data $LAB/openstack/data, logs $LAB/logs/os-*.log,
# pid files $LAB/pids/os-*.pid. Result: $LAB/openstack.json, $LAB/etc/clouds.yaml,
# $LAB/etc/*-openrc, ready marker $LAB/state/openstack.ready. See test/lab/README-openstack.md.
. "$(dirname "$0")/lib.sh"
set +m   # no job control: setsid must not fork, so $! is the daemon (see lab_start)

. "$LAB_SRC/openstack/os-lib.sh"

T0=$SECONDS
STATE=$LAB_STATE
READY=$OS_READY
PY=/usr/bin/python3
DB_PASS=lab-db-pass SERVICE_PASS=lab-service-pass
TOKEN_TTL=${LAB_TOKEN_TTL:-3600}
NOVA_RBD=${LAB_NOVA_RBD:-1}
DEPS_TIMEOUT=${LAB_DEPS_TIMEOUT:-900}
HOSTNAME_=$(hostname)
# Nova's host names. The qcow2 compute is the machine itself (host = hypervisor_hostname =
# hostname, as in a real cloud); the rbd compute pretends to be a second hypervisor.
COMPUTE_QCOW2=$HOSTNAME_
COMPUTE_RBD=$HOSTNAME_-rbd

mkdir -p "$OS_ETC" "$OS_DATA" "$OS_RUN" "$OS_BIN" "$STATE" "$LAB/etc"

# ---------------------------------------------------------------- helpers

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
http_ok() { # URL -> true when it answers with a non-5xx status
  local code; code=$(curl -s -o /dev/null -m 5 -w '%{http_code}' "$1" 2>/dev/null) || return 1
  [ "$code" != 000 ] && [ "$code" -lt 500 ]
}
sql() { os_sql "$@"; }

# render TEMPLATE [DEST]: substitute @VARS@ into $OS_ETC/DEST; the file is only rewritten
# when its content changes (start_svc restarts a service whose config files changed).
render() {
  local src=$TPL/$1 dst=$OS_ETC/${2:-$1}
  sed -e "s|@OS_ETC@|$OS_ETC|g; s|@OS_DATA@|$OS_DATA|g; s|@OS_RUN@|$OS_RUN|g" \
      -e "s|@DB_PASS@|$DB_PASS|g; s|@SERVICE_PASS@|$SERVICE_PASS|g; s|@TOKEN_TTL@|$TOKEN_TTL|g" \
      -e "s|@VIRT_TYPE@|$VIRT_TYPE|g; s|@RBD_SECRET_UUID@|$RBD_SECRET_UUID|g" \
      -e "s|@CEPH_CONF@|$CEPH_CONF|g; s|@CEPH_KEYRING@|$CEPH_KEYRING|g" \
      -e "s|@COMPUTE_HOST@|${3:-}|g" "$src" >"$dst.tmp"
  if cmp -s "$dst.tmp" "$dst"; then rm -f "$dst.tmp"; else mv "$dst.tmp" "$dst"; fi
}

# start_svc NAME "CONFIG FILES" CMD...: start a daemon unless it runs with the same config
# and command line; a running one whose config changed is restarted.
STARTED=()
start_svc() {
  local name=$1 files=$2 hash; shift 2
  # shellcheck disable=SC2086  # files is a list
  hash=$({ cat $files; echo "$*"; } | md5sum | cut -d' ' -f1)
  if lab_running "$name"; then
    [ "$(cat "$OS_RUN/$name.cfg" 2>/dev/null)" = "$hash" ] && return 0
    log "$name: config changed, restarting"
    lab_stop "$name"
  fi
  log "starting $name"
  lab_start "$name" "$@"
  echo "$hash" >"$OS_RUN/$name.cfg"
  STARTED+=("$name")
}
started() { local s; for s in "${STARTED[@]}"; do [ "$s" = "$1" ] && return 0; done; return 1; }
all_running() { local s; for s in "${OS_INFRA[@]}" "${OS_SERVICES[@]}"; do svc_wanted "$s" || continue; lab_running "$s" || return 1; done; }
svc_wanted() { [ "$1" != os-nova-compute-rbd ] || [ "$NOVA_RBD" = 1 ]; }

# os_wait DESCRIPTION TIMEOUT CMD...: wait_for, but give up at once (with the log's tail)
# when a daemon this run started has died meanwhile, instead of waiting out the timeout.
os_wait() {
  local what=$1 timeout=$2 end s; shift 2
  end=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    for s in "${STARTED[@]}"; do
      lab_running "$s" && continue
      tail -15 "$LAB_LOGS/$s.log" >&2
      die "$s died while waiting for $what (log: $LAB_LOGS/$s.log)"
    done
    [ $SECONDS -lt $end ] || die "timed out after ${timeout}s waiting for $what"
    sleep 0.5
  done
}

# A Python console-script launcher for a command whose wrapper lives in a package we do
# not install (nova-common, cinder-common, glance-common, neutron-common).
launcher() {
  local f=$OS_BIN/$1
  printf '#!/usr/bin/python3\nimport sys\nfrom %s import main\nsys.exit(main())\n' "$2" >"$f.tmp"
  chmod 755 "$f.tmp"; mv "$f.tmp" "$f"
}

# run_logged NAME CMD...: a one-shot step with its output in $LAB/logs/os-NAME.log.
run_logged() {
  local name=$1; shift
  "$@" >>"$LAB_LOGS/os-$name.log" 2>&1 || { tail -20 "$LAB_LOGS/os-$name.log" >&2; die "$name failed (log: $LAB_LOGS/os-$name.log)"; }
}

# Schema migrations run once per package version ($OS_DATA/.dbsync-NAME holds it).
dbsync_needed() { [ "$(cat "$OS_DATA/.dbsync-$1" 2>/dev/null)" != "$(dpkg-query -W -f='${Version}' "$2")" ]; }
dbsync_done() { dpkg-query -W -f='${Version}' "$2" >"$OS_DATA/.dbsync-$1"; }

# ---------------------------------------------------------------- packages

install_packages() {
  local pkgs=() p
  while read -r p _; do case "$p" in ''|'#'*) ;; *) pkgs+=("$p") ;; esac; done <"$TPL/packages.txt"
  # dpkg must not start the packaged mariadb/rabbitmq/memcached: we run our own. The base
  # image has a policy-rc.d (exit 101); put one in place for the install if it is missing.
  # Fast path: one dpkg-query for all (lab_apt_install asks once per package).
  local st; st=$(dpkg-query -W -f='${Status}\n' "${pkgs[@]}" 2>/dev/null || true)
  [ "$(grep -c 'install ok installed' <<<"$st")" = ${#pkgs[@]} ] && return 0
  local own_policy=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; own_policy=1
  fi
  lab_apt_install "${pkgs[@]}"
  [ -z "$own_policy" ] || rm -f /usr/sbin/policy-rc.d
}

# ---------------------------------------------------------------- Ceph / hypervisor facts

# Cinder, and nova for the rbd compute, need the Ceph client config; both computes need the
# lab's libvirtd. Both come from the other half of the lab (ceph-up.sh, hypervisor-up.sh).
deps_ready() { [ -f "$STATE/ceph.ready" ] && [ -f "$STATE/hypervisor.ready" ]; }
wait_deps() {
  deps_ready && return 0
  log "waiting up to ${DEPS_TIMEOUT}s for $STATE/ceph.ready and hypervisor.ready (ceph-up.sh, hypervisor-up.sh)"
  wait_for "ceph.ready and hypervisor.ready" "$DEPS_TIMEOUT" deps_ready
}

# Values from ceph-up.sh's published fragment, with the lab's defaults as fallback (the
# configs are rendered before Ceph may be ready; they are re-rendered after waiting).
read_ceph_facts() {
  local j=$STATE/ceph.json
  CEPH_CONF=/etc/ceph/ceph.conf CEPH_KEYRING=/etc/ceph/ceph.client.volumes.keyring
  RBD_SECRET_UUID=8a1c3f9e-6d2b-4c1e-9f0a-0b5e1ab0c0de
  if [ -f "$j" ]; then
    CEPH_CONF=$(jq -r '.ceph.conf // empty' "$j"); CEPH_CONF=${CEPH_CONF:-/etc/ceph/ceph.conf}
    CEPH_KEYRING=$(jq -r '.ceph.keyring // empty' "$j"); CEPH_KEYRING=${CEPH_KEYRING:-/etc/ceph/ceph.client.volumes.keyring}
    RBD_SECRET_UUID=$(jq -r '.ceph.libvirtSecretUuid // empty' "$j"); RBD_SECRET_UUID=${RBD_SECRET_UUID:-8a1c3f9e-6d2b-4c1e-9f0a-0b5e1ab0c0de}
  fi
}

# kvm only when the hypervisor half says so and /dev/kvm exists; TCG (virt_type=qemu) else.
read_accel() {
  VIRT_TYPE=qemu
  if [ "$(cat "$STATE/accel" 2>/dev/null)" = kvm ] && [ -c /dev/kvm ]; then VIRT_TYPE=kvm; fi
}

# The libvirt secret holding client.volumes' key, under the uuid cinder hands out as
# rbd_secret_uuid. hypervisor-up.sh normally defines it; define it only when it is missing.
ensure_libvirt_secret() {
  if virsh -q -c qemu:///system secret-get-value "$RBD_SECRET_UUID" >/dev/null 2>&1; then return 0; fi
  log "defining libvirt secret $RBD_SECRET_UUID (client.volumes)"
  local key; key=$(ceph-authtool -p -n client.volumes "$CEPH_KEYRING")
  cat >"$OS_RUN/secret.xml" <<EOF
<secret ephemeral='no' private='no'>
  <uuid>$RBD_SECRET_UUID</uuid>
  <usage type='ceph'><name>client.volumes secret (vprotect lab)</name></usage>
</secret>
EOF
  virsh -q -c qemu:///system secret-define "$OS_RUN/secret.xml" >/dev/null
  # The base64 key, from a file, WITHOUT --plain (that would encode it twice).
  (umask 077; printf '%s' "$key" >"$OS_RUN/secret.key")
  virsh -q -c qemu:///system secret-set-value "$RBD_SECRET_UUID" --file "$OS_RUN/secret.key" >/dev/null
  rm -f "$OS_RUN/secret.key"
}

# ---------------------------------------------------------------- configs

render_all() {
  render my.cnf
  render rabbitmq.conf
  render keystone.conf
  render glance-api.conf
  render glance-api-paste.ini
  render placement.conf
  render nova.conf
  render nova-api-paste.ini
  render nova-api.conf
  render nova-compute-qcow2.conf nova-compute-qcow2.conf "$COMPUTE_QCOW2"
  render nova-compute-rbd.conf nova-compute-rbd.conf "$COMPUTE_RBD"
  render cinder.conf
  render cinder-api-paste.ini
  render neutron.conf
  render neutron-api-paste.ini
  mkdir -p "$OS_DATA"/{keystone,glance/images,glance/staging,glance/tasks,glance/lock} \
    "$OS_DATA"/{nova/lock,nova/instances,nova/instances-rbd,cinder/lock,neutron/lock,neutron/vhu}
  # qemu (user libvirt-qemu) creates the vhost-user sockets of bound ports here.
  chmod 1777 "$OS_DATA/neutron/vhu"
  launcher nova-manage nova.cmd.manage
  launcher cinder-manage cinder.cmd.manage
  launcher glance-manage glance.cmd.manage
  launcher neutron-db-manage neutron.db.migration.cli
  # neutron finds ML2 mechanism drivers by entry point only: a dist-info on PYTHONPATH
  # registers the lab's driver (openstack/neutron_lab_mech.py) as "lab_nowire".
  local di=$OS/pylib/neutron_lab_mech-1.0.dist-info
  mkdir -p "$di"
  printf 'Metadata-Version: 2.1\nName: neutron-lab-mech\nVersion: 1.0\n' >"$di/METADATA"
  printf '[neutron.ml2.mechanism_drivers]\nlab_nowire = neutron_lab_mech:LabNoWireMechanismDriver\n' >"$di/entry_points.txt"
  cp "$TPL/neutron_lab_mech.py" "$OS/pylib/"
}

# ---------------------------------------------------------------- infrastructure

start_mariadb() {
  if [ ! -d "$OS_DATA/mysql/mysql" ]; then
    log "initialising the MariaDB datadir"
    rm -rf "$OS_DATA/mysql"
    run_logged mariadb-init mariadb-install-db --defaults-file="$OS_ETC/my.cnf" \
      --auth-root-authentication-method=socket --skip-test-db
  fi
  start_svc os-mariadb "$OS_ETC/my.cnf" mariadbd --defaults-file="$OS_ETC/my.cnf"
  wait_for "MariaDB" 60 sql -e 'select 1'
  local db sqls="CREATE USER IF NOT EXISTS 'openstack'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';"
  for db in keystone glance placement nova_api nova nova_cell0 cinder neutron; do
    sqls+="CREATE DATABASE IF NOT EXISTS $db;"
  done
  sqls+="GRANT ALL PRIVILEGES ON *.* TO 'openstack'@'127.0.0.1';"
  sql -e "$sqls"
}

# epmd and the Erlang distribution port bind 127.0.0.1 only (epmd also takes [::1]).
RABBIT_ENV=(env HOME="$OS_DATA/rabbitmq" RABBITMQ_NODENAME=rabbit@localhost
  RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT=5672 RABBITMQ_DIST_PORT=25672
  RABBITMQ_CONFIG_FILE="$OS_ETC/rabbitmq.conf" RABBITMQ_CONF_ENV_FILE="$OS_ETC/rabbitmq-env.conf"
  RABBITMQ_MNESIA_BASE="$OS_DATA/rabbitmq/mnesia" RABBITMQ_LOG_BASE="$OS_DATA/rabbitmq/log"
  RABBITMQ_ENABLED_PLUGINS_FILE="$OS_DATA/rabbitmq/enabled_plugins" RABBITMQ_LOGS=-
  RABBITMQ_PID_FILE="$OS_RUN/rabbitmq.pid" ERL_EPMD_ADDRESS=127.0.0.1 ERL_EPMD_PORT=4369
  "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1}"
  "RABBITMQ_CTL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1}")
start_rabbitmq() {
  mkdir -p "$OS_DATA/rabbitmq/mnesia" "$OS_DATA/rabbitmq/log"
  [ -f "$OS_DATA/rabbitmq/enabled_plugins" ] || echo '[].' >"$OS_DATA/rabbitmq/enabled_plugins"
  : >"$OS_ETC/rabbitmq-env.conf"   # instead of /etc/rabbitmq/rabbitmq-env.conf
  start_svc os-epmd "" env ERL_EPMD_ADDRESS=127.0.0.1 epmd -port 4369
  start_svc os-rabbitmq "$OS_ETC/rabbitmq.conf" "${RABBIT_ENV[@]}" /usr/lib/rabbitmq/bin/rabbitmq-server
}

start_memcached() {
  start_svc os-memcached "" memcached -u root -l 127.0.0.1 -p 11211 -U 0 -m 64 -c 1024
}

# ---------------------------------------------------------------- database schemas

sync_keystone() {
  if dbsync_needed keystone python3-keystone; then
    run_logged keystone-manage keystone-manage --config-file "$OS_ETC/keystone.conf" db_sync
    dbsync_done keystone python3-keystone
  fi
  mkdir -p "$OS_DATA/keystone/fernet-keys" "$OS_DATA/keystone/credential-keys"
  if [ ! -f "$OS_DATA/keystone/fernet-keys/0" ]; then
    run_logged keystone-manage keystone-manage --config-file "$OS_ETC/keystone.conf" \
      fernet_setup --keystone-user root --keystone-group root
  fi
  if [ ! -f "$OS_DATA/keystone/credential-keys/0" ]; then
    run_logged keystone-manage keystone-manage --config-file "$OS_ETC/keystone.conf" \
      credential_setup --keystone-user root --keystone-group root
  fi
  # Once: bootstrap resets the admin password on every run (revoking running tokens).
  if [ ! -f "$OS_DATA/.bootstrap-keystone" ]; then
    run_logged keystone-manage keystone-manage --config-file "$OS_ETC/keystone.conf" bootstrap \
      --bootstrap-password lab-admin-pass --bootstrap-username admin \
      --bootstrap-project-name admin --bootstrap-role-name admin \
      --bootstrap-region-id RegionOne \
      --bootstrap-admin-url http://127.0.0.1:5000/v3 \
      --bootstrap-internal-url http://127.0.0.1:5000/v3 \
      --bootstrap-public-url http://127.0.0.1:5000/v3
    touch "$OS_DATA/.bootstrap-keystone"
  fi
}
sync_glance() {
  dbsync_needed glance python3-glance || return 0
  run_logged glance-manage "$OS_BIN/glance-manage" --config-file "$OS_ETC/glance-api.conf" db_sync
  dbsync_done glance python3-glance
}
sync_placement() {
  dbsync_needed placement python3-placement || return 0
  # placement-manage ignores OS_PLACEMENT_CONFIG_DIR: pass the file.
  run_logged placement-manage placement-manage --config-file "$OS_ETC/placement.conf" db sync
  dbsync_done placement python3-placement
}
sync_nova() {
  dbsync_needed nova python3-nova || return 0
  local nm=("$OS_BIN/nova-manage" --config-file "$OS_ETC/nova.conf")
  run_logged nova-manage "${nm[@]}" api_db sync
  run_logged nova-manage "${nm[@]}" cell_v2 map_cell0
  if ! "${nm[@]}" cell_v2 list_cells 2>/dev/null | grep -q ' cell1 '; then
    run_logged nova-manage "${nm[@]}" cell_v2 create_cell --name cell1
  fi
  run_logged nova-manage "${nm[@]}" db sync
  dbsync_done nova python3-nova
}
sync_cinder() {
  dbsync_needed cinder python3-cinder || return 0
  run_logged cinder-manage "$OS_BIN/cinder-manage" --config-file "$OS_ETC/cinder.conf" db sync
  dbsync_done cinder python3-cinder
}
sync_neutron() {
  dbsync_needed neutron python3-neutron || return 0
  run_logged neutron-db-manage "$OS_BIN/neutron-db-manage" --config-file "$OS_ETC/neutron.conf" upgrade heads
  dbsync_done neutron python3-neutron
}

# The migrations are CPU-bound Python start-up mostly; two cores: run them side by side.
sync_all() {
  local pids=() p rc=0
  sync_keystone & pids+=($!)
  sync_glance & pids+=($!)
  sync_placement & pids+=($!)
  sync_nova & pids+=($!)
  sync_cinder & pids+=($!)
  sync_neutron & pids+=($!)
  for p in "${pids[@]}"; do wait "$p" || rc=1; done
  [ $rc = 0 ] || die "a database migration failed (logs: $LAB_LOGS/os-*-manage.log)"
}

# ---------------------------------------------------------------- OpenStack services

UWSGI=(uwsgi --plugin python3 --master --enable-threads --lazy-apps --die-on-term --need-app
  --buffer-size 65535 --thunder-lock --disable-logging)
# Keystone and Placement are plain threaded WSGI apps. nova-api is eventlet-monkey-patched:
# with several uwsgi threads, an RPC reply is read by a green thread of the thread that made
# the FIRST call, and a call from another thread waits for it in vain (MessagingTimeout after
# 60 s, e.g. on volume attach). So nova-api gets single-threaded workers, as in devstack.
UWSGI_THREADED=("${UWSGI[@]}" --processes 1 --threads 8)
UWSGI_NOVA=("${UWSGI[@]}" --processes 2 --threads 1)

# uwsgi --http11-socket (not --http-socket): keystoneauth/requests and node keep the
# connection alive, and --http-socket resets it (ECONNRESET).
start_keystone() {
  start_svc os-keystone "$OS_ETC/keystone.conf" env OS_KEYSTONE_CONFIG_DIR="$OS_ETC" \
    "${UWSGI_THREADED[@]}" --http11-socket 127.0.0.1:5000 --wsgi-file "$TPL/wsgi/keystone.py"
}

# After the Keystone content exists: nova-conductor, for one, authenticates as the placement
# service user at start and exits on a 401.
start_api_services() {
  start_svc os-placement "$OS_ETC/placement.conf" env OS_PLACEMENT_CONFIG_DIR="$OS_ETC" \
    "${UWSGI_THREADED[@]}" --http11-socket 127.0.0.1:8778 --wsgi-file "$TPL/wsgi/placement.py"
  start_svc os-glance-api "$OS_ETC/glance-api.conf $OS_ETC/glance-api-paste.ini" \
    $PY -c 'import sys; from glance.cmd.api import main; sys.exit(main())' \
    --config-file "$OS_ETC/glance-api.conf"
  # nova's WSGI app takes the FIRST file as its paste config.
  start_svc os-nova-api "$OS_ETC/nova.conf $OS_ETC/nova-api.conf $OS_ETC/nova-api-paste.ini" \
    env OS_NOVA_CONFIG_DIR="$OS_ETC" "OS_NOVA_CONFIG_FILES=nova-api-paste.ini;nova.conf;nova-api.conf" \
    "${UWSGI_NOVA[@]}" --http11-socket 127.0.0.1:8774 --wsgi-file "$TPL/wsgi/nova-api.py"
  start_svc os-nova-conductor "$OS_ETC/nova.conf" \
    $PY -c 'import sys; from nova.cmd.conductor import main; sys.exit(main())' \
    --config-file "$OS_ETC/nova.conf"
  start_svc os-nova-scheduler "$OS_ETC/nova.conf" \
    $PY -c 'import sys; from nova.cmd.scheduler import main; sys.exit(main())' \
    --config-file "$OS_ETC/nova.conf"
  start_svc os-cinder-api "$OS_ETC/cinder.conf $OS_ETC/cinder-api-paste.ini" \
    $PY -c 'import sys; from cinder.cmd.api import main; sys.exit(main())' \
    --config-file "$OS_ETC/cinder.conf"
  start_svc os-cinder-scheduler "$OS_ETC/cinder.conf" \
    $PY -c 'import sys; from cinder.cmd.scheduler import main; sys.exit(main())' \
    --config-file "$OS_ETC/cinder.conf"
  start_svc os-neutron-server "$OS_ETC/neutron.conf $OS_ETC/neutron-api-paste.ini $TPL/neutron_lab_mech.py" \
    env PYTHONPATH="$OS/pylib" \
    $PY -c 'import sys; from neutron.cmd.eventlet.server import main; sys.exit(main())' \
    --config-file "$OS_ETC/neutron.conf"
}

# cinder-volume reports its pools once at start, then every 60 s: started together with the
# scheduler, the first report can be lost and volumes fail with NoValidBackend for a minute.
# Start it once the scheduler's service row is fresh.
cinder_scheduler_up() {
  [ "$(sql cinder -e "select count(*) from services where \`binary\`='cinder-scheduler' and deleted=0 and updated_at > utc_timestamp() - interval 30 second")" -ge 1 ]
}
start_cinder_volume() {
  if ! lab_running os-cinder-volume || started os-cinder-scheduler; then
    os_wait "cinder-scheduler service row" 120 cinder_scheduler_up
    # A volume service of another host/backend from an earlier configuration makes the
    # scheduler wait for it: remove rows that are not ours.
    local stale
    stale=$(sql cinder -e "select host from services where \`binary\`='cinder-volume' and deleted=0 and host <> 'lab@ceph'")
    local h; for h in $stale; do
      log "removing stale cinder-volume service $h"
      "$OS_BIN/cinder-manage" --config-file "$OS_ETC/cinder.conf" service remove cinder-volume "$h" >/dev/null 2>&1 || true
    done
  fi
  # A restarted scheduler has lost the pools: restart the volume service so it reports at once.
  if started os-cinder-scheduler && lab_running os-cinder-volume; then lab_stop os-cinder-volume; fi
  start_svc os-cinder-volume "$OS_ETC/cinder.conf $CEPH_CONF" \
    $PY -c 'import sys; from cinder.cmd.volume import main; sys.exit(main())' \
    --config-file "$OS_ETC/cinder.conf"
}

# Domains of this lab's Nova that its database does not know (a wiped or rebuilt lab on a
# libvirtd that kept its definitions): Nova would fail on their names (instance-0000000N).
remove_stale_domains() {
  local u known
  known=$(sql nova -e "select uuid from instances where deleted=0")
  for u in $(os_nova_domains); do
    grep -qx "$u" <<<"$known" && continue
    log "removing stale Nova domain $u (not in this lab's database)"
    os_virsh destroy "$u" >/dev/null 2>&1 || true
    os_virsh undefine "$u" --nvram >/dev/null 2>&1 || os_virsh undefine "$u" >/dev/null 2>&1 || true
  done
}

start_computes() {
  lab_running os-nova-compute || remove_stale_domains
  # Guests with a Neutron port block at start until a vhost-user backend connects to their
  # NIC's socket (see neutron_lab_mech.py): the sink must run before nova starts any guest.
  start_svc os-vhu-sink "$TPL/vhu-sink.py" $PY "$TPL/vhu-sink.py" "$OS_DATA/neutron/vhu"
  # nova-compute's first resource report must reach placement, or it stays unschedulable
  # until the next periodic run (60 s).
  os_wait "placement" 120 http_ok http://127.0.0.1:8778/
  start_svc os-nova-compute "$OS_ETC/nova.conf $OS_ETC/nova-compute-qcow2.conf" \
    $PY -c 'import sys; from nova.cmd.compute import main; sys.exit(main())' \
    --config-file "$OS_ETC/nova.conf" --config-file "$OS_ETC/nova-compute-qcow2.conf"
  if [ "$NOVA_RBD" = 1 ]; then
    start_svc os-nova-compute-rbd "$OS_ETC/nova.conf $OS_ETC/nova-compute-rbd.conf $TPL/nova-compute-rbd.py" \
      env LAB_NOVA_NODENAME="$COMPUTE_RBD" $PY "$TPL/nova-compute-rbd.py" \
      --config-file "$OS_ETC/nova.conf" --config-file "$OS_ETC/nova-compute-rbd.conf"
  else
    lab_stop os-nova-compute-rbd
  fi
}

compute_nodes_registered() {
  local want=1 n; [ "$NOVA_RBD" = 1 ] && want=2
  n=$(sql nova -e "select count(*) from compute_nodes where deleted=0 and host in ('$COMPUTE_QCOW2','$COMPUTE_RBD')")
  [ "$n" -ge "$want" ]
}
hosts_mapped() {
  local want=1 n; [ "$NOVA_RBD" = 1 ] && want=2
  n=$(sql nova_api -e "select count(*) from host_mappings where host in ('$COMPUTE_QCOW2','$COMPUTE_RBD')")
  [ "$n" -ge "$want" ]
}
cinder_pool_up() {
  [ "$(sql cinder -e "select count(*) from services where \`binary\`='cinder-volume' and host='lab@ceph' and deleted=0 and disabled=0 and updated_at > utc_timestamp() - interval 90 second")" -ge 1 ]
}

# ---------------------------------------------------------------- main

main() {
  [ "$(id -u)" = 0 ] || die "run as root"
  install_packages
  if all_running && [ -f "$READY" ]; then QUICK=1; else QUICK=0; rm -f "$READY"; fi
  DEPS_AT_START=0; deps_ready && DEPS_AT_START=1
  read_ceph_facts
  read_accel
  render_all

  start_mariadb
  start_rabbitmq
  start_memcached
  sync_all
  os_wait "RabbitMQ on 127.0.0.1:5672" 120 port_open 5672
  start_keystone
  os_wait "keystone" 120 http_ok http://127.0.0.1:5000/v3
  # Keystone content lives in the database: once created (marker next to the data, so a
  # wipe removes both) it is only re-applied when lab-setup.py changes.
  local kmark; kmark=$(md5sum <"$TPL/lab-setup.py" | cut -d' ' -f1)
  if [ "$(cat "$OS_DATA/.setup-keystone" 2>/dev/null)" != "$kmark" ] || [ ! -f "$LAB/etc/backup-appcred.json" ] ||
    [ "${LAB_OS_RESETUP:-0}" = 1 ]; then
    run_logged setup "$PY" "$TPL/lab-setup.py" keystone
    echo "$kmark" >"$OS_DATA/.setup-keystone"
  fi
  start_api_services

  # Ceph and libvirtd come from the other half of the lab.
  if [ "$DEPS_AT_START" = 0 ]; then
    wait_deps
    read_ceph_facts
    read_accel
    render_all   # now with the real ceph paths and accel; restarts what changed below
    start_keystone
    start_api_services
  fi
  ensure_libvirt_secret
  start_cinder_volume
  start_computes

  os_wait "nova-compute to register its node(s)" 180 compute_nodes_registered
  if ! hosts_mapped; then
    run_logged nova-manage "$OS_BIN/nova-manage" --config-file "$OS_ETC/nova.conf" cell_v2 discover_hosts
  fi
  os_wait "glance" 120 http_ok http://127.0.0.1:9292/
  os_wait "nova-api" 120 http_ok http://127.0.0.1:8774/
  os_wait "cinder-api" 120 http_ok http://127.0.0.1:8776/
  os_wait "neutron-server" 120 http_ok http://127.0.0.1:9696/
  os_wait "cinder-volume (RBD pool)" 180 cinder_pool_up
  # Same for the resources (flavors, image, ...): re-applied when the script or its
  # arguments change, when openstack.json is missing, or with LAB_OS_RESETUP=1.
  local rargs=(--compute-qcow2 "$COMPUTE_QCOW2" --compute-rbd "$([ "$NOVA_RBD" = 1 ] && echo "$COMPUTE_RBD")"
    --virt-type "$VIRT_TYPE")
  local rmark; rmark=$({ cat "$TPL/lab-setup.py"; echo "${rargs[*]}"; } | md5sum | cut -d' ' -f1)
  if [ "$(cat "$OS_DATA/.setup-resources" 2>/dev/null)" != "$rmark" ] || [ ! -f "$LAB/openstack.json" ] ||
    [ "${LAB_OS_RESETUP:-0}" = 1 ]; then
    run_logged setup "$PY" "$TPL/lab-setup.py" resources "${rargs[@]}"
    echo "$rmark" >"$OS_DATA/.setup-resources"
  fi
  if declare -F lab_publish >/dev/null; then
    jq '{openstack: .}' "$LAB/openstack.json" | lab_publish openstack
  fi
  touch "$READY"
  if [ "$QUICK" = 1 ] && [ ${#STARTED[@]} -eq 0 ]; then
    log "openstack is up (no-op, $((SECONDS - T0)) s)"
  else
    log "openstack ready in $((SECONDS - T0)) s${STARTED:+ (started: ${STARTED[*]})}"
  fi
}

main "$@"
