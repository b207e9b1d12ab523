#!/usr/bin/env node
/**
 * Transport benchmark (not a test): full read of a 1 GiB random-data image
 *   (a) NBD over a local unix socket to qemu-nbd (our client), and nbdcopy (libnbd, C) as a peer
 *   (b) NBD over an SSH-forwarded unix socket through the lab's sshd: the OpenSSH data channel
 *       (ssh -L, what nbdDialer uses by default; paced at 256 KiB requests, 1 MiB in flight) and
 *       ssh2 (streamlocal; the readers' defaults, 512 KiB, 64 MiB in flight), each also with the
 *       other's settings (`-deep`, `-paced`) to show what the pacing does
 *   (c) `ssh -c aes128-gcm@openssh.com host cat file > /dev/null` (OpenSSH) and ssh2 execStream cat
 *   (d) netcat mode: NBD over TCP to qemu-nbd
 *   (e) the one-way data stream (src/transport/stream): block status over NBD (ssh2), the data
 *       from the python3 helper through OpenSSH or ssh2
 * Each mode runs in its own child process so its peak RSS is its own. Medians of --runs (3);
 * the modes take turns within each run, so a change in the machine's load hits them all alike.
 *
 *   npm run build && node bench/transport.mjs [--size-mib 1024] [--runs 3] [--modes a,b,...]
 *
 * Needs qemu-utils (qemu-img, qemu-nbd), libnbd-bin (nbdcopy, optional) and, for the SSH modes,
 * the lab (`npm run lab:up`; read from /tmp/vprotect-lab/lab.json).
 */
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { childNodeArgs } from './_seed.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const dist = (p) => join(root, 'dist', 'src', 'transport', p);
const LAB = process.env.VPROTECT_LAB ?? '/tmp/vprotect-lab';

const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : dflt;
};

const MODES = {
  'nbd-unix': 'NBD, local unix socket (vprotect client)',
  'nbd-unix-reuse': 'NBD, local unix socket, reuseBuffers',
  'nbd-unix-2conn-reuse': 'NBD, local unix socket, 2 connections, reuseBuffers',
  'nbdcopy-unix': 'nbdcopy → null: (libnbd, C peer), local unix socket',
  'openssh-cat': 'ssh -c aes128-gcm@openssh.com host cat file > /dev/null',
  'nbd-ssh-openssh': 'NBD over SSH, OpenSSH data channel (default)',
  'nbd-ssh-ssh2': 'NBD over SSH, ssh2 data channel',
  'nbd-ssh-openssh-deep': 'NBD over SSH, OpenSSH, 512 KiB x 64 MiB in flight',
  'nbd-ssh-ssh2-paced': 'NBD over SSH, ssh2, 256 KiB x 1 MiB in flight',
  'ssh2-cat': 'ssh2 execStream cat file (vprotect SSH exec stream)',
  'nbd-tcp-reuse': 'NBD over TCP (netcat mode), reuseBuffers',
  'stream-openssh': 'one-way stream, OpenSSH (libvirt-ssh default), reuseBuffers',
  'stream-ssh2': 'one-way stream, ssh2 execStream, reuseBuffers',
};

// ---------------------------------------------------------------- child: one measured run
if (args[0] === '--child') {
  const [, mode, image, socket, tcpPort] = args;
  const t0 = process.hrtime.bigint();
  const bytes = await runMode(mode, image, socket, Number(tcpPort));
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const usage = process.resourceUsage();
  process.stdout.write(JSON.stringify({ mode, bytes, seconds, maxRssKiB: usage.maxRSS, userS: usage.userCPUTime / 1e6, sysS: usage.systemCPUTime / 1e6 }) + '\n');
  process.exit(0);
}

