#!/usr/bin/env bash
# Self-check of the running lab, the way vprotect uses it: everything over
# `ssh -F $LAB/ssh/ssh_config hv1`, settings from $LAB/lab.json. Leaves nothing behind.
# Exit 0 = every check passed. Takes ~10-25 s (most of it ssh and the ceph/virsh CLIs).
. "$(dirname "$0")/lib.sh"

J=$LAB/lab.json
[ -f "$J" ] || die "no $J: run test/lab/up.sh first"
jqr() { jq -r "$1" "$J"; }
SSH_CFG=$(jqr .ssh.configFile)
VMS=$(jqr .vmsDir)
DOM=$(jqr '.domains[] | select(.disks[0].format == "qcow2" and .disks[0].backing) | .name' | head -1)
RBD_DOM_IMG=$(jqr '[.domains[].disks[] | select(.rbd)][0].rbd // empty')
TAG=verify-$$
TMP=$(mktemp -d)
failures=0

# One multiplexed connection for all checks (a new ssh connection costs 0.3-1 s here).
MUX=(-o ControlPath="$TMP/mux")
hv() { lab_timeout 60 ssh -F "$SSH_CFG" "${MUX[@]}" hv1 "$@"; }

# check NAME CMD...: run, time, print PASS/FAIL with the output's first lines on failure.
check() {
  local name=$1 t0=$EPOCHREALTIME out rc=0; shift
  out=$("$@" 2>&1) || rc=$?
  local ms=$(( (${EPOCHREALTIME/./} - ${t0/./}) / 1000 ))
  if [ $rc = 0 ]; then
    printf 'PASS %-46s %5d ms\n' "$name" "$ms"
  else
    printf 'FAIL %-46s %5d ms (exit %d)\n' "$name" "$ms" "$rc"
    sed 's/^/     | /' <<<"$out" | head -15
    failures=$((failures + 1))
  fi
  LAST=$out
}

cleanup() {
  [ -n "${FWD_PID:-}" ] && kill "$FWD_PID" 2>/dev/null
  hv "virsh -q domjobabort $DOM 2>/dev/null; virsh -q checkpoint-delete $DOM $TAG 2>/dev/null;
      rm -f $VMS/$TAG.*" >/dev/null 2>&1 || true
  if [ -n "$RBD_DOM_IMG" ]; then hv "$RBD snap rm $RBD_DOM_IMG@$TAG" >/dev/null 2>&1 || true; fi
  ssh -F "$SSH_CFG" "${MUX[@]}" -O exit hv1 >/dev/null 2>&1 || true
  rm -rf "$TMP"
}
trap cleanup EXIT
lab_timeout 30 ssh -F "$SSH_CFG" "${MUX[@]}" -o ControlMaster=yes -o ControlPersist=120 -f -N hv1 \
  || die "cannot ssh to hv1 ($SSH_CFG): is the lab up? (bash test/lab/hypervisor-up.sh)"

domains_running() {
  local running d
  running=$(hv virsh list --name --state-running)
  for d in $(jqr '.domains[].name'); do
    grep -qx "$d" <<<"$running" || { echo "$d is not running"; return 1; }
  done
}
agent_error() { # the vp-agent domain has the channel but no agent: must fail, cleanly
  local out
  out=$(hv virsh domfsfreeze "$(jqr '.domains[] | select(.name | endswith("agent")) | .name')" 2>&1) \
    && { echo "domfsfreeze succeeded?!"; return 1; }
  echo "$out"
  grep -q 'agent is not connected' <<<"$out"
}
lab_pattern_map() { # nbdinfo --map text: data at 0 (boot sector), 1 MiB (+8 MiB), 64 MiB (+1 MiB)
  grep -Eq '^ +0 +[0-9]+ +0 +data' <<<"$1" &&
    grep -Eq '^ +1048576 +8388608 +0 +data' <<<"$1" &&
    grep -Eq '^ +67108864 +1048576 +0 +data' <<<"$1"
}
z_at_64m() { # qemu-io verifies the pattern itself
  local out
  out=$(qemu-io -r -f raw "$1" -c 'read -P 0x5a 64M 1M') || return 1
  echo "$out"
  ! grep -qi 'fail' <<<"$out"
}

