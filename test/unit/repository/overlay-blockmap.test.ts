import { createHash, randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { BlockMapBuilder } from '../../../src/repository/block-map.js';
import { overlay, type Segment } from '../../../src/repository/chain-reader.js';
import { splitZeroRuns } from '../../../src/repository/extents.js';

const idx = (recs: [number, number][]) => ({ count: recs.length, offsets: recs.map((r) => r[0]), lengths: recs.map((r) => r[1]) });

describe('overlay of diff records on a chain', () => {
  it('splits, covers and keeps segments; grows and shrinks', () => {
    const base: Segment[] = [{ start: 0, end: 100, layer: 0, record: -1 }];
    const s = overlay(base, 100, 150, 1, idx([[10, 5], [20, 90]]));
    expect(s).toEqual([
      { start: 0, end: 10, layer: 0, record: -1 },
      { start: 10, end: 15, layer: 1, record: 0 },
      { start: 15, end: 20, layer: 0, record: -1 },
      { start: 20, end: 110, layer: 1, record: 1 },
      { start: 110, end: 150, layer: -1, record: -1 },
    ]);
    expect(overlay(s, 150, 12, 2, idx([]))).toEqual([
      { start: 0, end: 10, layer: 0, record: -1 },
      { start: 10, end: 12, layer: 1, record: 0 },
    ]);
  });

  it('matches a byte-level model on random records', () => {
    for (let seed = 0; seed < 50; seed++) {
      const size = 1000;
      const owner = new Array<number>(size).fill(0);
      let segs: Segment[] = [{ start: 0, end: size, layer: 0, record: -1 }];
      for (let layer = 1; layer <= 5; layer++) {
        const recs: [number, number][] = [];
        let at = 0;
        while (at < size) {
          at += Math.floor(Math.random() * 200);
          const len = 1 + Math.floor(Math.random() * 100);
          if (at + len > size) break;
          recs.push([at, len]);
          for (let i = at; i < at + len; i++) owner[i] = layer;
          at += len;
        }
        segs = overlay(segs, size, size, layer, idx(recs));
      }
      const got = new Array<number>(size);
      for (const s of segs) for (let i = s.start; i < s.end; i++) got[i] = s.layer;
      expect(got).toEqual(owner);
    }
  });
});

describe('block map builder', () => {
  it('equals sha256 of each block of the materialised disk, holes and a short last block included', () => {
    const bs = 65536;
    const disk = Buffer.alloc(5 * bs + 1234);
    randomBytes(70000).copy(disk, 3000);
    randomBytes(100).copy(disk, 4 * bs + 10);
    const digests: string[] = [];
    const b = new BlockMapBuilder(bs, (d) => digests.push(d.toString('hex')));
    for (const run of splitZeroRuns({ offset: 0, length: disk.length, data: disk })) if (run.data) b.data(run.offset, run.data);
    b.finish(disk.length);
    const expected = [];
    for (let o = 0; o < disk.length; o += bs) expected.push(createHash('sha256').update(disk.subarray(o, Math.min(disk.length, o + bs))).digest('hex'));
    expect(digests).toEqual(expected);
  });
});
