/**
 * Recycled buffers (src/util/buffer-pool.ts contract: an extent's data is valid until the
 * consumer asks for the next one). Sources here scribble over their buffer as soon as the next
 * extent is asked for, so any consumer that keeps a reference past that point stores or returns
 * garbage, and the byte comparison after restore fails.
 */
import { readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { DataCorruptError } from '../../../src/errors.js';
import { openDiskReader } from '../../../src/repository/chain-reader.js';
import { sha256Off } from '../../../src/repository/hash-worker.js';
import type { Extent } from '../../../src/repository/extents.js';
import { openRepository, type Repository } from '../../../src/repository/repository.js';
import { restoreToRawFile } from '../../../src/repository/restore.js';
import { rebuildBlockMaps } from '../../../src/repository/verify.js';
import { createHash } from 'node:crypto';
import { rng, SimDisk, tempDir, restoreBytes } from './helpers.js';

let dir: { path: string; cleanup: () => Promise<void> };
beforeEach(async () => {
  dir = await tempDir();
});
afterEach(async () => {
  await dir.cleanup();
});

/** Yields each extent's bytes from one shared buffer, overwritten with 0xA5 once the consumer asks for more. */
async function* scribbling(extents: Extent[]): AsyncGenerator<Extent> {
  const shared = Buffer.alloc(Math.max(1, ...extents.map((e) => e.data?.length ?? 0)));
  for (const e of extents) {
    if (!e.data) {
      yield e;
      continue;
    }
    e.data.copy(shared);
    yield { offset: e.offset, length: e.length, data: shared.subarray(0, e.length) };
    shared.fill(0xa5);
  }
}

/** A chain whose every point was written from a scribbling source; the expected bytes of each point. */
async function scribbledChain(seed: number, blockSize: number, size: number, piece: number): Promise<{ repo: Repository; expected: Map<string, Buffer> }> {
  const rand = rng(seed);
  const repo = await openRepository(join(dir.path, 'repo'), { create: true, blockSize });
  const disk = new SimDisk(size, rand);
  disk.randomChanges(10);
  const expected = new Map<string, Buffer>();
  let parent: string | undefined;
  for (let n = 0; n < 5; n++) {
    if (n > 0) disk.randomChanges(2 + Math.floor(rand() * 5));
    const level = n === 0 ? 'full' : 'incremental';
    const w = await repo.beginPoint({ vmId: 'vm-1', level, parentPointId: parent });
    await w.writeDisk({ key: 'vda', size: disk.size }, scribbling(level === 'full' ? disk.fullExtents(piece) : disk.changedExtents()));
    parent = (await w.commit()).pointId;
    expected.set(parent, disk.snapshot());
  }
  return { repo, expected };
}

describe('recycled buffers cannot corrupt data', () => {
  it('full and incremental points written from a source that reuses one buffer restore bit-identical', async () => {
    const { repo, expected } = await scribbledChain(7, 65536, 3 * 1024 * 1024 + 4321, 192 * 1024);
    for (const [pointId, bytes] of expected) expect((await restoreBytes(repo, pointId, 'vda', dir.path)).equals(bytes), pointId).toBe(true);
  });

  it('extents larger than the write buffer (written directly, not gathered) are not torn by reuse', async () => {
    const rand = rng(11);
    const repo = await openRepository(join(dir.path, 'repo'), { create: true, blockSize: 1 << 20 });
    const disk = new SimDisk(20 << 20, rand);
    disk.write(1 << 20, 10 << 20); // one 10 MiB data run: more than the 8 MiB coalescing buffer
    const w = await repo.beginPoint({ vmId: 'vm-1', level: 'full' });
    await w.writeDisk({ key: 'vda', size: disk.size }, scribbling(disk.fullExtents(12 << 20)));
    const full = (await w.commit()).pointId;
    expect((await restoreBytes(repo, full, 'vda', dir.path)).equals(disk.snapshot())).toBe(true);
  });

  it('the chain reader with reuseBuffers: every extent is right when used at once, and its buffers are really recycled', async () => {
    const { repo, expected } = await scribbledChain(3, 65536, 2 * 1024 * 1024 + 999, 128 * 1024);
    const [pointId, bytes] = [...expected].at(-1)!;
    const reader = await openDiskReader(repo, await repo.findPoint(pointId), 'vda');
    try {
      const out = Buffer.alloc(reader.size);
      const held: { e: Extent; copy: Buffer }[] = [];
      for await (const e of reader.extents({ reuseBuffers: true })) {
        if (!e.data) continue;
        e.data.copy(out, e.offset);
        held.push({ e, copy: Buffer.from(e.data) });
      }
      expect(out.equals(bytes)).toBe(true);
      // Views kept past their turn changed: the reuse this file guards against does happen.
      expect(held.some(({ e, copy }) => !e.data!.equals(copy))).toBe(true);

      // Without reuseBuffers every extent keeps its bytes.
      const kept: { e: Extent; copy: Buffer }[] = [];
      for await (const e of reader.extents()) if (e.data) kept.push({ e, copy: Buffer.from(e.data) });
      expect(kept.every(({ e, copy }) => e.data!.equals(copy))).toBe(true);
    } finally {
      await reader.close();
    }
  });

  it('random reads (read) and block map rebuilds through recycled buffers match', async () => {
    const { repo, expected } = await scribbledChain(5, 65536, 1024 * 1024 + 17, 64 * 1024);
    const [pointId, bytes] = [...expected].at(-1)!;
    const reader = await openDiskReader(repo, await repo.findPoint(pointId), 'vda');
    try {
      const rand = rng(99);
      for (let i = 0; i < 20; i++) {
        const off = Math.floor(rand() * reader.size);
        const len = Math.min(reader.size - off, 1 + Math.floor(rand() * 300_000));
        expect((await reader.read(off, len)).equals(bytes.subarray(off, off + len)), `${off}+${len}`).toBe(true);
      }
    } finally {
      await reader.close();
    }
    const full = [...expected.keys()][0]!;
    const { problems } = await rebuildBlockMaps(repo, await repo.findPoint(full), {});
    expect(problems).toEqual([]);
  });

  it('a flipped byte is caught whether its block is read first, read ahead or last (the worker-hashed path)', async () => {
    const rand = rng(21);
    const blockSize = 65536;
    const disk = new SimDisk(16 * blockSize + 100, rand);
    disk.write(0, disk.size); // every block has data, so every block is read and checked
    const repo = await openRepository(join(dir.path, 'repo'), { create: true, blockSize });
    const w = await repo.beginPoint({ vmId: 'vm-1', level: 'full' });
    await w.writeDisk({ key: 'vda', size: disk.size }, scribbling(disk.fullExtents(100_000)));
    const point = await repo.findPoint((await w.commit()).pointId);
    const raw = join(point.dir, 'disks', 'vda.raw');
    const clean = await readFile(raw);
    for (const block of [0, 1, 7, 16]) {
      const bad = Buffer.from(clean);
      bad[block * blockSize + 50]! ^= 0x10;
      await writeFile(raw, bad);
      const reader = await openDiskReader(repo, point, 'vda');
      const out = join(dir.path, `bad-${block}.raw`);
      try {
        await expect(restoreToRawFile(reader, out, {})).rejects.toThrow(DataCorruptError);
        await expect(restoreToRawFile(reader, out, {})).rejects.toThrow(new RegExp(`block ${block} `));
      } finally {
        await reader.close();
      }
      await expect(stat(out)).rejects.toThrow(/ENOENT/); // no plausible file left behind
    }
    await writeFile(raw, clean);
    expect((await restoreBytes(repo, point.pointId, 'vda', dir.path)).equals(disk.snapshot())).toBe(true);
  });

  it('sha256 on the worker (shared memory) and on this thread agree', async () => {
    const plain = Buffer.from('vprotect '.repeat(100_000));
    const sharedBuf = Buffer.from(new SharedArrayBuffer(plain.length + 10)).subarray(5, 5 + plain.length);
    plain.copy(sharedBuf);
    const want = createHash('sha256').update(plain).digest();
    expect((await sha256Off(sharedBuf)).equals(want)).toBe(true);
    expect((await sha256Off(plain)).equals(want)).toBe(true);
    const many = await Promise.all([0, 1, 2, 3].map((i) => sha256Off(sharedBuf.subarray(i * 1000, i * 1000 + 4096))));
    many.forEach((d, i) => expect(d.equals(createHash('sha256').update(plain.subarray(i * 1000, i * 1000 + 4096)).digest())).toBe(true));
  });
});