# -- ssh and libvirt
check "ssh hv1 (key, known_hosts, BatchMode)" hv true
check "remote shell is lean (no pyenv in PATH)" hv 'case $PATH in *pyenv*) exit 1;; esac'
check "virsh list: all lab domains running" domains_running
check "virsh domblklist $DOM --details" hv virsh domblklist "$DOM" --details
check "qemu-img info -U (backing chain)" hv qemu-img info -U --backing-chain --output=json "$VMS/$DOM.qcow2"
check "  ...backing file is the raw _base image" jq -e '.[1].format == "raw" and (.[0]["backing-filename"] | test("_base"))' <<<"$LAST"
check "no guest agent -> clean domfsfreeze error" agent_error

# -- ceph as client.volumes (the hypervisor's rbd CLI, as vprotect's ceph-rbd strategy uses it)
if [ "$(jqr '.ceph.fsid // empty')" != "" ]; then
  RBD="rbd --conf $(jqr .ceph.conf) --id $(jqr .ceph.user) --keyring $(jqr .ceph.keyring)"
  check "rbd ls vms (client.volumes)" hv "$RBD ls vms"
  if [ -n "$RBD_DOM_IMG" ]; then
    check "rbd snap create $RBD_DOM_IMG@$TAG (in use)" hv "$RBD snap create $RBD_DOM_IMG@$TAG"
    check "rbd diff --format json @$TAG" hv "$RBD diff --format json $RBD_DOM_IMG@$TAG"
    check "  ...the random 8 MiB at 1 MiB is there" jq -e '[.[] | select(.offset <= 1048576)] | length > 0' <<<"$LAST"
    check "rbd snap rm" hv "$RBD snap rm $RBD_DOM_IMG@$TAG"
  fi
else
  echo "SKIP ceph checks (ceph not in lab.json)"
fi

# -- checkpoint + pull backup over a forwarded unix socket, then abort (vprotect's libvirt-ssh path)
hv "cat > $VMS/$TAG.cp.xml" <<EOF
<domaincheckpoint><name>$TAG</name><disks><disk name='vda' checkpoint='bitmap'/></disks></domaincheckpoint>
EOF
hv "cat > $VMS/$TAG.backup.xml" <<EOF
<domainbackup mode='pull'>
  <server transport='unix' socket='$VMS/$TAG.sock'/>
  <disks><disk name='vda' backup='yes' type='file'><scratch file='$VMS/$TAG.scratch'/></disk></disks>
</domainbackup>
EOF
check "virsh backup-begin $DOM (pull, + checkpoint)" hv virsh backup-begin "$DOM" "$VMS/$TAG.backup.xml" "$VMS/$TAG.cp.xml"
check "virsh checkpoint-list shows $TAG" hv "virsh checkpoint-list $DOM --name | grep -qx $TAG"
# Forward the NBD socket through ssh, as vprotect does, and read the allocation map locally.
ssh -F "$SSH_CFG" -N -o ControlPath=none -o ExitOnForwardFailure=yes -L "$TMP/nbd.sock:$VMS/$TAG.sock" hv1 &
FWD_PID=$!
wait_for "forwarded socket" 15 test -S "$TMP/nbd.sock"
check "nbdinfo --map over ssh -L unix socket" nbdinfo --map "nbd+unix:///vda?socket=$TMP/nbd.sock"
check "  ...boot sector, 8 MiB data, 'Z' at 64 MiB" lab_pattern_map "$LAST"
check "read 1 MiB at 64 MiB = 'Z' (overlay over _base)" z_at_64m "nbd+unix:///vda?socket=$TMP/nbd.sock"
kill "$FWD_PID" 2>/dev/null; wait "$FWD_PID" 2>/dev/null || true; FWD_PID=
check "virsh domjobabort $DOM" hv virsh domjobabort "$DOM"
check "virsh checkpoint-delete $TAG" hv virsh checkpoint-delete "$DOM" "$TAG"

# -- the netns hypervisor, when it is up
if [ "$(jqr '.ssh.netns // empty')" != "" ]; then
  check "ssh hv-netns (through netns $(jqr .ssh.netns.clientNamespace))" lab_timeout 30 ssh -F "$SSH_CFG" hv-netns true
fi

if [ $failures = 0 ]; then
  echo "verify: all checks passed"
else
  echo "verify: $failures check(s) FAILED"
  exit 1
fi
