#!/usr/bin/env node
/**
 * ceph-rbd benchmark (not a test), on the lab's Ceph: a 2 GiB image holding 1 GiB of random data
 * (every other 4 MiB object), then 256 MiB of scattered 1 MiB writes.
 *   full:        vprotect full backup (rbd export-diff parsed on the fly → sparse raw + block map)
 *                vs `rbd export img@snap file` of the same snapshot
 *   incremental: vprotect incremental vs `rbd export-diff --from-snap s1 img@s2 file` (same data);
 *                stored bytes vs the export-diff file's size
 *   restore:     vprotect restore of the incremental point to a new image (one import-diff
 *                stream) vs `rbd import full.raw` + `snap create` + `rbd import-diff diff`
 * Each vprotect step runs in a child process so its peak RSS is its own; rbd's own peak RSS is
 * measured with /usr/bin/time. Ratios are baseline time / vprotect time (≥ 1 = vprotect faster).
 * vprotect's data path is timed two ways: from the start of its `rbd export(-diff)` to the durable
 * data file (like the baseline's whole command: rbd's start-up included), and from the first
 * extent request (rbd has been running since the snapshot step: its start-up is left out).
 *
 *   npm run build && node bench/ceph-rbd.mjs [--runs 4] [--inc-pairs 3] [--pool volumes]
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { childNodeArgs, withFsync, writeHalfRandomImage } from './_seed.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const LAB = process.env.VPROTECT_LAB ?? '/tmp/vprotect-lab';
const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : dflt;
};
const MiB = 1 << 20;

function labCeph() {
  const file = join(LAB, 'lab.json');
  if (!existsSync(file) || !existsSync(join(LAB, 'state', 'ceph.ready'))) throw new Error('the lab\'s Ceph is not running: start it with `npm run lab:up`');
  const c = JSON.parse(readFileSync(file, 'utf8')).ceph;
  return { conf: c.conf, keyring: c.keyring, user: c.user, adminKeyring: c.adminKeyring };
}

// ---------------------------------------------------------------- child: one measured vprotect step
if (args[0] === '--child') {
  const [, step, repoDir, pool, image, outImage] = args;
  const ceph = labCeph();
  const { backupVm } = await import(join(root, 'dist/src/engine/backup-vm.js'));
  const { openRepository } = await import(join(root, 'dist/src/repository/repository.js'));
  const mod = await import(join(root, 'dist/strategies/ceph-rbd/index.js'));
  const inventory = { file: '/dev/null', version: 1, clouds: {}, hypervisors: [], cephClusters: { lab: { conf: { path: ceph.conf }, keyring: { path: ceph.keyring }, user: ceph.user, pools: [pool] } }, destinations: {}, proxies: [], policies: [] };
  const log = { debug() {}, info() {}, warn: (m) => process.stderr.write(`warn: ${m}\n`), error: (m) => process.stderr.write(`error: ${m}\n`) };
  // The data phase: from the first extent request (first progress event) to the durable data file.
  let readStart;
  let dataEnd;
  const events = (e) => {
    if (e.type === 'progress' && readStart === undefined) readStart = process.hrtime.bigint();
  };
  let dataEndMs;
  const onStep = (s) => {
    if (s.startsWith('data:')) {
      dataEnd = process.hrtime.bigint();
      dataEndMs = Date.now();
    }
  };
  const ctx = { log, events, signal: new AbortController().signal, dryRun: false, inventory, policy: undefined, options: {}, env: {} };
  const repo = await openRepository(repoDir, { create: true });
  const t0 = process.hrtime.bigint();
  let out;
  if (step === 'backup') {
    const r = await backupVm({ repo, strategy: mod.default, target: { vmId: 'bench', vmName: 'bench', disks: [{ key: 'vda', kind: 'rbd', pool, image }] }, level: 'auto', ctx, command: 'bench', onStep });
    // The export's start, written by the rbd shim on PATH (see rbdShim): vprotect starts it during
    // the snapshot step, before the first extent request, so the request alone would leave rbd's
    // own start-up out of vprotect's time while the baseline's time includes it.
    const spawnedNs = readFileSync(process.env.VPROTECT_BENCH_SPAWNS, 'utf8').split('\n').filter(Boolean).map(BigInt)[0];
    out = { pointId: r.pointId, level: r.level, storedBytes: r.disks[0].storedBytes, dataBytes: r.disks[0].dataBytes, dataSeconds: Number(dataEnd - readStart) / 1e9, exportSeconds: Number(BigInt(dataEndMs) * 1_000_000n - spawnedNs) / 1e9 };
  } else {
    const last = await repo.lastCompletePoint('bench');
    await mod.restoreToRbd({ repo, point: last, disk: 'vda', clusterName: 'lab', cluster: inventory.cephClusters.lab, pool, image: outImage });
    out = { pointId: last.pointId };
  }
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const u = process.resourceUsage();
  // CPU of the rbd commands this process ran and waited for (cutime + cstime, in clock ticks).
  const stat = readFileSync('/proc/self/stat', 'utf8').split(') ')[1].split(' ');
  const childrenS = (Number(stat[13]) + Number(stat[14])) / 100;
  process.stdout.write(JSON.stringify({ ...out, seconds, maxRssKiB: u.maxRSS, userS: u.userCPUTime / 1e6, sysS: u.systemCPUTime / 1e6, minorFaults: u.minorPageFault, childrenS }) + '\n');
  process.exit(0);
}

// ---------------------------------------------------------------- parent
const ceph = labCeph();
const pool = opt('pool', 'volumes');
const runs = Number(opt('runs', '4'));
const incPairs = Number(opt('inc-pairs', '3'));
let coldReads = false;
const rbdArgs = ['--id', ceph.user, '--conf', ceph.conf, '--keyring', ceph.keyring];
const rbd = (...a) => execFileSync('rbd', [...rbdArgs, ...a], { stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 64 * MiB }).toString();
/** Runs rbd under /usr/bin/time: seconds, peak RSS (KiB) and CPU seconds of rbd itself. */
function timedRbd(...a) {
  const t0 = process.hrtime.bigint();
  const r = spawnSync('/usr/bin/time', ['-f', '%M %U %S', 'rbd', ...rbdArgs, ...a], { encoding: 'utf8' });
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  if (r.status !== 0) throw new Error(`rbd ${a.join(' ')} failed: ${r.stderr}`);
  const [rss, user, sys] = r.stderr.trim().split('\n').at(-1).split(' ').map(Number);
  return { seconds, maxRssKiB: rss, cpuS: user + sys };
}
/**
 * An `rbd` first on the children's PATH that notes when an export or export-diff starts (ns since
 * the epoch, one line each) in $VPROTECT_BENCH_SPAWNS, then runs the real one.
 */
