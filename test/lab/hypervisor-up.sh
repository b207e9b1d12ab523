#!/usr/bin/env bash
# The "KVM hypervisor" that vprotect's libvirt-ssh strategy talks to, on this one machine:
#   - the lab's own OpenSSH sshd on 127.0.0.1:2222 (key-only root; /etc/ssh untouched),
#   - virtlogd + libvirtd on the default system sockets (qemu:///system; shared with nova-compute),
#   - sample domains vp-qcow2, vp-raw, vp-two, vp-agent (+ vp-rbd when Ceph is ready),
#   - optionally (HV_NETNS=1, default) a second sshd inside netns vp-hv, 10.200.0.2:22, for
#     link-loss and bandwidth tests.
# Ready marker: $LAB/state/hypervisor.ready. Idempotent: running parts are left alone.
. "$(dirname "$0")/lib.sh"
. "$LAB_SRC/hypervisor-lib.sh"
. "$LAB_SRC/ceph-lib.sh"

DISK_SIZE=256M

# ---------------------------------------------------------------- ssh

make_ssh_keys() {
  mkdir -p "$SSH_DIR"
  local t
  for t in ed25519 rsa; do
    [ -f "$SSH_DIR/ssh_host_${t}_key" ] || ssh-keygen -q -t "$t" -N '' -C "vprotect-lab-host" -f "$SSH_DIR/ssh_host_${t}_key"
  done
  [ -f "$SSH_DIR/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C vprotect-lab -f "$SSH_DIR/id_ed25519"
  # PEM ("BEGIN RSA PRIVATE KEY") for libraries that do not read the OpenSSH key format.
  [ -f "$SSH_DIR/id_rsa" ] || ssh-keygen -q -t rsa -b 3072 -m PEM -N '' -C vprotect-lab -f "$SSH_DIR/id_rsa"
  cat "$SSH_DIR/id_ed25519.pub" "$SSH_DIR/id_rsa.pub" >"$SSH_DIR/authorized_keys"
  # Prefilled, so clients can insist on StrictHostKeyChecking=yes.
  {
    sed "s/^/[127.0.0.1]:$SSH_PORT /" "$SSH_DIR/ssh_host_ed25519_key.pub" "$SSH_DIR/ssh_host_rsa_key.pub"
    sed "s/^/$NETNS_HV_IP /" "$SSH_DIR/ssh_host_ed25519_key.pub" "$SSH_DIR/ssh_host_rsa_key.pub"
  } | cut -d' ' -f1-3 >"$SSH_DIR/known_hosts"
}

# write_sshd_config FILE LISTEN_ADDR:PORT
write_sshd_config() {
  cat >"$1" <<EOF
# vprotect test lab hypervisor sshd (started by test/lab/hypervisor-up.sh, not by init)
ListenAddress $2
HostKey $SSH_DIR/ssh_host_ed25519_key
HostKey $SSH_DIR/ssh_host_rsa_key
PidFile none
AuthorizedKeysFile $SSH_DIR/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
# No PAM: no session modules to run; root's password field is '*', so key login works.
UsePAM no
# The keys live under /tmp (mode 1777), which StrictModes would refuse.
StrictModes no
# vprotect forwards the NBD unix sockets of libvirt backup jobs / qemu-nbd through SSH.
AllowTcpForwarding yes
AllowStreamLocalForwarding yes
StreamLocalBindUnlink yes
# aes-gcm is 30-50 % cheaper than the default chacha20-poly1305 (AES-NI).
Ciphers aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com,aes128-ctr,aes256-ctr
# One connection, many channels: parallel exec and forwards.
MaxSessions 64
MaxStartups 64:30:128
# Debian's bash sources ~/.bashrc for commands run by sshd unless SHLVL >= 2 after its own
# increment; root's .bashrc here runs 'pyenv init' (~0.5 s per exec). SHLVL=1 skips it, so
# 'ssh hv1 cmd' gets a plain PATH and costs ~0.25 s instead of ~0.7 s.
SetEnv SHLVL=1
Subsystem sftp /usr/lib/openssh/sftp-server
PrintMotd no
X11Forwarding no
LogLevel VERBOSE
EOF
}

write_ssh_config() {
  local common="  User root
  IdentityFile $SSH_DIR/id_ed25519
  IdentitiesOnly yes
  UserKnownHostsFile $SSH_DIR/known_hosts
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking yes
  BatchMode yes
  ConnectTimeout 10
  Ciphers aes128-gcm@openssh.com,chacha20-poly1305@openssh.com
  LogLevel ERROR"
  cat >"$SSH_DIR/ssh_config" <<EOF
# ssh -F $SSH_DIR/ssh_config hv1 …   (written by test/lab/hypervisor-up.sh)
Host hv1
  HostName 127.0.0.1
  Port $SSH_PORT
$common
  ServerAliveInterval 10
  ServerAliveCountMax 3

# The hypervisor inside netns $NETNS_HV; reachable only from netns $NETNS_CI, so the client
# tunnels through it (needs root). Cut: ip -n $NETNS_HV link set $NETNS_HV_DEV down
Host hv-netns
  HostName $NETNS_HV_IP
  Port 22
  ProxyCommand ip netns exec $NETNS_CI nc %h %p
$common
  ServerAliveInterval 2
  ServerAliveCountMax 2
EOF
}

ssh_ok() { lab_timeout 15 ssh -F "$SSH_DIR/ssh_config" "$1" true; }

start_sshd() {
  make_ssh_keys
  write_sshd_config "$SSH_DIR/sshd_config" "127.0.0.1:$SSH_PORT"
  write_ssh_config
  if [ ! -d /run/sshd ]; then   # sshd's privilege-separation directory (normally made by init)
    mkdir -p /run/sshd && chmod 755 /run/sshd && touch "$LAB_STATE/created-run-sshd"
  fi
  /usr/sbin/sshd -t -f "$SSH_DIR/sshd_config" || die "sshd config test failed"
  lab_start sshd /usr/sbin/sshd -D -e -f "$SSH_DIR/sshd_config"
  wait_for "sshd on 127.0.0.1:$SSH_PORT" 20 ssh_ok hv1
}

# ---------------------------------------------------------------- netns hypervisor

netns_exists() { [ -e "/run/netns/$1" ]; }

start_netns_sshd() {
  if ! netns_exists "$NETNS_HV" || ! netns_exists "$NETNS_CI"; then
    lab_stop sshd-netns
    ip netns del "$NETNS_HV" 2>/dev/null || true
    ip netns del "$NETNS_CI" 2>/dev/null || true
    ip netns add "$NETNS_HV"
    ip netns add "$NETNS_CI"
    # Both ends live in namespaces of our own: the root namespace gets no address or route.
    ip -n "$NETNS_CI" link add "$NETNS_CI_DEV" type veth peer name "$NETNS_HV_DEV" netns "$NETNS_HV"
    ip -n "$NETNS_CI" addr add "$NETNS_CI_IP/24" dev "$NETNS_CI_DEV"
    ip -n "$NETNS_HV" addr add "$NETNS_HV_IP/24" dev "$NETNS_HV_DEV"
    local ns
    for ns in "$NETNS_CI" "$NETNS_HV"; do ip -n "$ns" link set lo up; done
    ip -n "$NETNS_CI" link set "$NETNS_CI_DEV" up
    ip -n "$NETNS_HV" link set "$NETNS_HV_DEV" up
  fi
  write_sshd_config "$SSH_DIR/sshd_config-netns" "$NETNS_HV_IP:22"
  # ip netns exec execs sshd in place, so the pid file holds sshd itself. Same libvirtd (its
  # unix socket is a file, not bound to a network namespace).
  lab_start sshd-netns ip netns exec "$NETNS_HV" /usr/sbin/sshd -D -e -f "$SSH_DIR/sshd_config-netns"
  wait_for "sshd in netns $NETNS_HV" 20 ssh_ok hv-netns
}

# ---------------------------------------------------------------- libvirt

start_libvirt() {
  if foreign_daemon libvirtd; then
    log "using the libvirtd that already runs (pid $(cat /run/libvirtd.pid)); the lab will not stop it"
    wait_for "libvirtd" 30 libvirt_answers
    return 0
  fi
  # Debian ships a "default" NAT network; autostarted, it would put 192.168.122.1 on a bridge.
  # This lab binds loopback only, so refuse rather than edit someone's libvirt config.
  if compgen -G '/etc/libvirt/qemu/networks/autostart/*.xml' >/dev/null; then
    die "libvirt networks are set to autostart ($(ls /etc/libvirt/qemu/networks/autostart)); " \
      "they would create non-loopback addresses: 'virsh net-autostart NAME --disable' first"
  fi
  # No systemd, so no socket activation: virtlogd must run before libvirtd starts a domain.
  foreign_daemon virtlogd || lab_start virtlogd /usr/sbin/virtlogd
  lab_start libvirtd /usr/sbin/libvirtd
  # The first start probes qemu's capabilities (~9 s) and caches them in /var/cache/libvirt.
  wait_for "libvirtd on $LIBVIRT_URI" 90 libvirt_answers
}

# kvm when /dev/kvm works for qemu AND libvirt offers it; otherwise TCG (domain type 'qemu').
detect_accel() {
  local out
  if [ -c /dev/kvm ] \
    && out=$(echo quit | lab_timeout 20 qemu-system-x86_64 -machine none,accel=kvm -nodefaults \
      -display none -monitor stdio 2>&1) \
    && virsh_ domcapabilities --virttype kvm >/dev/null 2>&1; then
    echo kvm
  else
    echo tcg
  fi
}

# ---------------------------------------------------------------- disks

# A 128-bit AES key from a name, so every disk gets its own but reproducible random data.
seed_key() { printf '%s' "$1" | sha256sum | cut -c1-32; }

# write_pattern FILE NAME BOOTABLE: the lab's disk content, deterministic per NAME:
#   bytes 0-511   boot sector "cli; hlt" (0xFA 0xF4 … 0x55AA): SeaBIOS boots it, the vCPU halts,
#                 so an idle domain costs no CPU even under TCG (only when BOOTABLE=1)
#   1 MiB  + 8 MiB   pseudo-random (AES-CTR keystream keyed by NAME: incompressible, no dedup)
#   64 MiB + 1 MiB   'Z' (0x5a)
# Everything else is a hole.
write_boot_sector() {
  { printf '\xfa\xf4'; head -c 508 /dev/zero; printf '\x55\xaa'; } |
    dd of="$1" conv=notrunc status=none
}
write_random() { # FILE NAME
  head -c 8M /dev/zero |
    openssl enc -aes-128-ctr -nosalt -K "$(seed_key "$2")" -iv 00000000000000000000000000000000 |
    dd of="$1" bs=1M seek=1 conv=notrunc status=none
}
write_z() { head -c 1M /dev/zero | tr '\0' Z | dd of="$1" bs=1M seek=64 conv=notrunc status=none; }

make_raw() { # FILE NAME BOOTABLE [WITH_Z]
  rm -f "$1.tmp"
  truncate -s "$DISK_SIZE" "$1.tmp"
  [ "$3" = 1 ] && write_boot_sector "$1.tmp"
  write_random "$1.tmp" "$2"
  [ "${4:-1}" = 1 ] && write_z "$1.tmp"
  mv "$1.tmp" "$1"
}

# qcow2 v3 (compat 1.1: needed for persistent dirty bitmaps = libvirt checkpoints).
make_qcow2() { # FILE NAME BOOTABLE
  [ -f "$1" ] && return 0
  make_raw "$1.raw" "$2" "$3"
  qemu-img convert -q -f raw -O qcow2 -o compat=1.1 "$1.raw" "$1.tmp"
  rm -f "$1.raw"
  mv "$1.tmp" "$1"
}

# The data seeds are the default names (vp-qcow2, ...), whatever HV_PREFIX is.
make_disks() {
  local v=$VMS_DIR/$HV_PREFIX base=$VMS_DIR/_base/${HV_PREFIX}qcow2.base.raw
  mkdir -p "$VMS_DIR/_base"
  # Writable for qemu (runs as libvirt-qemu): backup scratch files, NBD sockets, overlays.
  chmod 0777 "$VMS_DIR"
  # vp-qcow2: like Nova — a raw image in _base (boot sector + random data), and the
  # instance's qcow2 overlay on it holding the 'Z' megabyte. A reader must flatten both.
  if [ ! -f "${v}qcow2.qcow2" ]; then
    [ -f "$base" ] || make_raw "$base" vp-qcow2 1 0
    qemu-img create -q -f qcow2 -o compat=1.1 -F raw -b "$base" "${v}qcow2.qcow2.tmp" "$DISK_SIZE"
    qemu-io -f qcow2 -c 'write -P 0x5a 64M 1M' "${v}qcow2.qcow2.tmp" >/dev/null
    mv "${v}qcow2.qcow2.tmp" "${v}qcow2.qcow2"
  fi
  [ -f "${v}raw.raw" ] || make_raw "${v}raw.raw" vp-raw 1
  make_qcow2 "${v}two.vda.qcow2" vp-two.vda 1
  make_qcow2 "${v}two.vdb.qcow2" vp-two.vdb 0
  make_qcow2 "${v}agent.qcow2" vp-agent 1
}

# ---------------------------------------------------------------- ceph for vp-rbd

ceph_ready() { [ -f "$CEPH_READY" ] && lab_running ceph-mon; }
ceph_fsid() { awk '$1 == "fsid" {print $3}' "$CEPH_CONF"; }
# The cluster vp-rbd was set up against; after a Ceph rebuild (CEPH_FRESH=1) its disk, key and
# qemu's connection are gone, so the domain is set up again.
RBD_FSID_FILE=$LAB_STATE/hypervisor-rbd-fsid
rbd_cluster_changed() { [ -f "$RBD_FSID_FILE" ] && [ "$(cat "$RBD_FSID_FILE")" != "$(ceph_fsid)" ]; }

# The libvirt secret holding client.volumes' key (value re-set every time: a rebuilt cluster
# has a new key). virsh secret-set-value --file takes the BASE64 key; --plain would encode it
# twice and qemu fails with "error connecting: Invalid argument".
ensure_ceph_secret() {
  local keyfile=$LAB_STATE/volumes.key
  if ! virsh_ secret-dumpxml "$CEPH_LIBVIRT_SECRET_UUID" >/dev/null 2>&1; then
    virsh_ secret-define /dev/stdin >/dev/null <<EOF
<secret ephemeral='no' private='no'>
  <uuid>$CEPH_LIBVIRT_SECRET_UUID</uuid>
  <usage type='ceph'><name>client.volumes secret (vprotect lab $LAB)</name></usage>
</secret>
EOF
    touch "$LAB_STATE/created-libvirt-secret"
  fi
  ( umask 077; ceph-authtool -p -n client.volumes "$CEPH_DIR/keyrings/ceph.client.volumes.keyring" >"$keyfile" )
  virsh_ secret-set-value "$CEPH_LIBVIRT_SECRET_UUID" --file "$keyfile" >/dev/null
  rm -f "$keyfile"
}

rbd_v() { lab_timeout 120 rbd --conf "$CEPH_CONF" --id volumes --keyring "$CEPH_DIR/keyrings/ceph.client.volumes.keyring" "$@"; }

ensure_rbd_disk() {
  rbd_v info "$RBD_IMAGE" >/dev/null 2>&1 && return 0
  make_raw "$VMS_DIR/rbd-import.raw" vp-rbd 1
  rbd_v import --no-progress "$VMS_DIR/rbd-import.raw" "$RBD_IMAGE" >/dev/null
  rm -f "$VMS_DIR/rbd-import.raw"
}

# ---------------------------------------------------------------- domains

render_domain() { # KIND DOMTYPE -> rendered XML in $LAB/domains/NAME.xml
  local name=$HV_PREFIX$1
  mkdir -p "$LAB/domains"
  sed -e "s|@NAME@|$name|g; s|@DOMTYPE@|$2|g; s|@VMS@|$VMS_DIR|g" \
    -e "s|@SECRET_UUID@|$CEPH_LIBVIRT_SECRET_UUID|g; s|@MON_PORT@|$CEPH_MON_PORT_V1|g" \
    "$LAB_SRC/domains/vp-$1.xml" >"$LAB/domains/$name.xml"
}

# Define (if missing, or if defined for the other accelerator and not running) and start.
ensure_domain() { # KIND DOMTYPE
  local name=$HV_PREFIX$1 type=$2 state xml
  state=${DOM_STATE[$name]:-}
  [ "$state" = running ] && return 0
  render_domain "$1" "$type"
  if [ -n "$state" ]; then
    xml=$(virsh_ dumpxml --inactive "$name")
    if [[ "$xml" != *"<domain type='$type'"* ]]; then
      log "$name was defined for another accelerator: redefining as type $type"
      virsh_ undefine "$name" --checkpoints-metadata --snapshots-metadata >/dev/null
      state=
    fi
  fi
  [ -n "$state" ] || virsh_ define "$LAB/domains/$name.xml" >/dev/null
  virsh_ start "$name" >/dev/null
}

# ---------------------------------------------------------------- lab.json

# One entry per domain: its disks as the test sees them — {target, path, format, backing?} for
# files, {target, rbd: "pool/image", format} for Ceph — read from the live domain XML.
domains_json() {
  local name cmds=
  for name in "$@"; do cmds+="dumpxml $name; echo '<!--END-->'; "; done
  virsh_ "$cmds" | /usr/bin/python3 -c '
import json, sys, xml.etree.ElementTree as ET
out = []
for doc in sys.stdin.read().split("<!--END-->"):
    if not doc.strip():
        continue
    dom = ET.fromstring(doc)
    disks = []
    for d in dom.findall("./devices/disk[@device=\"disk\"]"):
        src, drv = d.find("source"), d.find("driver")
        e = {"target": d.find("target").get("dev"), "format": drv.get("type") if drv is not None else None}
        if d.get("type") == "network":
            e["rbd"] = src.get("name")
        else:
            e["path"] = src.get("file")
            b = d.find("./backingStore/source")
            if b is not None:
                e["backing"] = {"path": b.get("file"), "format": d.find("./backingStore/format").get("type")}
        disks.append(e)
    out.append({"name": dom.findtext("name"), "disks": disks})
json.dump(out, sys.stdout)'
}

publish() { # ACCEL DOMAINS...
  local accel=$1; shift
  local netns=null
  if lab_running sshd-netns; then
    netns=$(jq -n --arg ns "$NETNS_HV" --arg ci "$NETNS_CI" --arg ip "$NETNS_HV_IP" --arg dev "$NETNS_HV_DEV" \
      '{host: $ip, port: 22, hostAlias: "hv-netns", namespace: $ns, clientNamespace: $ci,
        proxyCommand: "ip netns exec \($ci) nc %h %p", linkDevice: $dev}')
  fi
  jq -n --arg ssh "$SSH_DIR" --argjson port "$SSH_PORT" --arg uri "$LIBVIRT_URI" --arg accel "$accel" \
    --arg vms "$VMS_DIR" --argjson netns "$netns" --argjson domains "$(domains_json "$@")" \
    --arg hk "$(cut -d' ' -f1-2 "$SSH_DIR/ssh_host_ed25519_key.pub")" \
    --arg hkfp "$(ssh-keygen -l -E sha256 -f "$SSH_DIR/ssh_host_ed25519_key.pub" | awk '{print $2}')" '{
    ssh: {host: "127.0.0.1", port: $port, user: "root", keyFile: "\($ssh)/id_ed25519",
          rsaKeyFile: "\($ssh)/id_rsa", knownHostsFile: "\($ssh)/known_hosts",
          configFile: "\($ssh)/ssh_config", hostAlias: "hv1",
          hostKey: $hk, hostKeySha256: $hkfp, netns: $netns},
    libvirt: {uri: $uri, sshUri: "qemu+ssh://root@127.0.0.1:\($port)/system?keyfile=\($ssh)/id_ed25519&known_hosts=\($ssh)/known_hosts",
              accel: $accel, domainType: (if $accel == "kvm" then "kvm" else "qemu" end),
              qemuUser: "libvirt-qemu"},
    vmsDir: $vms,
    diskPattern: {size: 268435456, bootSector: true,
                  random: {offset: 1048576, length: 8388608}, z: {offset: 67108864, length: 1048576}},
    domains: $domains}' | lab_publish hypervisor
}

