/**
 * The export-diff reader on scripted streams: it must turn good streams into exact extents and
 * every bad, truncated or mismatched stream into a clear error — never into a wrong point.
 */
import { describe, expect, it } from 'vitest';
import { DataCorruptError, UnavailableError } from '../../../src/errors.js';
import type { Extent } from '../../../src/repository/extents.js';
import { encodeRbdDiff } from '../../../src/repository/rbd-diff.js';
import { CommandFailedError } from '../../../src/transport/command.js';
import type { StreamingExec } from '../../../strategies/ceph-rbd/exec.js';
import { exportDiffArgs, readExportDiff } from '../../../strategies/ceph-rbd/export-diff.js';

const MiB = 1 << 20;

async function bytesOf(h: Parameters<typeof encodeRbdDiff>[0], extents: Extent[]): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const b of encodeRbdDiff(h, extents)) parts.push(b);
  return Buffer.concat(parts);
}

/** A fake `rbd` whose export-diff writes `bytes` in `chunk`-sized pieces, then exits as told. */
function fakeRbd(bytes: Buffer, opts: { chunk?: number; exit?: Error; hang?: boolean; reuse?: boolean } = {}) {
  const calls: string[][] = [];
  let killed = false;
  return {
    calls,
    get killed() {
      return killed;
    },
    async stream(args: readonly string[]): Promise<StreamingExec> {
      calls.push([...args]);
      const chunk = opts.chunk ?? 65536;
      let release!: () => void;
      const gate = new Promise<void>((r) => (release = r));
      // reuse: every chunk is copied into the same buffer, valid until the next is asked for.
      const shared = Buffer.alloc(chunk);
      const stdout = (async function* () {
        for (let at = 0; at < bytes.length; at += chunk) {
          const piece = bytes.subarray(at, at + chunk);
          if (!opts.reuse) yield piece;
          else {
            piece.copy(shared);
            yield shared.subarray(0, piece.length);
            shared.fill(0xee);
          }
        }
        if (opts.hang) await gate;
      })();
      const done = opts.exit ? Promise.reject(opts.exit) : Promise.resolve();
      done.catch(() => {});
      return {
        stdout,
        ...(opts.reuse ? { reusesBuffers: true } : {}),
        done,
        kill: () => {
          killed = true;
          release();
        },
      };
    },
  };
}

async function collect(it: AsyncIterable<Extent>): Promise<Extent[]> {
  const out: Extent[] = [];
  for await (const e of it) out.push(e.data ? { ...e, data: Buffer.from(e.data) } : e);
  return out;
}

const req = { pool: 'volumes', image: 'img', snap: 'vprotect-20261124T220000Z-bbbb', fromSnap: 'vprotect-20261124T210000Z-aaaa', size: 16 * MiB };
const header = { fromSnap: req.fromSnap, toSnap: req.snap, size: req.size };
const data = (offset: number, length: number, fill: number): Extent => ({ offset, length, data: Buffer.alloc(length, fill) });

