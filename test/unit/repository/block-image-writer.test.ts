import { mkdtemp, open, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { acceptsODirect, patternBytes as bytes } from '../../helpers/extents.js';
import { BlockMapBuilder } from '../../../src/repository/block-map.js';
import { BlockImageWriter, pageRuns } from '../../../src/repository/block-image-writer.js';
import { DataFile } from '../../../src/repository/direct-io.js';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vprotect-biw-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});


/** Writes `runs` through BlockImageWriter; returns the file, its digests, and the reference digests and image. */
async function run(size: number, blockSize: number, runs: [number, Buffer][], inDir = dir) {
  const path = join(inDir, `img-${size}-${blockSize}.raw`);
  const fh = await open(path, 'w');
  await fh.truncate(size);
  const file = await DataFile.open(fh, path);
  const digests: string[] = [];
  const w = new BlockImageWriter(file, blockSize, size, (d) => void digests.push(d.toString('hex')));
  for (const [off, data] of runs) await w.data(off, data);
  await w.finish();
  const directIo = file.directIo;
  await file.closeDirect();
  await fh.close();
  const expectedImage = Buffer.alloc(size);
  const reference: string[] = [];
  const builder = new BlockMapBuilder(blockSize, (d) => reference.push(d.toString('hex')));
  for (const [off, data] of runs) {
    data.copy(expectedImage, off);
    builder.data(off, data);
  }
  builder.finish(size);
  return { path, digests, reference, image: await readFile(path), expectedImage, directIo };
}

describe('BlockImageWriter', () => {
  it('writes the image and the same block map as BlockMapBuilder: runs across blocks, gaps, a short last block', async () => {
    const bs = 65536;
    const size = 10 * bs + 1234;
    const runs: [number, Buffer][] = [
      [100, bytes(5000, 1)],
      [5100, bytes(3 * bs, 2)], // contiguous with the previous run, spans blocks
      [4 * bs + 4096, bytes(4096, 3)],
      [7 * bs, bytes(bs, 4)], // exactly one block
      [10 * bs + 1000, bytes(234, 5)], // ends at the disk's end, in the short last block
    ];
    const r = await run(size, bs, runs);
    expect(r.digests).toEqual(r.reference);
    expect(r.image.equals(r.expectedImage)).toBe(true);
  });

  it('writes around the page cache on a filesystem with O_DIRECT, unaligned runs included', async () => {
    const bs = 65536;
    const r = await run(4 * bs + 1234, bs, [
      [0, bytes(bs, 8)],
      [bs + 100, bytes(333, 9)],
      [3 * bs + 4095, bytes(bs + 1, 10)], // to the very end of the disk (not a page multiple)
    ]);
    expect(r.image.equals(r.expectedImage)).toBe(true);
    // No write fell back for good where the filesystem has O_DIRECT (EINVAL would turn it off).
    expect(r.directIo).toBe(await acceptsODirect(dir));
  });

  it('pageRuns widens runs to pages inside the block and joins the ones that then touch', () => {
    expect(pageRuns([[0, 4096]], 65536)).toEqual([[0, 4096]]);
    expect(pageRuns([[100, 200], [300, 5000]], 65536)).toEqual([[0, 8192]]);
    expect(pageRuns([[100, 200], [9000, 9001]], 65536)).toEqual([[0, 4096], [8192, 12288]]);
    expect(pageRuns([[60000, 61000]], 61000)).toEqual([[57344, 61000]]); // never past the block's length
  });

  it('a disk with no data: zero digests only, nothing written (the file stays a hole)', async () => {
    const bs = 65536;
    const r = await run(64 * bs, bs, []);
    expect(r.digests).toEqual(r.reference);
    expect(r.digests).toHaveLength(64);
    expect((await stat(r.path)).blocks).toBe(0);
  });

  it('an empty disk has an empty map', async () => {
    const r = await run(0, 65536, []);
    expect(r.digests).toEqual([]);
  });

  it('many small blocks in flight keep their order', async () => {
    const bs = 65536;
    const size = 300 * bs;
    const runs: [number, Buffer][] = [];
    for (let b = 0; b < 300; b += 1 + (b % 3)) runs.push([b * bs + (b % 7) * 512, bytes(bs / 2, b)]);
    const r = await run(size, bs, runs);
    expect(r.digests).toEqual(r.reference);
    expect(r.image.equals(r.expectedImage)).toBe(true);
  });

  it('refuses data that goes backwards (a caller bug must not write a wrong image)', async () => {
    const fh = await open(join(dir, 'x.raw'), 'w');
    try {
      const w = new BlockImageWriter(await DataFile.open(fh, join(dir, 'x.raw')), 65536, 1 << 20, () => {});
      await w.data(5000, bytes(100, 1));
      await expect(w.data(4000, bytes(100, 2))).rejects.toThrow(/not after the previous data/);
      await w.data(3 * 65536, bytes(100, 3));
      await expect(w.data(65536, bytes(100, 4))).rejects.toThrow(/not after the previous data/); // an earlier block
      await w.abort();
    } finally {
      await fh.close();
    }
  });
});