async function runMode(mode, image, socket, tcpPort) {
  const nbd = await import(dist('nbd/index.js'));
  const reuseBuffers = mode.endsWith('-reuse');
  const deep = mode.endsWith('-deep')
    ? { maxRequestBytes: 512 * 1024, maxBytesInFlight: 64 * 1024 * 1024 }
    : mode.endsWith('-paced')
      ? { maxRequestBytes: 256 * 1024, maxBytesInFlight: 1024 * 1024 }
      : {};
  const readAll = async (session) => {
    let n = 0;
    for await (const e of nbd.readFull(session, { reuseBuffers, ...deep })) n += e.length; // data and zero extents
    await session.close();
    return n;
  };
  if (mode.startsWith('nbd-unix')) {
    const session = await nbd.NbdSession.open(() => nbd.connectSocketChannel({ path: socket }), {
      exportName: '',
      metaContexts: nbd.FULL_READ_CONTEXTS,
      connections: mode.includes('2conn') ? 2 : 1,
    });
    return readAll(session);
  }
  if (mode.startsWith('stream-')) {
    const lab = JSON.parse(readFileSync(join(LAB, 'lab.json'), 'utf8'));
    const hv = { name: 'hv1', address: lab.ssh.host, port: lab.ssh.port, user: lab.ssh.user, keyFile: lab.ssh.keyFile, hostKey: { knownHostsFile: lab.ssh.knownHostsFile } };
    const { SshPool } = await import(dist('ssh.js'));
    const stream = await import(dist('stream/index.js'));
    const pool = new SshPool({ env: {} });
    const conn = await pool.connection(hv);
    const log = { debug() {}, info() {}, warn: (m, f) => process.stderr.write(`warn: ${m} ${JSON.stringify(f)}\n`), error() {} };
    try {
      const streams = new stream.DataStream(conn, { socket, exportName: '', carrier: mode.includes('ssh2') ? 'ssh2' : 'openssh', log });
      const session = await nbd.NbdSession.open(conn.nbdDialer({ path: socket }, { dataChannel: 'ssh2' }), { exportName: '', metaContexts: nbd.FULL_READ_CONTEXTS });
      const source = new stream.SwitchingSource(session, () => streams.use(session.info.size), { startAfterBytes: 0, firstBytesWhileStarting: 8 * 1024 * 1024, pacing: stream.STREAM_PACING });
      source.start();
      let n = 0;
      for await (const e of nbd.readFull(source, { reuseBuffers: true })) n += e.length;
      await source.finish();
      await source.close();
      await session.close();
      if (!source.switched) throw new Error(`${mode}: the stream did not start (${streams.fallbackReason})`);
      return n;
    } finally {
      await pool.close();
    }
  }
  if (mode.startsWith('nbd-tcp')) {
    const { tcpDialer } = await import(dist('tcp.js'));
    const session = await nbd.NbdSession.open(tcpDialer('127.0.0.1', tcpPort), { exportName: '', metaContexts: nbd.FULL_READ_CONTEXTS });
    return readAll(session);
  }
  const lab = JSON.parse(readFileSync(join(LAB, 'lab.json'), 'utf8'));
  const hv = { name: 'hv1', address: lab.ssh.host, port: lab.ssh.port, user: lab.ssh.user, keyFile: lab.ssh.keyFile, hostKey: { knownHostsFile: lab.ssh.knownHostsFile } };
  const { SshPool } = await import(dist('ssh.js'));
  const pool = new SshPool({ env: {}, dataChannel: mode.includes('openssh') ? 'openssh' : 'ssh2' });
  const conn = await pool.connection(hv);
  try {
    if (mode.startsWith('nbd-ssh')) {
      const session = await nbd.NbdSession.open(conn.nbdDialer({ path: socket }), { exportName: '', metaContexts: nbd.FULL_READ_CONTEXTS });
      const via = session.description.endsWith('(openssh)') ? 'openssh' : 'ssh2';
      if (!mode.includes(via)) throw new Error(`${mode} went through ${via}`);
      return await readAll(session);
    }
    if (mode === 'ssh2-cat') {
      const proc = await conn.execStream(['cat', image]);
      let n = 0;
      for await (const chunk of proc.stdout) n += chunk.length;
      await proc.done;
      return n;
    }
  } finally {
    await pool.close();
  }
  throw new Error(`unknown mode ${mode}`);
}

// ---------------------------------------------------------------- parent: set up, run, report
const sizeMiB = Number(opt('size-mib', '1024'));
const runs = Number(opt('runs', '3'));
const wanted = (opt('modes', Object.keys(MODES).join(',')) ?? '').split(',');

function have(cmd) {
  return spawnSync('sh', ['-c', `command -v ${cmd}`]).status === 0;
}

function labSsh() {
  try {
    const lab = JSON.parse(readFileSync(join(LAB, 'lab.json'), 'utf8'));
    if (!lab.ssh || !existsSync(join(LAB, 'state', 'hypervisor.ready'))) return undefined;
    return lab.ssh;
  } catch {
    return undefined;
  }
}

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