describe('rbd export-diff reader', () => {
  it('asks rbd for exactly the snapshots of the request', () => {
    expect(exportDiffArgs(req)).toEqual(['export-diff', '--no-progress', '--from-snap', req.fromSnap, `volumes/img@${req.snap}`, '-']);
    expect(exportDiffArgs({ pool: 'vms', image: 'x_disk', snap: 's' })).toEqual(['export-diff', '--no-progress', 'vms/x_disk@s', '-']);
    expect(() => exportDiffArgs({ pool: 'vms', image: '--help', snap: 's' })).toThrow(/not a valid rbd image name/);
  });

  it('yields data and zero extents; 64 KiB pipe chunks are joined back into whole records (≤ 4 MiB)', async () => {
    const extents = [data(0, 6 * MiB, 0x11), { offset: 8 * MiB, length: MiB }, data(10 * MiB, 4096, 0x22)];
    const rbd = fakeRbd(await bytesOf(header, extents), { chunk: 65536 });
    const got = await collect(readExportDiff(rbd, req));
    expect(got.map((e) => [e.offset, e.length, e.data ? e.data[0] : 'zero'])).toEqual([
      [0, 4 * MiB, 0x11],
      [4 * MiB, 2 * MiB, 0x11],
      [8 * MiB, MiB, 'zero'],
      [10 * MiB, 4096, 0x22],
    ]);
    expect(got[0]!.data!.equals(Buffer.alloc(4 * MiB, 0x11))).toBe(true);
  });

  it('without joining (fulls), pieces pass as they come, bytes unchanged', async () => {
    const extents = [data(0, 200_000, 0x41)];
    const got = await collect(readExportDiff(fakeRbd(await bytesOf(header, extents), { chunk: 65536 }), { ...req, joinRecords: false }));
    expect(got.length).toBeGreaterThan(1);
    expect(Buffer.concat(got.map((e) => e.data!)).equals(extents[0]!.data!)).toBe(true);
  });

  it('a source that reuses its buffers: extents still own their bytes unless the consumer allows reuse', async () => {
    const extents = [data(0, 6 * MiB, 0x11), { offset: 8 * MiB, length: MiB }, data(10 * MiB, 300_001, 0x22)];
    const bytes = await bytesOf(header, extents);
    for (const joinRecords of [true, false]) {
      // Kept as they come, without copying (what a consumer that queues extents does).
      const got: Extent[] = [];
      for await (const e of readExportDiff(fakeRbd(bytes, { chunk: 65536, reuse: true }), { ...req, joinRecords })) got.push(e);
      const image = Buffer.alloc(16 * MiB);
      for (const e of got) if (e.data) e.data.copy(image, e.offset);
      const want = Buffer.alloc(16 * MiB);
      for (const e of extents) if (e.data) e.data.copy(want, e.offset);
      expect(image.equals(want), `joinRecords ${joinRecords}`).toBe(true);
    }
  });

  it('reuseBuffers: a consumer that uses each extent before the next gets exact bytes, joined in one buffer', async () => {
    const extents = [data(0, 6 * MiB, 0x11), data(7 * MiB, 2 * MiB + 5, 0x12), { offset: 10 * MiB, length: MiB }, data(12 * MiB, 70_000, 0x22)];
    const bytes = await bytesOf(header, extents);
    const want = Buffer.alloc(16 * MiB);
    for (const e of extents) if (e.data) e.data.copy(want, e.offset);
    for (const joinRecords of [true, false]) {
      const image = Buffer.alloc(16 * MiB);
      const backing = new Set<ArrayBufferLike>();
      for await (const e of readExportDiff(fakeRbd(bytes, { chunk: 65536, reuse: true }), { ...req, joinRecords, reuseBuffers: true })) {
        if (!e.data) continue;
        e.data.copy(image, e.offset);
        if (e.length > 65536) backing.add(e.data.buffer);
      }
      expect(image.equals(want), `joinRecords ${joinRecords}`).toBe(true);
      // Joined records (4 MiB, 2 MiB, 2 MiB + 5) all lived in the same reused buffer.
      if (joinRecords) expect(backing.size).toBe(1);
    }
  });

  it('odd chunk sizes give the same bytes', async () => {
    const extents = [data(100, 300_001, 0x31), data(MiB, 70_000, 0x32)];
    const got = await collect(readExportDiff(fakeRbd(await bytesOf(header, extents), { chunk: 7777 }), req));
    expect(got.map((e) => [e.offset, e.length])).toEqual(extents.map((e) => [e.offset, e.length]));
    got.forEach((e, i) => expect(e.data!.equals(extents[i]!.data!)).toBe(true));
  });

  it('a full export (no from-snapshot) is accepted for a full request only', async () => {
    const full = await bytesOf({ toSnap: req.snap, size: req.size }, [data(0, 4096, 1)]);
    const { fromSnap: _, ...fullReq } = req;
    expect(await collect(readExportDiff(fakeRbd(full), fullReq))).toHaveLength(1);
    await expect(collect(readExportDiff(fakeRbd(full), req))).rejects.toThrow(/the stream is a full export, expected snapshot vprotect-20261124T210000Z-aaaa/);
  });

  it.each([
    ['another base snapshot', { ...header, fromSnap: 'vprotect-20261124T200000Z-0000' }, /relative to snapshot vprotect-20261124T200000Z-0000/],
    ['another end snapshot', { ...header, toSnap: 'other' }, /ends at snapshot other, expected/],
    ['another size', { ...header, size: 32 * MiB }, /says the image has 33554432 bytes, the snapshot has 16777216/],
    ['no size', { fromSnap: req.fromSnap, toSnap: req.snap }, /says the image has no bytes/],
  ])('refuses a stream with %s', async (_w, h, message) => {
    await expect(collect(readExportDiff(fakeRbd(await bytesOf(h, [data(0, 10, 1)])), req))).rejects.toThrow(message);
  });

  it('a truncated stream (rbd exited 0) is data corruption, and nothing after the cut is yielded', async () => {
    const good = await bytesOf(header, [data(0, MiB, 1), data(2 * MiB, MiB, 2)]);
    for (const cut of [5, 12, 20, 60, 100 + MiB, good.length - 1]) {
      const got: Extent[] = [];
      const err = await (async () => {
        for await (const e of readExportDiff(fakeRbd(good.subarray(0, cut)), req)) got.push(e);
      })().catch((e: unknown) => e);
      expect(err, `cut at ${cut}`).toBeInstanceOf(DataCorruptError);
      expect((err as Error).message).toMatch(/truncated|no end record/);
      // Whatever was yielded before the error is a whole record with the right bytes (the run
      // fails anyway, so the point is never written; nothing yielded is ever wrong data).
      for (const e of got) expect(e.data!.equals(Buffer.alloc(e.length, e.offset < MiB ? 1 : 2)) && (e.offset === 0 || e.offset === 2 * MiB) && e.length === MiB).toBe(true);
    }
  });

  it('when rbd itself failed, its stderr is the error (not "truncated")', async () => {
    const good = await bytesOf(header, [data(0, MiB, 1)]);
    const fail = new CommandFailedError('rbd export-diff … failed with exit status 2: rbd: export-diff error: (2) No such file or directory', [], 2, 'rbd: export-diff error: (2) No such file or directory');
    await expect(collect(readExportDiff(fakeRbd(good.subarray(0, 40), { exit: fail }), req))).rejects.toThrow(/No such file or directory/);
  });

  it('a bad record tag, data after the end, or an out-of-order record are caught, and rbd is stopped', async () => {
    const good = await bytesOf(header, [data(0, 4096, 1), data(8192, 4096, 2)]);
    const preamble = good.length - (17 + 4096) * 2 - 1;
    const badTag = Buffer.from(good);
    badTag[preamble] = 0x78; // 'x'
    const rbd1 = fakeRbd(badTag, { hang: true });
    await expect(collect(readExportDiff(rbd1, req))).rejects.toThrow(/unknown record tag 0x78/);
    expect(rbd1.killed).toBe(true);
    await expect(collect(readExportDiff(fakeRbd(Buffer.concat([good, Buffer.from('w')])), req))).rejects.toThrow(/data after the end record/);
    const swapped = await bytesOf(header, [data(8192, 4096, 2), data(0, 4096, 1)]);
    await expect(collect(readExportDiff(fakeRbd(swapped), req))).rejects.toThrow(/overlaps or precedes/);
    await expect(collect(readExportDiff(fakeRbd(Buffer.from('not a diff at all')), req))).rejects.toThrow(/not an rbd diff v1 stream/);
    await expect(collect(readExportDiff(fakeRbd(Buffer.alloc(0)), req))).rejects.toThrow(/truncated/);
  });

  it('a record past the image size is refused', async () => {
    const past = await bytesOf({ ...header }, [data(16 * MiB - 10, 20, 1)]);
    await expect(collect(readExportDiff(fakeRbd(past), req))).rejects.toThrow(/goes past the image size/);
  });

  it('stops rbd when the consumer stops early', async () => {
    const rbd = fakeRbd(await bytesOf(header, [data(0, MiB, 1), data(2 * MiB, MiB, 2)]), { hang: true });
    for await (const _ of readExportDiff(rbd, req)) break;
    expect(rbd.killed).toBe(true);
  });

  it('a silent rbd is stopped after the idle timeout with a clear error', async () => {
    const rbd = fakeRbd(Buffer.alloc(0), { hang: true });
    await expect(collect(readExportDiff(rbd, { ...req, idleTimeoutMs: 50 }))).rejects.toThrow(UnavailableError);
    expect(rbd.killed).toBe(true);
  });
});