function rbdShim(dir) {
  const real = execFileSync('sh', ['-c', 'command -v rbd'], { encoding: 'utf8' }).trim();
  const file = join(dir, 'rbd');
  writeFileSync(file, `#!/bin/sh\ncase "$*" in *export*) date +%s%N >> "$VPROTECT_BENCH_SPAWNS";; esac\nexec ${real} "$@"\n`, { mode: 0o755 });
  return dir;
}
/**
 * Empties the OSDs' caches (onodes, buffers), so that every measured read of a snapshot starts
 * cold. Without it, whoever read a snapshot first warmed the OSD for the second (cold reads took
 * ~1.4 s here, warm ~1.0 s for the same diff), and alternating the order did not balance that out
 * for an odd number of runs: the median then fell on the side that read first more often.
 * Returns false when the admin key is not at hand; the bench then alternates the order only.
 */
function dropOsdCaches() {
  if (!ceph.adminKeyring) return false;
  execFileSync('ceph', ['--conf', ceph.conf, '--name', 'client.admin', '--keyring', ceph.adminKeyring, 'tell', 'osd.*', 'cache', 'drop'], { stdio: 'ignore' });
  return true;
}
function child(...a) {
  if (a[0] === 'backup') coldReads = dropOsdCaches();
  const spawns = join(work, 'spawns');
  writeFileSync(spawns, '');
  const env = { ...process.env, PATH: `${shimDir}:${process.env.PATH}`, VPROTECT_BENCH_SPAWNS: spawns };
  const r = spawnSync(process.execPath, [...childNodeArgs(), fileURLToPath(import.meta.url), '--child', ...a], { encoding: 'utf8', env });
  if (r.status !== 0) throw new Error(`child ${a[0]} failed: ${r.stderr}`);
  if (r.stderr.trim()) process.stderr.write(r.stderr);
  return JSON.parse(r.stdout.trim().split('\n').at(-1));
}
const removeImage = (name) => {
  try {
    rbd('snap', 'purge', '--no-progress', `${pool}/${name}`);
  } catch {}
  try {
    rbd('rm', '--no-progress', `${pool}/${name}`);
  } catch {}
};
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const gbps = (bytes, s) => `${(bytes / s / 1e9).toFixed(2)} GB/s`;

