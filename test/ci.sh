#!/usr/bin/env bash
# The whole test suite, as CI runs it on a fresh machine (README: "Run the tests"):
# bring the lab up (installs Debian packages, starts sshd/libvirtd/Ceph/OpenStack; idempotent),
# run every tier (unit, integration against the lab, e2e against the built binary), then take
# the lab down again and wipe it so the machine is left as it was found.
set -euo pipefail
cd "$(dirname "$0")/.."

started=$SECONDS
teardown() {
  local rc=$?
  if [ "${VPROTECT_KEEP_LAB:-}" = 1 ]; then
    echo "[ci] VPROTECT_KEEP_LAB=1: leaving the lab running (npm run lab:down -- --wipe stops it)" >&2
  else
    bash test/lab/down.sh --wipe || echo "[ci] lab teardown failed (rc=$?); see npm run lab:status" >&2
  fi
  echo "[ci] finished in $((SECONDS - started)) s with exit code $rc" >&2
  exit $rc
}
trap teardown EXIT

bash test/lab/up.sh
echo "[ci] lab up after $((SECONDS - started)) s" >&2
npm test
