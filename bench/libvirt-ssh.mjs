#!/usr/bin/env node
/**
 * libvirt-ssh benchmark (not a test), on the lab's sshd + libvirtd: one running domain with a
 * 2 GiB qcow2 disk holding 1 GiB of incompressible data (every other 4 MiB), side by side with
 * `ssh cat` and virtnbdbackup (Debian package):
 *   full over SSH     vprotect (NBD through the SSH connection)  vs  ssh -c aes128-gcm host cat disk > file
 *   full over TCP     vprotect (netcat transport)                 vs  virtnbdbackup -l full
 *   incremental A     after 256 scattered 64 KiB guest writes: stored bytes vs the 16 MiB changed,
 *                     time vs virtnbdbackup -l inc
 *   incremental B     after 64 scattered 4 MiB guest writes: throughput vs virtnbdbackup -l inc
 * vprotect is timed as users run it, the whole command from start to exit (`vprotect backup --policy P
 * --domain D`, Node's start-up and module loading included), like virtnbdbackup's whole command; the
 * engine's own time (point start to durable manifest) is reported beside it. Peak RSS comes from
 * /usr/bin/time for both. Ratios > 1 = vprotect better.
 *
 *   npm run build && node bench/libvirt-ssh.mjs [--keep]
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { stringify } from 'yaml';
import { childNodeArgs, withFsync, writeHalfRandomImage } from './_seed.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const LAB = process.env.VPROTECT_LAB ?? '/tmp/vprotect-lab';
const args = process.argv.slice(2);
const MiB = 1 << 20;

function lab() {
  const file = join(LAB, 'lab.json');
  if (!existsSync(file) || !existsSync(join(LAB, 'state', 'hypervisor.ready'))) throw new Error("the lab's hypervisor is not running: start it with `npm run lab:up`");
  const l = JSON.parse(readFileSync(file, 'utf8'));
  const s = l.ssh;
  return {
    vms: l.vmsDir,
    ssh: s,
    hv: { name: 'hv1', address: s.host, port: s.port, user: s.user, keyFile: s.keyFile, hostKey: { knownHostsFile: s.knownHostsFile }, vmUser: l.libvirt?.qemuUser ?? 'libvirt-qemu', libvirtUri: 'qemu:///system', netcat: { ports: '10890-10899', address: '127.0.0.1' } },
  };
}

// ---------------------------------------------------------------- parent
const { vms, ssh } = lab();
const virsh = (...a) => execFileSync('virsh', ['-q', '-c', 'qemu:///system', ...a], { encoding: 'utf8', stdio: ['pipe', 'pipe', 'pipe'] });
const tryVirsh = (...a) => {
  try {
    return virsh(...a);
  } catch {
    return undefined;
  }
};
function timed(cmd, a, opts = {}) {
  const t0 = process.hrtime.bigint();
  const r = spawnSync('/usr/bin/time', ['-f', '%M', cmd, ...a], { encoding: 'utf8', maxBuffer: 64 * MiB, ...opts });
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  if (r.status !== 0) throw new Error(`${cmd} ${a.join(' ')} failed: ${r.stderr.slice(-2000)}`);
  return { seconds, maxRssKiB: Number(r.stderr.trim().split('\n').at(-1)), stdout: r.stdout };
}
/**
 * The inventory the measured commands read: the lab's hypervisor, one repository and one policy
 * per transport (the policy carries the strategy options).
 */
function writeInventory(file, repos) {
  const { hv, vms } = lab();
  const policies = Object.entries(repos).map(([transport, path]) => ({ name: transport, strategy: 'libvirt-ssh', strategyOptions: { transport, workDir: join(vms, '.vprotect-bench') }, destination: transport }));
  const destinations = Object.fromEntries(Object.entries(repos).map(([transport, path]) => [transport, { type: 'local', path }]));
  writeFileSync(file, stringify({ version: 1, hypervisors: [hv], destinations, policies }));
}
/** One `vprotect backup` command, timed from spawn to exit; its vm-done event gives sizes and the engine's time. */
function vprotectBackup(inventory, domain, transport, level) {
  // Run as users do, through the launcher's shebang (its node flags apply), unless node arguments
  // for profiling were asked for.
  const extra = childNodeArgs();
  const cli = extra.length ? [process.execPath, ...extra, join(root, 'bin/vprotect')] : [join(root, 'bin/vprotect')];
  const argv = [...cli, '-c', inventory, '--json', 'backup', '--policy', transport, '--domain', domain, '--level', level];
  const r = timed(argv[0], argv.slice(1));
  const done = r.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l)).find((e) => e.type === 'vm-done');
  if (!done) throw new Error(`vprotect ${argv.slice(cli.length).join(' ')} reported no finished VM:\n${r.stdout.slice(-2000)}`);
  const d = done.disks[0];
  return { pointId: done.pointId, level: done.level, storedBytes: d.storedBytes, dataBytes: d.dataBytes, seconds: r.seconds, engineSeconds: done.seconds, maxRssKiB: r.maxRssKiB };
}
const filesIn = (d) => readdirSync(d, { recursive: true }).map((f) => join(d, f)).filter((f) => statSync(f).isFile());
const dirBytes = (d) => filesIn(d).reduce((n, f) => n + statSync(f).blocks * 512, 0);
const gbps = (bytes, s) => `${(bytes / s / 1e9).toFixed(2)} GB/s`;
const ratio = (x) => `${x.toFixed(2)}×`;
/** A vprotect command's time: the whole command (what the ratio uses), then the engine's share. */
const secs = (x) => `${x.seconds.toFixed(2)} s (engine ${x.engineSeconds.toFixed(2)} s)`;

