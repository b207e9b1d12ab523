#!/usr/bin/env node
/**
 * Repository benchmark (not a test): write a full point and restore it, against
 * `cp --sparse=always` (+ fsync) of the same image as the yardstick.
 *
 * The image: --size-mib (1024) logical, about half of it random data in runs of 64 KiB–8 MiB,
 * the rest holes. vprotect's writer gets the whole image as data extents (the worst case: it has
 * to find the holes itself) in 4 MiB pieces, like a strategy reading a raw device with
 * reuseBuffers (two buffers, the next piece read while the writer handles this one). Each step
 * runs in its own child process so its peak RSS is its own. Medians of --runs (3). The load
 * average before and after is printed: on the shared 2-core lab VM it decides the figures.
 *
 *   npm run build && node bench/repository.mjs [--size-mib 1024] [--runs 3] [--dir /var/tmp]
 *
 * What made it fast (docs/ARCHITECTURE.md, "Performance"): on this VM a fresh multi-MiB buffer
 * faults in every 4 KiB page on first touch (117–257 MiB/s against 2–4 GiB/s reused); the source
 * reader and the chain reader allocated a 4 MiB buffer per block. Before: write 13.5 s (0.10×
 * cp), restore 11.5 s (0.12×), 107 MiB RSS. Now buffers are pooled, the sha256 of each block runs
 * on a worker thread while the main thread handles the previous/next block, a full image is
 * copied once (block buffer → file), zero detection looks at a granule's first bytes before a
 * memcmp, and the data is datasynced in the background every 64 MiB. 2026-11-25, 1 GiB with
 * 512 MiB data, median of 3 at load ~6 on 2 cores: cp 0.52 s, write 1.01 s (0.52×), restore
 * 1.51 s (0.35×), peak RSS 93/99 MiB, CPU 1.6/2.1 s against cp's 0.2 s (the sha256 of every
 * block is most of the gap); at load 11 write 0.29×, restore 0.24×.
 * Then data files went around the page cache (O_DIRECT, src/repository/direct-io.ts). Same
 * minutes, load ~2, one run each, buffered vs direct alternating: write 2.08–2.35 s (CPU
 * 2.8–3.2 s) vs 1.43–1.58 s (CPU 1.6 s); restore 2.03–2.25 s (CPU 2.5 s) vs 1.52–1.60 s (CPU
 * 1.5 s); cp 0.50–0.54 s.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, mkdtempSync, openSync, rmSync, writeSync, ftruncateSync, statSync } from 'node:fs';
import { availableParallelism, loadavg } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { childNodeArgs } from './_seed.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const dist = (p) => pathToFileURL(join(root, 'dist', 'src', 'repository', p)).href;
const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : dflt;
};

// ---------------------------------------------------------------- child: one measured step
if (args[0] === '--child') {
  const [, step, image, repoDir, out] = args;
  const { openRepository } = await import(dist('repository.js'));
  const t0 = process.hrtime.bigint();
  let bytes = 0;
  if (step === 'write') {
    const { open } = await import('node:fs/promises');
    const repo = await openRepository(repoDir, { create: true });
    const fh = await open(image, 'r');
    const size = (await fh.stat()).size;
    // Like a strategy's reader with reuseBuffers: two buffers, the next piece read while the
    // writer works on this one; a piece's data is valid until the writer asks for the next.
    async function* extents() {
      const piece = 4 << 20;
      const buffers = [Buffer.allocUnsafeSlow(piece), Buffer.allocUnsafeSlow(piece)];
      const readPiece = (off, buf) => fh.read(buf, 0, Math.min(piece, size - off), off);
      let next = size > 0 ? readPiece(0, buffers[0]) : undefined;
      for (let off = 0, i = 0; off < size; off += piece, i ^= 1) {
        const { bytesRead } = await next;
        next = off + piece < size ? readPiece(off + piece, buffers[i ^ 1]) : undefined;
        yield { offset: off, length: bytesRead, data: buffers[i].subarray(0, bytesRead) };
      }
    }
    const w = await repo.beginPoint({ vmId: 'bench', level: 'full' });
    await w.writeDisk({ key: 'vda', size }, extents());
    await w.commit();
    await fh.close();
    bytes = size;
  } else if (step === 'restore') {
    const { openDiskReader } = await import(dist('chain-reader.js'));
    const { restoreToRawFile } = await import(dist('restore.js'));
    const repo = await openRepository(repoDir);
    const last = await repo.lastCompletePoint('bench');
    const reader = await openDiskReader(repo, last, 'vda');
    await restoreToRawFile(reader, out, {});
    await reader.close();
    bytes = reader.size;
  } else if (step === 'cp') {
    execFileSync('cp', ['--sparse=always', image, out]);
    execFileSync('sync', [out]); // fsync, as the repository does
    bytes = statSync(image).size;
  }
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const usage = process.resourceUsage();
  process.stdout.write(JSON.stringify({ step, bytes, seconds, maxRssKiB: usage.maxRSS, userS: usage.userCPUTime / 1e6, sysS: usage.systemCPUTime / 1e6 }) + '\n');
  process.exit(0);
}

// ---------------------------------------------------------------- parent
const sizeMiB = Number(opt('size-mib', '1024'));
const runs = Number(opt('runs', '3'));
const work = mkdtempSync(join(opt('dir', '/var/tmp'), 'vprotect-bench-repo-'));
const image = join(work, 'source.raw');
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

try {
  // Source image: random data runs and holes, deterministic layout.
  let seed = 12345;
  const rand = () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32);
  const size = sizeMiB << 20;
  const fd = openSync(image, 'w');
  ftruncateSync(fd, size);
  let dataBytes = 0;
  for (let off = 0; off < size; ) {
    const run = Math.min(size - off, (64 << 10) * (1 + Math.floor(rand() * 128)));
    if (rand() < 0.5) {
      for (let at = 0; at < run; at += 4 << 20) writeSync(fd, randomBytes(Math.min(4 << 20, run - at)), 0, Math.min(4 << 20, run - at), off + at);
      dataBytes += run;
    }
    off += run;
  }
  closeSync(fd);
  execFileSync('sync', [image]);
  console.log(`image: ${sizeMiB} MiB logical, ${(dataBytes / 2 ** 20).toFixed(0)} MiB data, ${runs} runs each, in ${work}`);
  const loadBefore = loadavg().map((l) => +l.toFixed(2));

  const step = (name, i) => {
    const repoDir = join(work, `repo-${i}`);
    const out = join(work, `out-${name}-${i}.raw`);
    if (name === 'restore') rmSync(out, { force: true });
    const r = spawnSync(process.execPath, [...childNodeArgs(), fileURLToPath(import.meta.url), '--child', name, image, repoDir, out], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`${name} failed: ${r.stderr}`);
    rmSync(out, { force: true });
    return JSON.parse(r.stdout.trim().split('\n').at(-1));
  };
  const results = { cp: [], write: [], restore: [] };
  for (let i = 0; i < runs; i++) {
    results.cp.push(step('cp', i));
    results.write.push(step('write', i));
    results.restore.push(step('restore', i));
    rmSync(join(work, `repo-${i}`), { recursive: true, force: true });
  }
  const cpS = median(results.cp.map((r) => r.seconds));
  const row = (name) => {
    const s = median(results[name].map((r) => r.seconds));
    const rss = Math.max(...results[name].map((r) => r.maxRssKiB)) / 1024;
    const cpu = median(results[name].map((r) => r.userS + r.sysS));
    return { step: name, seconds: +s.toFixed(3), logicalGBps: +(size / s / 1e9).toFixed(2), dataGBps: +(dataBytes / s / 1e9).toFixed(2), vsCp: +(cpS / s).toFixed(2), peakRssMiB: +rss.toFixed(0), cpuS: +cpu.toFixed(2) };
  };
  const table = ['cp', 'write', 'restore'].map(row);
  console.table(table);
  console.log('vsCp = speed relative to `cp --sparse=always` + fsync of the same image (1.00 = as fast; higher is faster)');
  const load = { before: loadBefore, after: loadavg().map((l) => +l.toFixed(2)) };
  console.log(`load average (1, 5, 15 min) before ${load.before.join(' ')}, after ${load.after.join(' ')} on ${availableParallelism()} cores`);
  console.log(JSON.stringify({ bench: 'repository', sizeMiB, dataMiB: Math.round(dataBytes / 2 ** 20), runs, load, results: table }));
} finally {
  rmSync(work, { recursive: true, force: true });
}
