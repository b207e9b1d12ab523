/**
 * The source image the strategy benchmarks share: `sizeMiB` of sparse raw holding random
 * (incompressible) data in every other 4 MiB, i.e. half of it, so that holes and data both count.
 * `bootable` puts an MBR signature in the first sector (qemu guests then try to boot it).
 */
import { execFileSync } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { closeSync, ftruncateSync, openSync, writeSync } from 'node:fs';

const MiB = 1 << 20;

export function writeHalfRandomImage(path, { sizeMiB = 2048, bootable = false } = {}) {
  const fd = openSync(path, 'w');
  try {
    ftruncateSync(fd, sizeMiB * MiB);
    const block = Buffer.alloc(4 * MiB);
    for (let off = 0; off < sizeMiB * MiB; off += 8 * MiB) {
      randomFillSync(block);
      if (bootable && off === 0) Buffer.concat([Buffer.from([0xfa, 0xf4]), Buffer.alloc(508), Buffer.from([0x55, 0xaa])]).copy(block);
      writeSync(fd, block, 0, block.length, off);
    }
  } finally {
    closeSync(fd);
  }
}

/**
 * Extra node arguments for the measured child processes, from VPROTECT_BENCH_NODE_ARGS (for
 * example `--cpu-prof --cpu-prof-dir=/tmp/prof`, which NODE_OPTIONS refuses).
 */
export function childNodeArgs() {
  return (process.env.VPROTECT_BENCH_NODE_ARGS ?? '').split(/\s+/).filter(Boolean);
}

/**
 * The baselines (rbd, ssh cat, virtnbdbackup) return with their files in the page cache;
 * vprotect reports a point only once its data is on disk. Adds `durableSeconds`: the baseline's
 * time plus the fsync of its files (`sync FILE…`), to compare like with like.
 */
export function withFsync(result, files) {
  const t0 = process.hrtime.bigint();
  execFileSync('sync', files);
  return { ...result, durableSeconds: result.seconds + Number(process.hrtime.bigint() - t0) / 1e9 };
}