# ---------------------------------------------------------------- main

# Everything that should run does: nothing to do (keeps a re-run well under a second).
all_up() {
  local want=("${HV_KINDS[@]/#/$HV_PREFIX}") running name
  if ceph_ready; then
    want+=("${HV_PREFIX}rbd")
    rbd_cluster_changed && return 1
  fi
  [ -f "$HV_READY" ] && [ -f "$LAB_STATE/accel" ] && lab_running sshd || return 1
  [ "${HV_NETNS:-1}" != 1 ] || lab_running sshd-netns || return 1
  lab_running libvirtd || foreign_daemon libvirtd || return 1
  running=$(virsh_ list --name --state-running 2>/dev/null) || return 1
  for name in "${want[@]}"; do grep -qx "$name" <<<"$running" || return 1; done
}

main() {
  [ "$(id -u)" = 0 ] || die "run as root"
  command -v libvirtd >/dev/null || die "libvirt is not installed: run test/lab/install.sh"
  if all_up; then
    log "hypervisor is up (no-op): accel=$(cat "$LAB_STATE/accel")"
    return 0
  fi
  local t0=$SECONDS accel domtype kind domains=()
  rm -f "$HV_READY"

  start_sshd
  log "sshd on 127.0.0.1:$SSH_PORT up (+$((SECONDS - t0)) s)"
  start_libvirt
  log "libvirtd up (+$((SECONDS - t0)) s)"
  accel=$(detect_accel)
  echo "$accel" >"$LAB_STATE/accel"
  if [ "$accel" = kvm ]; then domtype=kvm; else
    domtype=qemu
    log "no usable /dev/kvm: domains run under TCG (type='qemu'), slower but they only halt"
  fi

  make_disks
  log "disks ready (+$((SECONDS - t0)) s)"
  read_dom_states
  for kind in "${HV_KINDS[@]}"; do
    ensure_domain "$kind" "$domtype"
    domains+=("$HV_PREFIX$kind")
  done
  if ceph_ready; then
    if rbd_cluster_changed && [ "${DOM_STATE[${HV_PREFIX}rbd]:-}" = running ]; then
      log "Ceph was rebuilt: restarting ${HV_PREFIX}rbd on a new disk"
      virsh_ destroy "${HV_PREFIX}rbd" >/dev/null
      DOM_STATE[${HV_PREFIX}rbd]="shut off"
    fi
    ensure_ceph_secret
    ensure_rbd_disk
    ensure_domain rbd "$domtype"
    ceph_fsid >"$RBD_FSID_FILE"
    domains+=("${HV_PREFIX}rbd")
  else
    log "ceph is not ready: vp-rbd skipped (run ceph-up.sh, then this again)"
  fi
  log "domains running (+$((SECONDS - t0)) s)"

  if [ "${HV_NETNS:-1}" = 1 ]; then
    start_netns_sshd
    log "netns sshd on $NETNS_HV_IP:22 up (+$((SECONDS - t0)) s)"
  fi

  publish "$accel" "${domains[@]}"
  touch "$HV_READY"
  log "hypervisor ready in $((SECONDS - t0)) s: accel=$accel, domains: ${domains[*]}"
}

main "$@"