const work = mkdtempSync(join(tmpdir(), 'vprotect-bench-rbd-'));
const shimDir = rbdShim(mkdtempSync(join(work, 'shim-')));
const tag = randomBytes(3).toString('hex');
const src = `vpb-src-${tag}`;
const made = [src];
const results = { full: [], fullBase: [], inc: [], incBase: [], restore: [], restoreBase: [] };
let stored = { full: 0, inc: 0, incDiffFile: 0 };
try {
  // 2 GiB image, 1 GiB of random data: every other 4 MiB object.
  const seed = join(work, 'seed.raw');
  writeHalfRandomImage(seed);
  process.stdout.write('importing the 2 GiB / 1 GiB-data source image…\n');
  rbd('import', '--no-progress', seed, `${pool}/${src}`);
  rmSync(seed);

  for (let run = 0; run < runs; run++) {
    const repo = join(work, `repo-${run}`);
    // Who reads a snapshot first would warm the OSD's caches for the second: the caches are
    // dropped before each measured read (dropOsdCaches), and the order alternates as well.
    const baselineFirst = run % 2 === 1;
    // ---- full (the baseline reads a user snapshot of the same content as vprotect's)
    rbd('snap', 'create', `${pool}/${src}@bench-s1`);
    const exportFile = join(work, 'export.raw');
    const fullBaseline = () => {
      coldReads = dropOsdCaches();
      results.fullBase.push(withFsync(timedRbd('export', '--no-progress', `${pool}/${src}@bench-s1`, exportFile), [exportFile]));
      rmSync(exportFile);
    };
    if (baselineFirst) fullBaseline();
    const full = child('backup', repo, pool, src);
    if (full.level !== 'full') throw new Error('the first backup was not a full');
    results.full.push(full);
    stored.full = full.storedBytes;
    if (!baselineFirst) fullBaseline();
    // bench-s1 stays as the baseline's base: vprotect's own snapshot of the full is rotated away
    // by the incremental (same content: nothing was written between the two).

    // ---- incrementals: each after 256 MiB of 1 MiB writes, scattered (qemu-io on rbd:). Several
    // per run (--inc-pairs): a single pair varies by ±25 % here, so one pair per run said little.
    const incs = [];
    let base = 'bench-s1';
    for (let k = 0; k < incPairs; k++) {
      const cmds = [];
      for (let i = 0; i < 256; i++) cmds.push('-c', `write -P 0x${(0x10 + ((i + k) % 200)).toString(16)} ${((i * 7919 + k * 613) % 2048) * MiB} 1M`);
      execFileSync('qemu-io', ['-f', 'raw', `rbd:${pool}/${src}:id=${ceph.user}:conf=${ceph.conf}:keyring=${ceph.keyring}`, ...cmds], { stdio: 'ignore' });
      // Baseline on a user snapshot of the same content (the vprotect run takes its own right after).
      const next = `bench-s${k + 2}`;
      rbd('snap', 'create', `${pool}/${src}@${next}`);
      const diffFile = join(work, 'inc.diff');
      const incBaseline = () => {
        coldReads = dropOsdCaches();
        results.incBase.push(withFsync(timedRbd('export-diff', '--no-progress', '--from-snap', base, `${pool}/${src}@${next}`, diffFile), [diffFile]));
        stored.incDiffFile = statSync(diffFile).size;
        rmSync(diffFile);
      };
      const firstOfPair = (run + k) % 2 === 1;
      if (firstOfPair) incBaseline();
      const inc = child('backup', repo, pool, src);
      if (inc.level !== 'incremental') throw new Error('the backup after the full was not an incremental');
      results.inc.push(inc);
      incs.push(inc);
      if (!firstOfPair) incBaseline();
      stored.inc = inc.storedBytes;
      rbd('snap', 'rm', '--no-progress', `${pool}/${src}@${base}`);
      base = next;
    }
    rbd('snap', 'rm', '--no-progress', `${pool}/${src}@${base}`);

    // ---- restore: vprotect (one import-diff stream) vs stock import + snap create + import-diff
    const mine = `vpb-restore-${tag}-${run}`;
    made.push(mine);
    results.restore.push(child('restore', repo, pool, src, mine));
    const stock = `vpb-stock-${tag}-${run}`;
    made.push(stock);
    const fullPoint = readdirPoint(repo, full.pointId);
    const t0 = process.hrtime.bigint();
    const a = timedRbd('import', '--no-progress', join(fullPoint, 'disks/vda.raw'), `${pool}/${stock}`);
    rbd('snap', 'create', `${pool}/${stock}@${full.pointId}`);
    let maxRssKiB = a.maxRssKiB;
    for (const inc of incs) maxRssKiB = Math.max(maxRssKiB, timedRbd('import-diff', '--no-progress', join(readdirPoint(repo, inc.pointId), 'disks/vda.rbdiff'), `${pool}/${stock}`).maxRssKiB);
    results.restoreBase.push({ seconds: Number(process.hrtime.bigint() - t0) / 1e9, maxRssKiB });
    // Bytes are compared by the tests (test/integration/ceph-rbd); here only time and memory.
    removeImage(mine);
    removeImage(stock);
    rmSync(repo, { recursive: true, force: true });
    // Next run starts from a fresh repository: drop the vprotect snapshot so it is a full again.
    for (const s of JSON.parse(rbd('snap', 'ls', '--format', 'json', `${pool}/${src}`))) rbd('snap', 'rm', '--no-progress', `${pool}/${src}@${s.name}`);
  }

  const m = (k, f = 'seconds') => median(results[k].map((r) => r[f]));
  // Ratios of the same run (baseline and vprotect read the same snapshot minutes apart): the
  // machine's load moves both, so per-run ratios vary less than ratios of medians.
  const perRun = (mine, f, base, baseField = 'seconds') => results[mine].map((r, i) => results[base][i][baseField] / r[f]);
  const geomean = (xs) => Math.exp(xs.reduce((a, x) => a + Math.log(x), 0) / xs.length);
  const fmtRuns = (xs) => `${xs.map((x) => x.toFixed(2)).join(', ')}; median ${median(xs).toFixed(2)}×, geometric mean ${geomean(xs).toFixed(2)}×`;
  const dataFull = 1024 * MiB;
  const dataInc = stored.incDiffFile;
  const rows = [
    ['full backup, export start → durable', m('full', 'exportSeconds'), m('fullBase'), 'rbd export @snap → file', dataFull],
    ['  same, baseline fsync\'d', m('full', 'exportSeconds'), m('fullBase', 'durableSeconds'), 'rbd export → file + sync FILE', dataFull],
    ['full backup, data phase', m('full', 'dataSeconds'), m('fullBase'), 'rbd export @snap → file', dataFull],
    ['full backup, whole run', m('full'), m('fullBase'), 'rbd export @snap → file', dataFull],
    ['incremental, export start → durable', m('inc', 'exportSeconds'), m('incBase'), 'rbd export-diff --from-snap → file', dataInc],
    ['  same, baseline fsync\'d', m('inc', 'exportSeconds'), m('incBase', 'durableSeconds'), 'rbd export-diff → file + sync FILE', dataInc],
    ['incremental, data phase', m('inc', 'dataSeconds'), m('incBase'), 'rbd export-diff --from-snap → file', dataInc],
    ['incremental, whole run', m('inc'), m('incBase'), 'rbd export-diff --from-snap → file', dataInc],
    [`restore (full + ${incPairs} inc) to new image`, m('restore'), m('restoreBase'), 'rbd import + snap create + import-diff ×n', dataFull + incPairs * dataInc],
  ];
  process.stdout.write(`\nceph-rbd on ${pool}, 2 GiB image / 1 GiB data, incremental 256 × 1 MiB; median of ${runs} run(s), ${incPairs} incremental pair(s) each; load average ${readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')}\n`);
  process.stdout.write(coldReads ? 'every measured step starts with the OSD caches dropped (ceph tell osd.* cache drop)\n' : 'no admin key: OSD caches were not dropped, so the order of each pair alternates (an odd number of runs favours one side)\n');
  process.stdout.write('(whole run = plan + snapshot + data + manifest + rotation: an incremental runs 4 rbd commands one after the other, a first full 3)\n');
  for (const [what, mine, base, baseWhat, bytes] of rows) {
    process.stdout.write(`${what.padEnd(36)} vprotect ${mine.toFixed(2)} s (${gbps(bytes, mine)})  vs ${baseWhat} ${base.toFixed(2)} s (${gbps(bytes, base)})  ratio ${(base / mine).toFixed(2)}×\n`);
  }
  process.stdout.write(
    `ratios per run (baseline / vprotect): full export→durable ${fmtRuns(perRun('full', 'exportSeconds', 'fullBase'))}; full data ${fmtRuns(perRun('full', 'dataSeconds', 'fullBase'))}; full whole ${fmtRuns(perRun('full', 'seconds', 'fullBase'))}\n` +
      `  incremental export→durable ${fmtRuns(perRun('inc', 'exportSeconds', 'incBase'))}; same vs the fsync'd baseline ${fmtRuns(perRun('inc', 'exportSeconds', 'incBase', 'durableSeconds'))}; incremental data ${fmtRuns(perRun('inc', 'dataSeconds', 'incBase'))}; incremental whole ${fmtRuns(perRun('inc', 'seconds', 'incBase'))}; restore ${fmtRuns(perRun('restore', 'seconds', 'restoreBase'))}\n`,
  );
  const cpu = (k) => median(results[k].map((r) => r.userS + r.sysS + r.childrenS));
  process.stdout.write(
    `cpu seconds (median), vprotect = its process + every rbd command it ran (an incremental runs 6: info, snap ls ×2, snap create, export-diff, snap rm): vprotect full ${cpu('full').toFixed(2)} vs rbd export ${m('fullBase', 'cpuS').toFixed(2)}; vprotect incremental ${cpu('inc').toFixed(2)} vs rbd export-diff ${m('incBase', 'cpuS').toFixed(2)}\n`,
  );
  process.stdout.write(`stored bytes: incremental ${stored.inc} vs export-diff ${stored.incDiffFile} = ${(stored.inc / stored.incDiffFile).toFixed(4)}×; full ${stored.full} data bytes\n`);
  process.stdout.write(
    `peak RSS (MiB): vprotect full ${(m('full', 'maxRssKiB') / 1024).toFixed(0)}, incremental ${(m('inc', 'maxRssKiB') / 1024).toFixed(0)}, restore ${(m('restore', 'maxRssKiB') / 1024).toFixed(0)}; ` +
      `rbd export ${(m('fullBase', 'maxRssKiB') / 1024).toFixed(0)}, rbd export-diff ${(m('incBase', 'maxRssKiB') / 1024).toFixed(0)}, rbd import/import-diff ${(m('restoreBase', 'maxRssKiB') / 1024).toFixed(0)}\n`,
  );
  process.stdout.write(`cpu (s): vprotect full user ${m('full', 'userS').toFixed(2)} sys ${m('full', 'sysS').toFixed(2)}; incremental user ${m('inc', 'userS').toFixed(2)} sys ${m('inc', 'sysS').toFixed(2)}; minor page faults (10–20 µs each on the lab VM): full ${m('full', 'minorFaults')}, incremental ${m('inc', 'minorFaults')}\n`);
  process.stdout.write(`${JSON.stringify({ bench: 'ceph-rbd', results, stored })}\n`);
} finally {
  for (const name of made) removeImage(name);
  rmSync(work, { recursive: true, force: true });
}

function readdirPoint(repo, pointId) {
  const vm = join(repo, 'vms', 'bench', 'chains');
  for (const chain of execFileSync('ls', [vm]).toString().trim().split('\n')) {
    const p = join(vm, chain, pointId);
    if (existsSync(p)) return p;
  }
  throw new Error(`point ${pointId} not found`);
}
