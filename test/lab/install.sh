#!/usr/bin/env bash
# Installs every Debian package the whole lab needs, in ONE apt run (dpkg time dominates, and
# one resolver run avoids half-installed states). Idempotent: when everything is installed it
# returns in well under a second.
#
# Extra packages: test/lab/openstack/packages.txt (one name a line, '#' comments) is merged in,
# so the OpenStack part of the lab shares the same single apt run.
#
# Services: dpkg's maintainer scripts call invoke-rc.d, which would start sshd on 0.0.0.0:22,
# libvirtd, ... There is no systemd here, so the SysV scripts would really run. A
# /usr/sbin/policy-rc.d that exits 101 forbids that; if the machine has none, we put one in
# place for the duration of the install and remove it again.
. "$(dirname "$0")/lib.sh"

# What the Ceph/hypervisor part needs (and why, where it is not obvious).
LAB_PACKAGES=(
  ceph-mon ceph-mgr ceph-osd ceph-common    # single-node cluster; ceph-common has rbd/ceph CLIs
  rbd-fuse                                  # rbd images as files (no krbd/rbd-nbd on this kernel)
  python3-rados python3-rbd                 # cinder/nova's rbd code, and scripted checks
  qemu-system-x86 qemu-utils                # the hypervisor; qemu-img/qemu-nbd/qemu-io
  qemu-block-extra                          # block-rbd.so: qemu/qemu-img/qemu-nbd on rbd:pool/img
  libvirt-daemon-system libvirt-clients     # libvirtd + virtlogd + virsh
  openssh-server                            # the lab's own sshd (own config, /etc/ssh untouched)
  libnbd-bin nbdkit fuse3                   # nbdinfo/nbdcopy/nbdfuse, nbdkit, fusermount3
  virtnbdbackup                             # peer tool for benchmarks
  iproute2 netcat-openbsd xxd coreutils jq  # netns/veth/tc, nc for ProxyCommand, data patterns
)

# nbdfuse is its own package on newer Debian; on bookworm the binary ships in libnbd-bin.
command -v nbdfuse >/dev/null || LAB_PACKAGES+=(nbdfuse)

# Merge the OpenStack engineer's list, if present.
extra=$LAB_SRC/openstack/packages.txt
if [ -f "$extra" ]; then
  while read -r p _; do
    case "$p" in ''|'#'*) continue ;; esac
    LAB_PACKAGES+=("$p")
  done <"$extra"
fi

# Refresh package lists when they are missing or older than a week (a stale list points at
# .debs the mirror no longer has). lab_apt_install honours LAB_APT_UPDATE.
lists_fresh() {
  [ -n "$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -mtime -7 2>/dev/null | head -1)" ]
}
# Names of the given packages that are not installed yet (one dpkg-query for all of them).
not_installed() {
  local status p
  declare -A ok=()
  status=$(dpkg-query -W -f='${Package} ${Status}\n' "$@" 2>/dev/null || true)
  while read -r p _ _ st; do [ "$st" = installed ] && ok[$p]=1; done <<<"$status"
  for p in "$@"; do [ -n "${ok[$p]:-}" ] || echo "$p"; done
}

# Drop names apt has no candidate for (e.g. nbdfuse on bookworm, where the nbdfuse binary ships
# in libnbd-bin). One apt-cache call: each call parses the whole package list (~1 s).
# (No `| grep -q` here: with pipefail the writer's SIGPIPE would turn a match into a failure.)
available_only() {
  local out
  out=$(apt-cache policy "$@" 2>/dev/null)
  awk '/^[^ ].*:$/ { sub(":$", ""); name=$0 } /Candidate:/ && $2 != "(none)" { print name }' <<<"$out"
}

main() {
  [ "$(id -u)" = 0 ] || die "run as root"
  # Fast path first, so a re-run costs nothing.
  local missing wanted
  mapfile -t missing < <(not_installed "${LAB_PACKAGES[@]}")
  [ ${#missing[@]} -gt 0 ] || { log "all ${#LAB_PACKAGES[@]} lab packages are installed"; return 0; }
  if ! lists_fresh; then
    log "apt lists are missing or older than 7 days: apt-get update"
    apt-get -o DPkg::Lock::Timeout=1200 update -qq
  fi
  mapfile -t wanted < <(available_only "${missing[@]}")
  [ ${#wanted[@]} -eq ${#missing[@]} ] ||
    log "no candidate here, skipped: $(comm -23 <(printf '%s\n' "${missing[@]}" | sort) <(printf '%s\n' "${wanted[@]}" | sort) | xargs)"
  [ ${#wanted[@]} -gt 0 ] || return 0

  own_policy=""   # global: the EXIT trap runs after main has returned
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\n# temporary, from vprotect test/lab/install.sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    own_policy=1
  fi
  trap '[ -z "$own_policy" ] || rm -f /usr/sbin/policy-rc.d' EXIT

  local t0=$SECONDS
  lab_apt_install "${wanted[@]}"
  log "installed in $((SECONDS - t0)) s"
}

main "$@"
