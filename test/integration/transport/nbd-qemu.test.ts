/**
 * The NBD client and extent readers against a real qemu-nbd: every byte read is compared with
 * `qemu-img convert` of the same image, and the ranges with nbdinfo's view of the same export.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { UnavailableError } from '../../../src/errors.js';
import type { Extent } from '../../../src/repository/extents.js';
import {
  connectSocketChannel,
  DEPTH_READ_CONTEXTS,
  dirtyReadContexts,
  FULL_READ_CONTEXTS,
  NbdSession,
  newCounters,
  openNbdConnection,
  readAllocationDepth,
  readDirty,
  readFull,
} from '../../../src/transport/nbd/index.js';
import { KiB, makeQemuDisk, MiB, nbdinfoMap, startQemuNbd, type QemuDisk, type QemuNbdServer } from './qemu-fixture.js';

let disk: QemuDisk;
let server: QemuNbdServer;

beforeAll(async () => {
  disk = makeQemuDisk();
  server = await startQemuNbd(disk.top, join(disk.dir, 'nbd.sock'), ['-B', disk.bitmap, '-A', '--shared=4']);
});

afterAll(async () => {
  await server?.stop();
  disk?.cleanup();
});

function open(metaContexts: readonly string[], connections = 1, exportName = '') {
  return NbdSession.open(() => connectSocketChannel({ path: server.socket }), { exportName, metaContexts, connections });
}

async function collect(extents: AsyncIterable<Extent>): Promise<Extent[]> {
  const out: Extent[] = [];
  for await (const e of extents) out.push(e);
  return out;
}

/** Ascending, non-overlapping, each data extent equal to the reference, each zero extent zero there. */
function checkAgainstReference(extents: Extent[], reference: Buffer): void {
  let end = 0;
  for (const e of extents) {
    expect(e.offset).toBeGreaterThanOrEqual(end);
    expect(e.length).toBeGreaterThan(0);
    const want = reference.subarray(e.offset, e.offset + e.length);
    if (e.data) {
      expect(e.data.length).toBe(e.length);
      expect(e.data.equals(want)).toBe(true);
    } else {
      expect(want.equals(Buffer.alloc(e.length))).toBe(true);
    }
    end = e.offset + e.length;
  }
}

/** The set of bytes covered by ranges, as a sorted list of merged [start, end). */
function merged(ranges: Array<{ offset: number; length: number }>): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (const r of [...ranges].sort((a, b) => a.offset - b.offset)) {
    const last = out[out.length - 1];
    if (last && last[1] === r.offset) last[1] += r.length;
    else out.push([r.offset, r.offset + r.length]);
  }
  return out;
}

/** The session answers both dirty-read contexts, and its dirty read is the bitmap's ranges (per nbdinfo) with the reference's bytes. */
async function expectDirtyReadThenClose(s: NbdSession): Promise<void> {
  expect([...s.info.contexts.keys()].sort()).toEqual([...dirtyReadContexts(disk.bitmap)].sort());
  const extents = await collect(readDirty(s, disk.bitmap));
  await s.close();
  checkAgainstReference(extents, disk.reference);
  const dirty = nbdinfoMap(server.socket, `qemu:dirty-bitmap:${disk.bitmap}`).filter((m) => m.type & 1);
  expect(merged(extents)).toEqual(merged(dirty));
}