/** Guest writes through qemu (HMP qemu-io), all in one virsh process, then a flush. */
function guestWrites(domain, commands) {
  const script = [...commands, 'flush'].map((c) => `qemu-monitor-command ${domain} --hmp 'qemu-io -d /machine/peripheral/virtio-disk0/virtio-backend "${c}"'`).join('\n');
  execFileSync('virsh', ['-q', '-c', 'qemu:///system'], { input: `${script}\n`, stdio: ['pipe', 'ignore', 'pipe'] });
}
function scattered(count, size, span) {
  const slots = Math.floor(span / size);
  const used = new Set();
  const out = [];
  while (out.length < count) {
    const slot = randomBytes(4).readUInt32LE() % slots;
    if (used.has(slot)) continue;
    used.add(slot);
    out.push(`write -P 0x${(0x41 + (out.length % 26)).toString(16)} ${slot * size} ${size}`);
  }
  return out;
}

const work = mkdtempSync(join(tmpdir(), 'vprotect-bench-lvs-'));
const tag = randomBytes(3).toString('hex');
// Two identical domains: virtnbdbackup refuses a domain with checkpoints it did not create.
const domain = `vpb-${tag}`;
const domainB = `vpb-${tag}-vnb`;
const disk = join(vms, `${domain}.qcow2`);
const diskB = join(vms, `${domainB}.qcow2`);
const results = {};
try {
  process.stdout.write(`building ${domain}: 2 GiB qcow2, 1 GiB of random data…\n`);
  const raw = join(work, 'seed.raw');
  writeHalfRandomImage(raw, { bootable: true });
  execFileSync('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', '-o', 'compat=1.1', raw, disk]);
  rmSync(raw);
  execFileSync('cp', ['--sparse=always', disk, diskB]);
  execFileSync('chmod', ['0666', disk, diskB]);
  const domainXml = (name, file) => `<domain type='qemu'><name>${name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
<devices><emulator>/usr/bin/qemu-system-x86_64</emulator><disk type='file' device='disk'><driver name='qemu' type='qcow2' discard='unmap'/><source file='${file}'/><target dev='vda' bus='virtio'/></disk>
<serial type='file'><source path='${join(vms, `${name}.serial.log`)}'/><target port='0'/></serial><video><model type='none'/></video><memballoon model='none'/></devices></domain>`;
  for (const [name, file] of [[domain, disk], [domainB, diskB]]) {
    writeFileSync(join(work, `${name}.xml`), domainXml(name, file));
    virsh('define', join(work, `${name}.xml`));
    virsh('start', name);
  }

  // Full: ssh cat of the image file (what "copy the disk over SSH" costs), cache warm for both.
  execFileSync('cat', [disk], { stdio: ['ignore', 'ignore', 'ignore'] });
  const sshArgs = ['-c', 'aes128-gcm@openssh.com', '-i', ssh.keyFile, '-o', `UserKnownHostsFile=${ssh.knownHostsFile}`, '-o', 'StrictHostKeyChecking=yes', '-p', String(ssh.port), `${ssh.user}@${ssh.host}`];
  results.sshCat = withFsync(timed('sh', ['-c', 'd=$1; o=$2; shift 2; ssh "$@" cat "$d" > "$o"', 'sh', disk, join(work, 'cat.out'), ...sshArgs]), [join(work, 'cat.out')]);
  results.sshCat.bytes = statSync(join(work, 'cat.out')).size;
  rmSync(join(work, 'cat.out'));
  process.stdout.write(`ssh cat: ${results.sshCat.seconds.toFixed(2)} s\n`);

  const inventory = join(work, 'inventory.yaml');
  writeInventory(inventory, { ssh: join(work, 'repo-ssh'), netcat: join(work, 'repo-tcp') });
  results.fullSsh = vprotectBackup(inventory, domain, 'ssh', 'full');
  process.stdout.write(`vprotect full (ssh): ${results.fullSsh.seconds.toFixed(2)} s\n`);
  results.fullTcp = vprotectBackup(inventory, domain, 'netcat', 'full');
  process.stdout.write(`vprotect full (tcp): ${results.fullTcp.seconds.toFixed(2)} s\n`);
  const vnb = join(work, 'virtnbdbackup');
  results.vnbFull = withFsync(timed('virtnbdbackup', ['-d', domainB, '-l', 'full', '-o', vnb, '--noprogress']), filesIn(vnb));
  results.vnbFull.bytes = dirBytes(vnb);
  process.stdout.write(`virtnbdbackup full: ${results.vnbFull.seconds.toFixed(2)} s\n`);

  for (const [name, count, size] of [
    ['A', 256, 64 * 1024],
    ['B', 64, 4 * MiB],
  ]) {
    const writes = scattered(count, size, 2048 * MiB);
    guestWrites(domain, writes);
    guestWrites(domainB, writes);
    const before = dirBytes(vnb);
    results[`inc${name}Ssh`] = vprotectBackup(inventory, domain, 'ssh', 'incremental');
    results[`inc${name}Tcp`] = vprotectBackup(inventory, domain, 'netcat', 'incremental');
    results[`vnbInc${name}`] = withFsync(timed('virtnbdbackup', ['-d', domainB, '-l', 'inc', '-o', vnb, '--noprogress']), filesIn(vnb));
    results[`vnbInc${name}`].bytes = dirBytes(vnb) - before;
    results[`changed${name}`] = count * size;
    process.stdout.write(`incremental ${name}: vprotect ssh ${results[`inc${name}Ssh`].seconds.toFixed(2)} s, tcp ${results[`inc${name}Tcp`].seconds.toFixed(2)} s, virtnbdbackup ${results[`vnbInc${name}`].seconds.toFixed(2)} s\n`);
  }

  const r = results;
  const rows = [
    ['full over SSH vs ssh cat', `${secs(r.fullSsh)} (${gbps(r.fullSsh.dataBytes, r.fullSsh.seconds)} of data)`, `${r.sshCat.seconds.toFixed(2)} s (${gbps(r.sshCat.bytes, r.sshCat.seconds)})`, ratio(r.sshCat.seconds / r.fullSsh.seconds), '≥ 1.0×'],
    ['  same, ssh cat fsync\'d', secs(r.fullSsh), `${r.sshCat.durableSeconds.toFixed(2)} s`, ratio(r.sshCat.durableSeconds / r.fullSsh.seconds), ''],
    ['full over TCP vs virtnbdbackup full', secs(r.fullTcp), `${r.vnbFull.seconds.toFixed(2)} s`, ratio(r.vnbFull.seconds / r.fullTcp.seconds), '≥ 1.5×'],
    ['inc A (256×64 KiB) stored / 16 MiB changed', `${(r.incASsh.storedBytes / MiB).toFixed(2)} MiB`, `vnb ${(r.vnbIncA.bytes / MiB).toFixed(2)} MiB`, ratio(r.incASsh.storedBytes / r.changedA), '≤ 1.1×'],
    ['inc A time, ssh vs virtnbdbackup', secs(r.incASsh), `${r.vnbIncA.seconds.toFixed(2)} s`, ratio(r.incASsh.seconds / r.vnbIncA.seconds), '≤ 0.5× (time ratio)'],
    ['inc A time, tcp vs virtnbdbackup', secs(r.incATcp), `${r.vnbIncA.seconds.toFixed(2)} s`, ratio(r.incATcp.seconds / r.vnbIncA.seconds), '≤ 0.5× (time ratio)'],
    ['  inc A, tcp vs virtnbdbackup fsync\'d', secs(r.incATcp), `${r.vnbIncA.durableSeconds.toFixed(2)} s`, ratio(r.incATcp.seconds / r.vnbIncA.durableSeconds), ''],
    ['inc B (64×4 MiB) throughput, ssh vs vnb', gbps(r.changedB, r.incBSsh.seconds), gbps(r.changedB, r.vnbIncB.seconds), ratio(r.vnbIncB.seconds / r.incBSsh.seconds), '≥ 1.0×'],
    ['inc B throughput, tcp vs vnb', gbps(r.changedB, r.incBTcp.seconds), gbps(r.changedB, r.vnbIncB.seconds), ratio(r.vnbIncB.seconds / r.incBTcp.seconds), '≥ 1.0×'],
    ['peak RSS of vprotect (max over steps)', `${(Math.max(...['fullSsh', 'fullTcp', 'incASsh', 'incATcp', 'incBSsh', 'incBTcp'].map((k) => r[k].maxRssKiB)) / 1024).toFixed(0)} MiB`, `vnb full ${(r.vnbFull.maxRssKiB / 1024).toFixed(0)} MiB`, '', '≤ 200 MB'],
  ];
  process.stdout.write('\n| measure | vprotect | baseline | ratio | target |\n|---|---|---|---|---|\n');
  for (const row of rows) process.stdout.write(`| ${row.join(' | ')} |\n`);
  process.stdout.write(`\n${JSON.stringify(results, (k, v) => (k === 'stdout' ? undefined : v))}\n`);
} finally {
  if (!args.includes('--keep')) {
    for (const d of [domain, domainB]) {
      tryVirsh('destroy', d);
      tryVirsh('undefine', d, '--checkpoints-metadata');
      execFileSync('sh', ['-c', 'rm -rf "$1"/"$2".* "$1"/.vprotect-bench', 'sh', vms, d]);
    }
    rmSync(work, { recursive: true, force: true });
  }
}
