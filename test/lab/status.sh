#!/usr/bin/env bash
# What of the lab runs: every daemon the lab knows (its own + any $LAB/pids/*.pid, so the
# OpenStack part shows up too) with state, pid, RSS, the script that starts it and its command
# line; the ready markers; the sample domains. `--json` for machines. Changes nothing.
. "$(dirname "$0")/lib.sh"
. "$LAB_SRC/hypervisor-lib.sh"

json=0
[ "${1:-}" = --json ] && json=1

# The script that (re)starts a daemon, by the name of its pid file (sets STARTER: no subshell).
starter() {
  case "$1" in
    ceph-*) STARTER=test/lab/ceph-up.sh ;;
    sshd | sshd-netns | virtlogd | libvirtd) STARTER=test/lab/hypervisor-up.sh ;;
    os-*) STARTER=test/lab/openstack-up.sh ;;
    *) STARTER=test/lab/up.sh ;;
  esac
}

# RSS per session: lab_start runs each daemon with setsid, so its session id is its pid, and
# the sum covers its workers too (uwsgi, beam.smp, privsep helpers, ...). One ps for all.
declare -A SESSION_RSS=()
while read -r sid rss; do
  SESSION_RSS[$sid]=$(( ${SESSION_RSS[$sid]:-0} + rss ))
done < <(ps -e -o sid=,rss=)

# One tab-separated line per component: name state pid rssKiB start cmdline
component_line() { # NAME
  local name=$1 pid= rss= state=down cmd=
  if lab_running "$name"; then
    state=up pid=$(lab_pid "$name")
  elif { [ "$name" = libvirtd ] || [ "$name" = virtlogd ]; } && foreign_daemon "$name"; then
    state=external pid=$(cat "/run/$name.pid")   # runs, but the lab did not start it (nor stops it)
  fi
  if [ -n "$pid" ]; then
    rss=${SESSION_RSS[$pid]:-}
    local args=()
    mapfile -d '' args 2>/dev/null <"/proc/$pid/cmdline" || true
    cmd=${args[*]:-}
    cmd=${cmd//$'\t'/ }
  fi
  starter "$name"
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$state" "$pid" "$rss" "bash $STARTER" "$cmd"
}

names() {
  local f known=(ceph-mon ceph-mgr ceph-osd sshd sshd-netns virtlogd libvirtd)
  printf '%s\n' "${known[@]}"
  for f in "$LAB_PIDS"/*.pid; do
    [ -e "$f" ] && basename "$f" .pid
  done | grep -vxF -f <(printf '%s\n' "${known[@]}") | sort || true
}

domains_state() {
  libvirt_answers || { echo '[]'; return; }
  read_dom_states
  local name
  for name in "${HV_DOMAINS[@]}"; do printf '%s\t%s\n' "$name" "${DOM_STATE[$name]:-undefined}"; done |
    jq -R 'split("\t") | {name: .[0], state: .[1]}' | jq -sc .
}

ready() { [ -f "$LAB_STATE/$1.ready" ] && echo true || echo false; }

report=$(
  for n in $(names); do component_line "$n"; done |
    jq -R 'split("\t") | {name: .[0], state: .[1], pid: (.[2] | tonumber? // null),
      rssKiB: (.[3] | tonumber? // null), start: .[4], cmdline: (.[5] | if . == "" then null else . end)}' |
    jq -s --argjson domains "$(domains_state)" --arg lab "$LAB" \
      --arg accel "$(cat "$LAB_STATE/accel" 2>/dev/null)" \
      --argjson ceph "$(ready ceph)" --argjson hv "$(ready hypervisor)" --argjson os "$(ready openstack)" \
      --arg labjson "$( [ -f "$LAB/lab.json" ] && echo "$LAB/lab.json")" \
      '{lab: $lab, labJson: (if $labjson == "" then null else $labjson end),
        ready: {ceph: $ceph, hypervisor: $hv, openstack: $os},
        accel: (if $accel == "" then null else $accel end), components: ., domains: $domains}'
)

if [ $json = 1 ]; then
  echo "$report"
  exit 0
fi
jq -r '"lab: \(.lab)   ready: ceph=\(.ready.ceph) hypervisor=\(.ready.hypervisor) openstack=\(.ready.openstack)   accel=\(.accel // "-")"' <<<"$report"
printf '%-22s %-8s %8s %9s  %-30s %s\n' COMPONENT STATE PID RSS_MiB START COMMAND
jq -r '.components[] | [.name, .state, (.pid // "-"), (if .rssKiB then (.rssKiB / 1024 | floor) else "-" end),
  .start, (.cmdline // "-")] | @tsv' <<<"$report" |
  while IFS=$'\t' read -r n s p r st c; do
    printf '%-22s %-8s %8s %9s  %-30s %.90s\n' "$n" "$s" "$p" "$r" "$st" "$c"
  done
jq -r '"domains: " + ([.domains[] | "\(.name)=\(.state)"] | join(" "))' <<<"$report"
total=$(jq '[.components[] | .rssKiB // 0] | add / 1024 | floor' <<<"$report")
echo "total RSS of lab daemons: ${total} MiB (per session, children included; qemu guests not included)"
