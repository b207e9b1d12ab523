import { mkdtemp, open, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { acceptsODirect, patternBytes as bytes } from '../../helpers/extents.js';
import { CoalescingWriter } from '../../../src/repository/coalescing-writer.js';
import { DataFile, DirectReader } from '../../../src/repository/direct-io.js';
import { isPageAligned, pageAlignedBuffer } from '../../../src/util/buffer-pool.js';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vprotect-dio-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});


async function withFile<T>(name: string, fn: (file: DataFile) => Promise<T>): Promise<{ result: T; content: Buffer }> {
  const path = join(dir, name);
  const fh = await open(path, 'w');
  const file = await DataFile.open(fh, path);
  try {
    const result = await fn(file);
    return { result, content: await readFile(path) };
  } finally {
    await file.closeDirect();
    await fh.close();
  }
}

describe('page-aligned buffers and DataFile', () => {
  it('pageAlignedBuffer gives page-aligned memory of the exact size; plain buffers are not', () => {
    const b = pageAlignedBuffer(100_000, false)!;
    expect(b.length).toBe(100_000);
    expect(isPageAligned(b)).toBe(true);
    expect(isPageAligned(b.subarray(4096))).toBe(true);
    expect(isPageAligned(b.subarray(512))).toBe(false);
    expect(pageAlignedBuffer(8192, true)!.buffer).toBeInstanceOf(SharedArrayBuffer);
    expect(isPageAligned(Buffer.allocUnsafeSlow(1 << 20))).toBe(false);
  });

  it('aligned and unaligned writes land where they belong, whichever handle takes them', async () => {
    const aligned = pageAlignedBuffer(3 * 4096, false)!;
    bytes(3 * 4096, 1).copy(aligned);
    const plain = bytes(5000, 2);
    const { result, content } = await withFile('a', async (file) => {
      await file.write(aligned, 8192); // direct
      await file.write(plain, 100); // ordinary: neither offset nor memory aligned
      await file.write(aligned.subarray(4096, 8192), 4096 * 10); // direct, a view at a page offset
      return file.directIo;
    });
    const expected = Buffer.alloc(4096 * 11);
    aligned.copy(expected, 8192);
    plain.copy(expected, 100);
    aligned.subarray(4096, 8192).copy(expected, 4096 * 10);
    expect(content.equals(expected)).toBe(true);
    expect(result).toBe(await acceptsODirect(dir)); // the direct writes did not fall back
  });

  it('CoalescingWriter: an append from an unaligned start, in odd pieces across many buffers, then a hole', async () => {
    const pieces = [13, 70_000, 1, 200_000, 4096, 123_457, 65_536, 300_000].map((n, i) => bytes(n, i + 3));
    const { content } = await withFile('c', async (file) => {
      const w = new CoalescingWriter(file, 65536); // small buffers: many cuts and carried tails
      let at = 0;
      for (const p of pieces) {
        await w.write(at, p);
        at += p.length;
      }
      await w.write(at + 10_000, bytes(777, 99)); // after a hole
      await w.close();
      return at;
    });
    const whole = Buffer.concat(pieces);
    expect(content.subarray(0, whole.length).equals(whole)).toBe(true);
    expect(content.subarray(whole.length, whole.length + 10_000).every((b) => b === 0)).toBe(true);
    expect(content.subarray(whole.length + 10_000).equals(bytes(777, 99))).toBe(true);
  });

  it('CoalescingWriter.close: the whole pages of the last buffer can go direct; only the partial last page cannot', async () => {
    const data = bytes(300_000, 7);
    const writes: [number, number][] = [];
    const { content } = await withFile('d', async (file) => {
      const write = file.write.bind(file);
      file.write = (d: Buffer, position: number) => {
        writes.push([position, d.length]);
        return write(d, position);
      };
      const w = new CoalescingWriter(file, 1 << 20); // everything is still in the first buffer at close
      await w.write(0, data);
      await w.close();
    });
    expect(content.equals(data)).toBe(true);
    const pages = 300_000 - (300_000 % 4096);
    expect(writes).toEqual([[0, pages], [pages, 300_000 - pages]]);
  });

  it('DirectReader: whole pages, the short tail of a file, and what it declines', async () => {
    const path = join(dir, 'r');
    const content = bytes(3 * 4096 + 1000, 42);
    await writeFile(path, content);
    const reader = await DirectReader.open(path);
    try {
      if (!(await acceptsODirect(dir))) {
        // Without O_DIRECT it declines everything and the caller reads the ordinary way.
        expect(await reader.readAligned(0, 4096, pageAlignedBuffer(4096, false)!)).toBeUndefined();
        return;
      }
      const into = pageAlignedBuffer(4 * 4096, false)!;
      expect((await reader.readAligned(4096, 8192, into))!.equals(content.subarray(4096, 3 * 4096))).toBe(true);
      // The last block: asked for its exact length, the file ends inside the page.
      expect((await reader.readAligned(2 * 4096, 4096 + 1000, into))!.equals(content.subarray(2 * 4096))).toBe(true);
      // Asked for more than is there: what is there.
      expect((await reader.readAligned(3 * 4096, 4096, into))!.equals(content.subarray(3 * 4096))).toBe(true);
      expect(await reader.readAligned(100, 4096, into)).toBeUndefined(); // unaligned position
      expect(await reader.readAligned(0, 4096, Buffer.alloc(8192))).toBeUndefined(); // unaligned memory
      expect(await reader.readAligned(0, 4 * 4096 + 1, into)).toBeUndefined(); // does not fit
    } finally {
      await reader.close();
    }
  });
});
