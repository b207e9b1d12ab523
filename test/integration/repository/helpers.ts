/**
 * A simulated source disk for repository tests: an in-memory image that tests write, overwrite,
 * zero and grow between points, with the changed ranges tracked the way a dirty bitmap would.
 * Small (MiBs); every point written from it is restored and compared byte for byte.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openDiskReader } from '../../../src/repository/chain-reader.js';
import type { Extent } from '../../../src/repository/extents.js';
import type { Repository } from '../../../src/repository/repository.js';
import { restoreToRawFile } from '../../../src/repository/restore.js';

/** Deterministic PRNG (mulberry32) so failures can be reproduced from the seed. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export class SimDisk {
  data: Buffer;
  /** Changed ranges since the last point, [start, end), sorted and merged. */
  private dirty: [number, number][] = [];
  /** Ranges the last change set to zero (reported as zero extents). */
  private zeroed: [number, number][] = [];

  constructor(
    size: number,
    readonly rand: () => number,
  ) {
    this.data = Buffer.alloc(size);
  }

  get size(): number {
    return this.data.length;
  }

  private mark(start: number, end: number, list: [number, number][]): void {
    list.push([start, end]);
    list.sort((a, b) => a[0] - b[0]);
    const merged: [number, number][] = [];
    for (const r of list) {
      const last = merged.at(-1);
      if (last && r[0] <= last[1]) last[1] = Math.max(last[1], r[1]);
      else merged.push([r[0], r[1]]);
    }
    list.splice(0, list.length, ...merged);
  }

  write(offset: number, length: number): void {
    length = Math.min(length, this.size - offset);
    for (let i = 0; i < length; i++) this.data[offset + i] = Math.floor(this.rand() * 256);
    this.mark(offset, offset + length, this.dirty);
  }

  zero(offset: number, length: number): void {
    length = Math.min(length, this.size - offset);
    this.data.fill(0, offset, offset + length);
    this.mark(offset, offset + length, this.dirty);
    this.mark(offset, offset + length, this.zeroed);
  }

  grow(newSize: number): void {
    const d = Buffer.alloc(newSize);
    this.data.copy(d);
    this.data = d;
  }

  /** A few random writes, overwrites and zeroings with odd sizes. */
  randomChanges(n: number): void {
    for (let i = 0; i < n; i++) {
      const off = Math.floor(this.rand() * this.size);
      const len = 1 + Math.floor(this.rand() * 300_000);
      if (this.rand() < 0.25) this.zero(off, len);
      else this.write(off, len);
    }
  }

  /** Extents of a full backup: data in pieces, with the all-zero stretches left out (= zeros). */
  fullExtents(piece = 1 << 20): Extent[] {
    const out: Extent[] = [];
    for (let off = 0; off < this.size; off += piece) {
      const end = Math.min(this.size, off + piece);
      const slice = this.data.subarray(off, end);
      if (slice.every((b) => b === 0)) {
        if (this.rand() < 0.5) out.push({ offset: off, length: end - off });
        continue;
      }
      out.push({ offset: off, length: end - off, data: Buffer.from(slice) });
    }
    this.reset();
    return out;
  }

  /** Extents of an incremental: exactly the changed ranges; zeroed ranges as zero extents. */
  changedExtents(): Extent[] {
    const out: Extent[] = [];
    for (const [s, e] of this.dirty) {
      if (s >= this.size) continue;
      const end = Math.min(e, this.size);
      const zero = this.zeroed.some(([zs, ze]) => zs <= s && ze >= end) && this.data.subarray(s, end).every((b) => b === 0);
      out.push(zero ? { offset: s, length: end - s } : { offset: s, length: end - s, data: Buffer.from(this.data.subarray(s, end)) });
    }
    this.reset();
    return out;
  }

  reset(): void {
    this.dirty = [];
    this.zeroed = [];
  }

  snapshot(): Buffer {
    return Buffer.from(this.data);
  }
}

export async function tempDir(prefix = 'vprotect-repo-'): Promise<{ path: string; cleanup: () => Promise<void> }> {
  const path = await mkdtemp(join(tmpdir(), prefix));
  return { path, cleanup: () => rm(path, { recursive: true, force: true }) };
}

export async function* asyncOf<T>(items: T[]): AsyncGenerator<T> {
  for (const i of items) yield i;
}

export async function readBytes(path: string): Promise<Buffer> {
  return readFile(path);
}

/** A disk of a point restored to a raw file in `workDir` (the product's own path), as bytes. */
export async function restoreBytes(repo: Repository, pointId: string, key: string, workDir: string): Promise<Buffer> {
  const reader = await openDiskReader(repo, await repo.findPoint(pointId), key);
  try {
    const out = join(workDir, `restore-${pointId}-${key}.raw`);
    await restoreToRawFile(reader, out, {});
    return await readFile(out);
  } finally {
    await reader.close();
  }
}
