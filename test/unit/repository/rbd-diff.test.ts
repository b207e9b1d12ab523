import { describe, expect, it } from 'vitest';
import { DataCorruptError } from '../../../src/errors.js';
import { encodePaddedPreamble, encodePreamble, encodeRbdDiff, parseRbdDiff, RBD_DIFF_END, rbdDiffExtents, type RbdDiffItem } from '../../../src/repository/rbd-diff.js';

async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}

async function encode(): Promise<Buffer> {
  const extents = [
    { offset: 0, length: 5, data: Buffer.from('hello') },
    { offset: 4096, length: 8192 },
    { offset: 20000, length: 3, data: Buffer.from('abc') },
  ];
  return Buffer.concat(await collect(encodeRbdDiff({ fromSnap: 'A', toSnap: 'B', size: 1 << 20 }, extents)));
}

/** Feeds a buffer in chunks of `n` bytes, to exercise records spanning chunks. */
async function* chunks(b: Buffer, n: number): AsyncGenerator<Buffer> {
  for (let i = 0; i < b.length; i += n) yield b.subarray(i, i + n);
}

describe('rbd diff v1 codec', () => {
  it('encodes the documented byte layout', async () => {
    const b = await encode();
    expect(b.subarray(0, 12).toString('latin1')).toBe('rbd diff v1\n');
    expect(b.subarray(12, 18)).toEqual(Buffer.from([0x66, 1, 0, 0, 0, 0x41])); // f, u32 1, "A"
    expect(b.subarray(24, 33)).toEqual(Buffer.from([0x73, 0, 0, 0x10, 0, 0, 0, 0, 0])); // s, u64 1 MiB
    expect(b.subarray(33, 34).toString('latin1')).toBe('w');
    expect(b.readBigUInt64LE(34)).toBe(0n);
    expect(b.readBigUInt64LE(42)).toBe(5n);
    expect(b.subarray(50, 55).toString()).toBe('hello');
    expect(b.at(-1)).toBe(0x65);
  });

  it.each([1, 3, 7, 64, 100000])('parses what it encodes, whatever the chunking (%i-byte chunks)', async (n) => {
    const { header, extents } = rbdDiffExtents(chunks(await encode(), n));
    const got = await collect(extents);
    expect(header).toEqual({ fromSnap: 'A', toSnap: 'B', size: 1 << 20 });
    const flat = Buffer.concat(got.filter((e) => e.data).map((e) => e.data!));
    expect(flat.toString()).toBe('helloabc');
    expect(got.filter((e) => !e.data)).toEqual([{ offset: 4096, length: 8192 }]);
  });

  it('reports the file offset of every record', async () => {
    const items = await collect(parseRbdDiff(chunks(await encode(), 5)));
    const recs = items.filter((i): i is Extract<RbdDiffItem, { type: 'zero' }> => i.type === 'zero');
    expect(recs[0]!.record.fileOffset).toBe(33 + 17 + 5);
  });

  it('rejects a stream truncated at any byte', async () => {
    const b = await encode();
    for (let cut = 0; cut < b.length; cut++) {
      await expect(collect(parseRbdDiff(chunks(b.subarray(0, cut), 4))), `cut at ${cut}`).rejects.toThrow(DataCorruptError);
    }
  });

  it.each([
    ['a wrong header', (b: Buffer) => Buffer.concat([Buffer.from('rbd diff v2\n'), b.subarray(12)]), /not an rbd diff v1/],
    ['an unknown tag', (b: Buffer) => { const c = Buffer.from(b); c[33] = 0x78; return c; }, /unknown record tag 0x78 at byte 33/],
    ['data after the end', (b: Buffer) => Buffer.concat([b, Buffer.from('x')]), /data after the end/],
    ['a record past the size', (b: Buffer) => { const c = Buffer.from(b); c.writeBigUInt64LE(1n << 20n, 34); return c; }, /past the image size/],
    ['a huge length', (b: Buffer) => { const c = Buffer.from(b); c.writeBigUInt64LE(1n << 60n, 42); return c; }, /too large/],
  ])('rejects %s', async (_name, mutate, msg) => {
    await expect(collect(parseRbdDiff(chunks(mutate(await encode()), 16)))).rejects.toThrow(msg);
  });

  it('rejects overlapping or descending records unless told the stream is unordered', async () => {
    const b = Buffer.concat(await collect(encodeRbdDiff({ size: 100 }, [{ offset: 50, length: 10 }, { offset: 40, length: 5 }])));
    await expect(collect(parseRbdDiff(chunks(b, 8)))).rejects.toThrow(/overlaps or precedes/);
    expect(await collect(parseRbdDiff(chunks(b, 8), { ordered: false }))).toHaveLength(4);
  });

  it('pads a preamble to a given length with repeated size records, or says it cannot', async () => {
    const h = { fromSnap: '20261125T100000Z-aaaa', toSnap: '20261125T110000Z-bbbb', size: 1 << 20 };
    const rbds = encodePreamble({ fromSnap: `vprotect-${h.fromSnap}`, toSnap: `vprotect-${h.toSnap}`, size: h.size });
    const padded = encodePaddedPreamble(h, rbds.length)!;
    expect(padded.length).toBe(rbds.length);
    const items = await collect(parseRbdDiff(chunks(Buffer.concat([padded, RBD_DIFF_END]), 7)));
    expect(items).toEqual([{ type: 'from', name: h.fromSnap }, { type: 'to', name: h.toSnap }, ...[1, 2, 3].map(() => ({ type: 'size', size: h.size })), { type: 'end', fileOffset: rbds.length }]);
    expect(encodePaddedPreamble(h, encodePreamble(h).length)).toEqual(encodePreamble(h));
    expect(encodePaddedPreamble(h, rbds.length + 1)).toBeUndefined();
    expect(encodePaddedPreamble(h, encodePreamble(h).length - 9)).toBeUndefined();
  });
});