async function startQemuNbd(argv, socketOrPort) {
  const child = spawn('qemu-nbd', argv, { stdio: ['ignore', 'ignore', 'inherit'] });
  for (let i = 0; i < 100; i++) {
    if (typeof socketOrPort === 'string' ? existsSync(socketOrPort) : spawnSync('sh', ['-c', `ss -Htln | grep -q ':${socketOrPort} '`]).status === 0) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  return child;
}

function runChild(mode, image, socket, port) {
  const r = spawnSync(process.execPath, [...childNodeArgs(), fileURLToPath(import.meta.url), '--child', mode, image, socket, String(port)], { encoding: 'utf8', maxBuffer: 1 << 20 });
  if (r.status !== 0) throw new Error(`${mode} failed: ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').pop());
}

function timeShell(argv) {
  const t0 = process.hrtime.bigint();
  const r = spawnSync(argv[0], argv.slice(1), { stdio: ['ignore', 'ignore', 'pipe'] });
  if (r.status !== 0) throw new Error(`${argv.join(' ')} failed: ${r.stderr}`);
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

const loadAtStart = readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');

async function main() {
  if (!existsSync(dist('nbd/index.js'))) throw new Error('dist/ is missing: run npm run build first');
  const dir = mkdtempSync(join(tmpdir(), 'vp-bench-transport-'));
  const image = join(dir, 'random.raw');
  const socket = join(dir, 'nbd.sock');
  const port = 21700 + Math.floor(Math.random() * 90);
  const children = [];
  const results = [];
  try {
    execFileSync('sh', ['-c', `head -c ${sizeMiB}M /dev/urandom > '${image}'`]);
    execFileSync('cat', [image], { stdio: ['ignore', 'ignore', 'ignore'] }); // warm the page cache
    children.push(await startQemuNbd(['--read-only', '--persistent', '--shared=8', '-f', 'raw', `--socket=${socket}`, image], socket));
    children.push(await startQemuNbd(['--read-only', '--persistent', '--shared=8', '-f', 'raw', '-b', '127.0.0.1', '-p', String(port), image], port));
    const ssh = labSsh();
    const bytes = sizeMiB * 1024 * 1024;
    const samples = new Map();
    for (const mode of wanted) {
      if (!MODES[mode]) throw new Error(`unknown mode ${mode} (known: ${Object.keys(MODES).join(', ')})`);
      const needsLab = mode.startsWith('nbd-ssh') || mode.startsWith('stream-') || mode === 'openssh-cat' || mode === 'ssh2-cat';
      if (needsLab && !ssh) results.push({ mode, skipped: 'the lab is not running (npm run lab:up)' });
      else if (mode === 'nbdcopy-unix' && !have('nbdcopy')) results.push({ mode, skipped: 'nbdcopy not installed (libnbd-bin)' });
      else samples.set(mode, []);
    }
    for (let i = 0; i < runs; i++) {
      for (const [mode, list] of samples) {
        if (mode === 'openssh-cat') {
          const seconds = timeShell(['ssh', '-F', ssh.configFile, '-c', 'aes128-gcm@openssh.com', ssh.hostAlias ?? 'hv1', 'cat', image]);
          list.push({ bytes, seconds });
        } else if (mode === 'nbdcopy-unix') {
          list.push({ bytes, seconds: timeShell(['nbdcopy', `nbd+unix:///?socket=${socket}`, 'null:']) });
        } else {
          list.push(runChild(mode, image, socket, port));
        }
      }
    }
    for (const [mode, list] of samples) {
      for (const s of list) if (s.bytes !== bytes) throw new Error(`${mode} read ${s.bytes} bytes, expected ${bytes}`);
      const seconds = median(list.map((s) => s.seconds));
      const rss = list[0].maxRssKiB ? median(list.map((s) => s.maxRssKiB)) : undefined;
      const cpu = list[0].userS !== undefined ? median(list.map((s) => s.userS + s.sysS)) : undefined;
      results.push({
        mode,
        MiBps: Math.round(bytes / seconds / 1048576),
        samplesMiBps: list.map((s) => Math.round(bytes / s.seconds / 1048576)),
        seconds: +seconds.toFixed(3),
        peakRssMiB: rss ? Math.round(rss / 1024) : undefined,
        clientCpuS: cpu ? +cpu.toFixed(2) : undefined,
        runs,
      });
    }
  } finally {
    for (const c of children) c.kill('SIGTERM');
    rmSync(dir, { recursive: true, force: true });
  }
  const load = readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
  const loadBefore = loadAtStart;
  console.log(`\ntransport benchmark: full read of a ${sizeMiB} MiB random image, median of ${runs} (load average before ${loadBefore}, after ${load})`);
  const cat = results.find((r) => r.mode === 'openssh-cat' && !r.skipped);
  for (const r of results) {
    const label = MODES[r.mode].padEnd(62);
    if (r.skipped) console.log(`  ${label} skipped: ${r.skipped}`);
    else {
      const ratio = cat && (r.mode.startsWith('nbd-ssh') || r.mode.startsWith('stream-')) ? `  ${(r.MiBps / cat.MiBps).toFixed(2)}× ssh cat` : '';
      console.log(`  ${label} ${String(r.MiBps).padStart(5)} MiB/s  ${r.seconds.toFixed(2).padStart(6)} s${r.peakRssMiB ? `  peak RSS ${r.peakRssMiB} MiB` : ''}${r.clientCpuS !== undefined ? `  CPU ${r.clientCpuS} s` : ''}  [${r.samplesMiBps.join(' ')}]${ratio}`);
    }
  }
  if (args.includes('--json')) console.log(JSON.stringify({ bench: 'transport', sizeMiB, runs, loadBefore, load, results }));
}

await main();
