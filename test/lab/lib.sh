# Shared helpers for the lab scripts. Source it: `. "$(dirname "$0")/lib.sh"`.
# Everything the lab creates lives under $LAB (default /tmp/vprotect-lab) so that one
# `down.sh --wipe` returns the machine to how it was.
set -euo pipefail

LAB_SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LAB=${VPROTECT_LAB:-/tmp/vprotect-lab}
LAB_PIDS=$LAB/pids
LAB_LOGS=$LAB/logs
mkdir -p "$LAB" "$LAB_PIDS" "$LAB_LOGS"

# Debian's OpenStack daemons need Debian's python, not a pyenv shim earlier on PATH.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH

log() { printf '[lab %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Install Debian packages once; idempotent and quiet. Waits for a concurrent dpkg.
lab_apt_install() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing ${missing[*]}"
  if [ -z "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v lock)" ] || [ -n "${LAB_APT_UPDATE:-}" ]; then
    apt-get -o DPkg::Lock::Timeout=1200 update -qq
  fi
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=1200 install -y -qq \
    --no-install-recommends "${missing[@]}" >"$LAB_LOGS/apt-$$.log" 2>&1 \
    || { tail -30 "$LAB_LOGS/apt-$$.log" >&2; die "apt-get install failed (log: $LAB_LOGS/apt-$$.log)"; }
}

# A pid file holds "<pid> <starttime>": the start time (field 22 of /proc/PID/stat) guards
# against a recycled PID, and the state check against zombies that PID 1 reaps late.
# Read with builtins only (no awk): status.sh asks this for every daemon, and a fork costs
# 10-20 ms on this machine when it is busy. The command name in field 2 may contain spaces,
# so fields are counted after its closing ')'.
_proc_stat() { # PID -> _PSTATE (field 3), _PSTART (field 22)
  local s f
  read -r s 2>/dev/null <"/proc/$1/stat" || return 1
  read -ra f <<<"${s##*) }"
  _PSTATE=${f[0]} _PSTART=${f[19]}
}
_proc_starttime() { _proc_stat "$1" && echo "$_PSTART"; }
lab_running() {
  local f=$LAB_PIDS/$1.pid pid st
  [ -f "$f" ] || return 1
  read -r pid st <"$f" || return 1
  [ -n "$pid" ] && _proc_stat "$pid" || return 1
  [ "$_PSTATE" != Z ] && [ "$_PSTART" = "$st" ]
}

# lab_start NAME CMD...: start a daemon in its own session (no fork of its own), log to
# $LAB_LOGS/NAME.log, remember its pid. Does nothing when it already runs.
lab_start() {
  local name=$1; shift
  if lab_running "$name"; then return 0; fi
  setsid "$@" >>"$LAB_LOGS/$name.log" 2>&1 </dev/null &
  local pid=$!
  sleep 0.05
  echo "$pid $(_proc_starttime "$pid")" >"$LAB_PIDS/$name.pid"
}

# lab_stop NAME: SIGTERM the daemon's process group, then SIGKILL after a grace period.
lab_stop() {
  local name=$1 f=$LAB_PIDS/$1.pid pid st i
  if ! lab_running "$name"; then rm -f "$f"; return 0; fi
  read -r pid st <"$f"
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 100); do lab_running "$name" || break; sleep 0.1; done
  if lab_running "$name"; then kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true; fi
  rm -f "$f"
}

# wait_for DESCRIPTION TIMEOUT_SECONDS CMD...: poll CMD every 0.5 s.
wait_for() {
  local what=$1 timeout=$2 end; shift 2
  end=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $end ] || die "timed out after ${timeout}s waiting for $what"
    sleep 0.5
  done
}

# ---- added for the Ceph/hypervisor part (backwards compatible: only new names) ----

LAB_STATE=$LAB/state
mkdir -p "$LAB_STATE"

# Run a command with a hard deadline, so nothing in the lab can hang a script forever
# (librados waits for ever for an inactive PG, ssh for a dead link, ...).
lab_timeout() { local t=$1; shift; timeout --kill-after=5 "$t" "$@"; }

# $LAB/lab.json describes the running lab for the TypeScript tests. Each component publishes
# its own fragment ($LAB/state/NAME.json, a JSON object); lab.json is their deep merge, so the
# components never edit each other's parts. `lab_publish NAME <json-on-stdin>`,
# `lab_unpublish NAME`.
lab_publish() {
  local f=$LAB_STATE/$1.json
  jq . >"$f.tmp" && mv "$f.tmp" "$f"
  _lab_json_merge
}
lab_unpublish() { rm -f "$LAB_STATE/$1.json"; _lab_json_merge; }
_lab_json_merge() {
  local frags=("$LAB_STATE"/*.json)
  if [ ! -e "${frags[0]}" ]; then rm -f "$LAB/lab.json"; return 0; fi
  jq -s --arg lab "$LAB" 'reduce .[] as $x ({lab: $lab}; . * $x)' "${frags[@]}" >"$LAB/lab.json.tmp"
  mv "$LAB/lab.json.tmp" "$LAB/lab.json"
}

# lab_pid NAME: the pid of a running lab daemon (empty when it is not running).
lab_pid() {
  local pid _
  lab_running "$1" && read -r pid _ <"$LAB_PIDS/$1.pid" && echo "$pid"
  return 0
}