describe('NBD client against qemu-nbd', () => {
  it('negotiates the export: size, block sizes, contexts, multi-conn', async () => {
    const s = await open([...DEPTH_READ_CONTEXTS, `qemu:dirty-bitmap:${disk.bitmap}`]);
    expect(s.info.size).toBe(disk.size);
    expect(s.info.readOnly).toBe(true);
    expect(s.info.maxBlock).toBeGreaterThanOrEqual(1 * MiB);
    expect([...s.info.contexts.keys()].sort()).toEqual(['base:allocation', 'qemu:allocation-depth', 'qemu:dirty-bitmap:b1']);
    await s.close();
  });

  it('full read: every byte equals qemu-img convert, holes and zeros are zero extents, never bytes', async () => {
    const s = await open(FULL_READ_CONTEXTS);
    const counters = newCounters();
    const extents = await collect(readFull(s, { counters }));
    await s.close();
    checkAgainstReference(extents, disk.reference);
    // Full coverage of the disk, contiguous.
    expect(merged(extents)).toEqual([[0, disk.size]]);
    expect(counters.dataBytes + counters.zeroBytes).toBe(disk.size);
    // Only allocated, non-zero bytes travel as data: base's 4 MiB (top's 192 KiB at 2 MiB lies
    // inside it), the 0x5a half MiB the zero write left, top's 64 KiB, and the unaligned 100 KiB
    // exactly — qemu reports the rest of that cluster as zero at 4 KiB granularity.
    const dataBytes = extents.filter((e) => e.data).reduce((n, e) => n + e.length, 0);
    expect(dataBytes).toBe(counters.dataBytes);
    expect(dataBytes).toBe(4 * MiB + 512 * KiB + 64 * KiB + 100 * KiB);
    // The explicit zero bytes written as data at 48 MiB were read but handed out as zeros.
    const at48 = extents.find((e) => e.offset <= 48 * MiB && e.offset + e.length > 48 * MiB)!;
    expect(at48.data).toBeUndefined();
    // Unallocated space was never read.
    expect(counters.readBytes).toBeLessThan(8 * MiB);
  });

  it('full read with tiny requests, many in flight, and over several connections, is still bit-identical', async () => {
    const s = await open(FULL_READ_CONTEXTS, 4);
    expect(s.info.canMultiConn).toBe(true);
    expect(s.connectionCount).toBe(4);
    const counters = newCounters();
    const extents = await collect(readFull(s, { maxRequestBytes: 64 * KiB, maxRequestsInFlight: 128, maxBytesInFlight: 8 * MiB, counters }));
    await s.close();
    checkAgainstReference(extents, disk.reference);
    expect(merged(extents)).toEqual([[0, disk.size]]);
    expect(counters.readRequests).toBeGreaterThan(60);
  });

  it('full read with recycled buffers: each extent checked before the next is requested', async () => {
    const s = await open(FULL_READ_CONTEXTS);
    const buffers = new Set<ArrayBufferLike>();
    let end = 0;
    let dataExtents = 0;
    for await (const e of readFull(s, { reuseBuffers: true, maxRequestBytes: 256 * KiB, maxBytesInFlight: 1 * MiB })) {
      expect(e.offset).toBe(end);
      const want = disk.reference.subarray(e.offset, e.offset + e.length);
      if (e.data) {
        expect(e.data.equals(want)).toBe(true);
        buffers.add(e.data.buffer);
        dataExtents++;
      } else expect(want.equals(Buffer.alloc(e.length))).toBe(true);
      end += e.length;
    }
    await s.close();
    expect(end).toBe(disk.size);
    // ~5 MiB of data in 256 KiB reads, but only (1 MiB in flight / 256 KiB) + 1 buffers ever made.
    expect(dataExtents).toBeGreaterThan(15);
    expect(buffers.size).toBeLessThanOrEqual(5);
  });

  it('dirty read: exactly the ranges dirty in the bitmap (per nbdinfo), dirty ∧ zero as zero extents', async () => {
    const s = await open(dirtyReadContexts(disk.bitmap));
    const extents = await collect(readDirty(s, disk.bitmap));
    await s.close();
    checkAgainstReference(extents, disk.reference);
    const dirty = nbdinfoMap(server.socket, `qemu:dirty-bitmap:${disk.bitmap}`).filter((m) => m.type & 1);
    expect(merged(extents)).toEqual(merged(dirty));
    // The three writes after the bitmap, at 64 KiB bitmap granularity — nothing widened further.
    expect(merged(dirty)).toEqual([
      [8 * MiB, 8 * MiB + 64 * KiB],
      [32 * MiB + 512 * KiB, 33 * MiB + 512 * KiB],
      [60 * MiB, 60 * MiB + 128 * KiB],
    ]);
    const zeroWrite = extents.filter((e) => e.offset >= 32 * MiB + 512 * KiB && e.offset < 33 * MiB + 512 * KiB);
    expect(zeroWrite.every((e) => !e.data)).toBe(true);
  });

  it('two connections and two contexts: each connection answers one, the dirty read is unchanged', async () => {
    const s = await open(dirtyReadContexts(disk.bitmap), 2);
    expect(s.connectionCount).toBe(2);
    await expectDirtyReadThenClose(s);
  });

  it('a server that takes one client at a time (qemu-nbd -e 1): the contexts fall back to one connection, no hang', async () => {
    const own = await startQemuNbd(disk.top, join(disk.dir, 'single.sock'), ['-B', disk.bitmap, '--shared=1']);
    try {
      // The second connection's handshake is never answered while the first is open: its
      // timeout (short here) ends the attempt, then one connection negotiates both contexts.
      const started = Date.now();
      const s = await NbdSession.open(() => connectSocketChannel({ path: own.socket }), { exportName: '', metaContexts: dirtyReadContexts(disk.bitmap), connections: 2, timeoutMs: 1500 });
      expect(Date.now() - started).toBeLessThan(10_000);
      expect(s.connectionCount).toBe(1);
      await expectDirtyReadThenClose(s);
    } finally {
      await own.stop();
    }
  });

  it('allocation-depth read: exactly the ranges allocated in the top layer (per nbdinfo)', async () => {
    const s = await open(DEPTH_READ_CONTEXTS);
    const extents = await collect(readAllocationDepth(s));
    await s.close();
    checkAgainstReference(extents, disk.reference);
    const local = nbdinfoMap(server.socket, 'qemu:allocation-depth').filter((m) => m.type === 1);
    expect(merged(extents)).toEqual(merged(local));
    expect(local.length).toBeGreaterThan(0);
    // The base's 4 MiB at 1 MiB is not in the top layer.
    expect(extents.some((e) => e.offset < 2 * MiB && e.offset + e.length > 1 * MiB)).toBe(false);
  });

  it('reads raw ranges and block status directly on a connection', async () => {
    const conn = await openNbdConnection(await connectSocketChannel({ path: server.socket }), { exportName: '', metaContexts: FULL_READ_CONTEXTS });
    const reads = await Promise.all(Array.from({ length: 32 }, (_, i) => conn.read(i * 2 * MiB, 2 * MiB)));
    expect(Buffer.concat(reads).equals(disk.reference)).toBe(true);
    const status = await conn.blockStatus(0, disk.size);
    expect(status.get('base:allocation')![0]!.offset).toBe(0);
    await conn.close();
    await expect(conn.read(0, 4096)).rejects.toBeInstanceOf(UnavailableError);
  });

  it('refuses a missing export and a missing bitmap with clear errors', async () => {
    await expect(open(FULL_READ_CONTEXTS, 1, 'nope')).rejects.toThrow(/has no export "nope"/);
    const err = await open(dirtyReadContexts('nosuch')).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UnavailableError);
    expect((err as Error).message).toMatch(/does not offer qemu:dirty-bitmap:nosuch \(it offers: .*qemu:dirty-bitmap:b1/);
  });

  it('a reader refuses a session opened without its contexts', async () => {
    const s = await open(FULL_READ_CONTEXTS);
    await expect(collect(readDirty(s, 'b1'))).rejects.toThrow(/opened without qemu:dirty-bitmap:b1/);
    await s.close();
  });

  it('fails, never hangs, when qemu-nbd dies in the middle of a read', async () => {
    const own = await startQemuNbd(disk.top, join(disk.dir, 'dying.sock'));
    const s = await NbdSession.open(() => connectSocketChannel({ path: own.socket }), { exportName: '', metaContexts: FULL_READ_CONTEXTS });
    const it = readFull(s, { maxRequestBytes: 64 * KiB, maxRequestsInFlight: 4, maxBytesInFlight: 256 * KiB });
    const first = await it.next();
    expect(first.done).toBe(false);
    process.kill(own.pid, 'SIGKILL');
    await expect(collect({ [Symbol.asyncIterator]: () => it })).rejects.toBeInstanceOf(UnavailableError);
    await own.stop();
  });
});
