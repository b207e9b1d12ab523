/**
 * NBD framing against a scripted server: correct replies in odd shapes must give the right
 * bytes; every broken reply must give a clear error — never a hang, never a wrong byte.
 */
import { randomBytes } from 'node:crypto';
import type net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { DataCorruptError, UnavailableError } from '../../../src/errors.js';
import type { Extent } from '../../../src/repository/extents.js';
import { collectExtents, expectSameAsReference } from '../../helpers/extents.js';
import {
  connectSocketChannel,
  dirtyReadContexts,
  FULL_READ_CONTEXTS,
  NbdProtocolError,
  NbdServerError,
  NbdSession,
  newCounters,
  openNbdConnection,
  readDirty,
  readFull,
  type NbdConnection,
} from '../../../src/transport/nbd/index.js';
import {
  blockStatusChunk,
  chunkHeader,
  errorChunk,
  FakeNbdServer,
  IHAVEOPT,
  NBDMAGIC,
  noneChunk,
  offsetData,
  offsetHole,
  optReply,
  serveDisk,
  simpleReply,
  type Request,
  type ServerScript,
} from './fake-nbd-server.js';

const KiB = 1024;
const MiB = 1024 * KiB;

let server: FakeNbdServer | undefined;
afterEach(async () => {
  await server?.stop();
  server = undefined;
});

async function connect(script: ServerScript, options: { metaContexts?: string[]; timeoutMs?: number; idleTimeoutMs?: number } = {}): Promise<NbdConnection> {
  server = await FakeNbdServer.start(script);
  return openNbdConnection(await connectSocketChannel({ path: server.path }), { exportName: '', ...options });
}

async function handshakeError(handshake: (sock: net.Socket) => void, timeoutMs = 2000): Promise<unknown> {
  return connect({ handshake }, { timeoutMs }).then(
    () => new Error('handshake unexpectedly succeeded'),
    (e: unknown) => e,
  );
}

function greeting(flags = 3): Buffer {
  const g = Buffer.alloc(18);
  NBDMAGIC.copy(g, 0);
  IHAVEOPT.copy(g, 8);
  g.writeUInt16BE(flags, 16);
  return g;
}

describe('NBD negotiation', () => {
  it('refuses a server whose greeting is not NBD', async () => {
    const err = await handshakeError((s) => s.write('SSH-2.0-OpenSSH_9.2p1 Debian\r\n'));
    expect(err).toBeInstanceOf(NbdProtocolError);
    expect(err).toBeInstanceOf(DataCorruptError);
    expect((err as Error).message).toMatch(/greeting does not start with NBDMAGIC/);
  });

  it('refuses an oldstyle server', async () => {
    const err = await handshakeError((s) => {
      const g = Buffer.alloc(18);
      NBDMAGIC.copy(g, 0);
      g.writeBigUInt64BE(0x00420281861253n, 8);
      s.write(g);
    });
    expect(err).toBeInstanceOf(UnavailableError);
    expect((err as Error).message).toMatch(/oldstyle/);
  });

  it('refuses a server without fixed newstyle', async () => {
    const err = await handshakeError((s) => s.write(greeting(0)));
    expect((err as Error).message).toMatch(/fixed newstyle/);
  });

  it('reports a greeting cut short by a hang-up', async () => {
    const err = await handshakeError((s) => s.end(greeting().subarray(0, 10)));
    expect(err).toBeInstanceOf(UnavailableError);
    expect((err as Error).message).toMatch(/closed the connection during negotiation \(in the middle of a message: 10 of 18 bytes\)/);
  });

  it('gives up on a server that says nothing', async () => {
    const t0 = Date.now();
    const err = await handshakeError(() => {}, 300);
    expect((err as Error).message).toMatch(/did not complete the handshake within 300 ms/);
    expect(Date.now() - t0).toBeLessThan(2000);
  });

  it('explains a server without structured replies', async () => {
    const err = await handshakeError((s) => {
      s.write(greeting());
      s.once('data', () => s.write(optReply(8, 0x80000001)));
    });
    expect((err as Error).message).toMatch(/does not support structured replies \(ERR_UNSUP/);
  });

  it('refuses an option reply with the wrong magic', async () => {
    const err = await handshakeError((s) => {
      s.write(greeting());
      s.once('data', () => {
        const r = optReply(8, 1);
        r.writeUInt32BE(0xdeadbeef, 0);
        s.write(r);
      });
    });
    expect(err).toBeInstanceOf(NbdProtocolError);
    expect((err as Error).message).toMatch(/option reply with wrong magic/);
  });

  it('names the missing contexts and what the server offers', async () => {
    const err = await connect({ contexts: ['base:allocation', 'qemu:dirty-bitmap:other'] }, { metaContexts: dirtyReadContexts('b1') as string[] }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UnavailableError);
    expect((err as Error).message).toMatch(/does not offer qemu:dirty-bitmap:b1 \(it offers: base:allocation, qemu:dirty-bitmap:other\)/);
  });
});

describe('NBD reads', () => {
  const disk = randomBytes(2 * MiB);

  it('assembles a reply of data and hole chunks in any order into the right bytes', async () => {
    const conn = await connect({
      disk,
      onRequest: (req, sock) => {
        // Second half first, a hole in the middle, then the first quarter, DONE on a NONE chunk.
        const q = req.length / 4;
        sock.write(offsetData(req, req.offset + 2 * q, disk.subarray(req.offset + 2 * q, req.offset + 4 * q), false));
        sock.write(offsetHole(req, req.offset + q, q, false));
        // Dribble the last chunk byte by byte across writes to exercise the parser's states.
        const last = offsetData(req, req.offset, disk.subarray(req.offset, req.offset + q), false);
        for (let i = 0; i < last.length; i += 7) sock.write(last.subarray(i, i + 7));
        sock.write(noneChunk(req));
      },
    });
    const got = await conn.read(4096, 64 * KiB);
    const want = Buffer.from(disk.subarray(4096, 4096 + 64 * KiB));
    want.fill(0, 16 * KiB, 32 * KiB);
    expect(got.equals(want)).toBe(true);
    await conn.close();
  });

  it('keeps many requests in flight: the server sees them all before answering any', async () => {
    const pending: Array<() => void> = [];
    const conn = await connect({
      disk,
      onRequest: (req, sock, srv) => {
        pending.push(() => serveDisk(req, sock, srv));
        if (pending.length === 32) for (const answer of pending.reverse()) answer(); // out of order, too
      },
    });
    const reads = await Promise.all(Array.from({ length: 32 }, (_, i) => conn.read(i * 64 * KiB, 64 * KiB)));
    expect(Buffer.concat(reads).equals(disk)).toBe(true);
    await conn.close();
  });

  it('reports an error chunk with its message, and the connection stays usable', async () => {
    const conn = await connect({
      disk,
      onRequest: (req, sock, srv) => {
        if (req.offset === 0) sock.write(errorChunk(req, 5, 'bad sector', true));
        else serveDisk(req, sock, srv);
      },
    });
    const err = await conn.read(0, 4096).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NbdServerError);
    expect((err as Error).message).toMatch(/failed READ 0\+4096: EIO \(input\/output error\) — bad sector/);
    expect((await conn.read(4096, 4096)).equals(disk.subarray(4096, 8192))).toBe(true);
    await conn.close();
  });

  it('a simple error reply fails only its request', async () => {
    const conn = await connect({ disk, onRequest: (req, sock) => sock.write(simpleReply(req, 22)) });
    await expect(conn.read(0, 512)).rejects.toThrow(/EINVAL/);
    await conn.close();
  });

  const violations: Array<[string, (req: Request, sock: net.Socket) => void, RegExp]> = [
    ['wrong reply magic', (req, sock) => sock.write(chunkHeader(req, 1, 8, true, 0x12345678)), /wrong magic 0x12345678/],
    ['unknown cookie', (req, sock) => sock.write(offsetData({ ...req, cookie: Buffer.from('\0\0\0\0\0\0\x99\x99', 'latin1') }, req.offset, Buffer.alloc(req.length), true)), /unknown cookie/],
    ['truncated reply (DONE before all data)', (req, sock) => sock.write(offsetData(req, req.offset, Buffer.alloc(req.length / 2), true)), /ended after 2048 bytes/],
    ['data outside the request', (req, sock) => sock.write(offsetData(req, req.offset + 1, Buffer.alloc(req.length), true)), /outside the request/],
    [
      'overlapping chunks',
      (req, sock) => {
        sock.write(offsetData(req, req.offset, Buffer.alloc(req.length / 2 + 1), false));
        sock.write(offsetData(req, req.offset + req.length / 2, Buffer.alloc(req.length / 2), true));
      },
      /overlaps data already received/,
    ],
    ['simple success reply to a read', (req, sock) => sock.write(simpleReply(req, 0)), /simple success reply to READ/],
    ['block-status chunk to a read', (req, sock) => sock.write(blockStatusChunk(req, 10, [[req.length, 0]], true)), /BLOCK_STATUS chunk in reply to READ/],
    ['unknown chunk type', (req, sock) => sock.write(chunkHeader(req, 77, 0, true)), /unknown reply chunk type 77/],
    ['error chunk whose message overruns it', (req, sock) => {
      const c = errorChunk(req, 5, 'abc', true);
      c.writeUInt16BE(200, 24);
      sock.write(c);
    }, /overruns/],
  ];

  it.each(violations)('%s: fails every outstanding request with a protocol error', async (_name, misbehave, message) => {
    let n = 0;
    const conn = await connect({
      disk,
      onRequest: (req, sock) => {
        if (++n === 2) misbehave(req, sock); // the first request stays unanswered
      },
    });
    const first = conn.read(0, 4096);
    const second = conn.read(4096, 4096);
    const [a, b] = await Promise.allSettled([first, second]);
    expect(a.status).toBe('rejected');
    expect(b.status).toBe('rejected');
    const err = (b as PromiseRejectedResult).reason as Error;
    expect(err).toBeInstanceOf(NbdProtocolError);
    expect(err.message).toMatch(message);
    expect((a as PromiseRejectedResult).reason).toBe(err);
    // The connection is dead: later requests fail at once instead of reading garbage.
    await expect(conn.read(0, 4096)).rejects.toBe(err);
  });

  it('a hang-up in the middle of a reply fails clearly', async () => {
    const conn = await connect({
      disk,
      onRequest: (req, sock) => sock.end(offsetData(req, req.offset, disk.subarray(req.offset, req.offset + req.length), true).subarray(0, 1000)),
    });
    const err = await conn.read(0, 64 * KiB).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UnavailableError);
    expect((err as Error).message).toMatch(/closed the connection with 1 request\(s\) outstanding, in the middle of a reply/);
  });

  it('a server that stops answering is detected by the idle watchdog', async () => {
    const conn = await connect({ disk, onRequest: () => {} }, { idleTimeoutMs: 300 });
    const t0 = Date.now();
    await expect(conn.read(0, 4096)).rejects.toThrow(/sent nothing for 0 s with 1 request\(s\) outstanding|sent nothing for \d+ s/);
    expect(Date.now() - t0).toBeLessThan(3000);
  });

  it('refuses requests the server could not serve, without sending them', async () => {
    const conn = await connect({ disk, maxBlock: 64 * KiB });
    await expect(conn.read(0, 128 * KiB)).rejects.toThrow(/exceeds the server's maximum/);
    await expect(conn.read(disk.length - 10, 20)).rejects.toThrow(/beyond the export's end/);
    await conn.close();
    expect(server!.requests.filter((r) => r.type === 0)).toHaveLength(0);
  });
});

describe('NBD block status', () => {
  it('clips the final descriptor to the request and refuses zero-length ones', async () => {
    const conn = await connect(
      {
        size: 1 * MiB,
        contexts: ['base:allocation'],
        onRequest: (req, sock) => {
          if (req.offset === 0) sock.write(blockStatusChunk(req, 10, [[4096, 0], [2 * MiB, 3]], true));
          else sock.write(blockStatusChunk(req, 10, [[0, 0]], true));
        },
      },
      { metaContexts: ['base:allocation'] },
    );
    const status = await conn.blockStatus(0, 64 * KiB);
    expect(status.get('base:allocation')).toEqual([
      { offset: 0, length: 4096, flags: 0 },
      { offset: 4096, length: 60 * KiB, flags: 3 },
    ]);
    await expect(conn.blockStatus(4096, 4096)).rejects.toThrow(/descriptor of length 0/);
  });

  it('refuses a reply that lacks a negotiated context', async () => {
    const conn = await connect(
      { size: 1 * MiB, contexts: ['base:allocation', 'qemu:dirty-bitmap:b'], onRequest: (req, sock) => sock.write(blockStatusChunk(req, 10, [[req.length, 0]], true)) },
      { metaContexts: ['base:allocation', 'qemu:dirty-bitmap:b'] },
    );
    await expect(conn.blockStatus(0, 4096)).rejects.toThrow(/no chunk for context qemu:dirty-bitmap:b/);
  });

  it('refuses a chunk for a context that was never negotiated', async () => {
    const conn = await connect(
      { size: 1 * MiB, contexts: ['base:allocation'], onRequest: (req, sock) => sock.write(blockStatusChunk(req, 99, [[req.length, 0]], true)) },
      { metaContexts: ['base:allocation'] },
    );
    await expect(conn.blockStatus(0, 4096)).rejects.toThrow(/unknown context id 99/);
  });
});

describe('extent readers over a scripted server', () => {
  it('walks block status that arrives in small pieces, reads data, detects zero blocks, never widens', async () => {
    const size = 4 * MiB;
    const disk = randomBytes(size);
    disk.fill(0, 0, 1 * MiB); // hole
    disk.fill(0, 2 * MiB, 2 * MiB + 128 * KiB); // allocated but zero bytes
    disk.fill(0, 3 * MiB + 4096); // hole
    // Allocation: [0,1M) hole+zero, [1M,3M) data, [3M,3M+4K) data, [3M+4K,4M) hole+zero.
    const map: Array<[number, number, number]> = [
      [0, 1 * MiB, 3],
      [1 * MiB, 2 * MiB, 0],
      [3 * MiB, 4096, 0],
      [3 * MiB + 4096, size - 3 * MiB - 4096, 3],
    ];
    server = await FakeNbdServer.start({
      disk,
      contexts: ['base:allocation'],
      onRequest: (req, sock, srv) => {
        if (req.type !== 7) return serveDisk(req, sock, srv);
        // At most two descriptors per reply, the last one running past the request.
        const descs: Array<[number, number]> = [];
        for (const [off, len, flags] of map) {
          if (off + len <= req.offset || descs.length === 2) continue;
          descs.push([off + len - Math.max(off, req.offset), flags]);
        }
        sock.write(blockStatusChunk(req, 10, descs, true));
      },
    });
    const session = await NbdSession.open(() => connectSocketChannel({ path: server!.path }), { exportName: '', metaContexts: FULL_READ_CONTEXTS });
    const counters = newCounters();
    const extents = await collectExtents(readFull(session, { maxRequestBytes: 512 * KiB, counters }));
    await session.close();
    // Every byte right, contiguous cover.
    expectSameAsReference(extents, disk);
    // Data extents are one per read (views of its buffer); joined, the map is:
    const runs: Array<[number, number, boolean]> = [];
    for (const e of extents) {
      const last = runs[runs.length - 1];
      if (last && last[2] === !!e.data && last[0] + last[1] === e.offset) last[1] += e.length;
      else runs.push([e.offset, e.length, !!e.data]);
    }
    expect(extents.filter((e) => !e.data).length).toBe(3); // zero extents are merged already
    expect(runs).toEqual([
      [0, 1 * MiB, false],
      [1 * MiB, 1 * MiB, true],
      [2 * MiB, 128 * KiB, false], // zero bytes found in read data
      [2 * MiB + 128 * KiB, 1 * MiB - 128 * KiB + 4096, true],
      [3 * MiB + 4096, size - 3 * MiB - 4096, false],
    ]);
    // Reads: exactly the allocated 2 MiB + 4 KiB, in requests of at most 512 KiB, none widened.
    const reads = server.requests.filter((r) => r.type === 0);
    expect(reads.reduce((n, r) => n + r.length, 0)).toBe(2 * MiB + 4096);
    expect(Math.max(...reads.map((r) => r.length))).toBe(512 * KiB);
    expect(counters.statusRequests).toBeGreaterThan(1);
    expect(counters.zeroBytes + counters.dataBytes).toBe(size);
  });

  it('dirty read: only dirty ranges, dirty ∧ zero as zero extents', async () => {
    const size = 1 * MiB;
    const disk = randomBytes(size);
    disk.fill(0, 256 * KiB, 320 * KiB);
    server = await FakeNbdServer.start({
      disk,
      contexts: ['base:allocation', 'qemu:dirty-bitmap:b'],
      onRequest: (req, sock, srv) => {
        if (req.type !== 7) return serveDisk(req, sock, srv);
        sock.write(blockStatusChunk(req, 10, [[256 * KiB, 0], [64 * KiB, 2], [size - 320 * KiB, 0]], false));
        sock.write(blockStatusChunk(req, 11, [[64 * KiB, 1], [64 * KiB, 0], [192 * KiB, 1], [size - 320 * KiB, 0]], true));
      },
    });
    const session = await NbdSession.open(() => connectSocketChannel({ path: server!.path }), { exportName: '', metaContexts: dirtyReadContexts('b') });
    const extents = await collectExtents(readDirty(session, 'b'));
    await session.close();
    expect(extents.map((e) => [e.offset, e.length, !!e.data])).toEqual([
      [0, 64 * KiB, true],
      [128 * KiB, 128 * KiB, true],
      [256 * KiB, 64 * KiB, false],
    ]);
    for (const e of extents.filter((x) => x.data)) expect(e.data!.equals(disk.subarray(e.offset, e.offset + e.length))).toBe(true);
    expect(server.requests.filter((r) => r.type === 0).map((r) => [r.offset, r.length])).toEqual([
      [0, 64 * KiB],
      [128 * KiB, 128 * KiB],
    ]);
  });

  it('a block status that describes nothing fails instead of spinning', async () => {
    server = await FakeNbdServer.start({
      size: 1 * MiB,
      contexts: ['base:allocation', 'qemu:dirty-bitmap:b'],
      onRequest: (req, sock) => {
        // Only one of the two contexts answered → rejected by the connection itself.
        sock.write(blockStatusChunk(req, 10, [[req.length, 0]], true));
      },
    });
    const session = await NbdSession.open(() => connectSocketChannel({ path: server!.path }), { exportName: '', metaContexts: dirtyReadContexts('b') });
    await expect(collectExtents(readDirty(session, 'b'))).rejects.toBeInstanceOf(NbdProtocolError);
  });

  it('a read failing mid-stream ends the iteration with that error and no unhandled rejections', async () => {
    const disk = randomBytes(4 * MiB);
    let reads = 0;
    server = await FakeNbdServer.start({
      disk,
      contexts: ['base:allocation'],
      onRequest: (req, sock, srv) => {
        if (req.type === 0 && ++reads === 3) sock.write(errorChunk(req, 5, 'media error', true));
        else serveDisk(req, sock, srv);
      },
    });
    const session = await NbdSession.open(() => connectSocketChannel({ path: server!.path }), { exportName: '', metaContexts: FULL_READ_CONTEXTS });
    const got: Extent[] = [];
    const err = await (async () => {
      for await (const e of readFull(session, { maxRequestBytes: 256 * KiB, zeroBlockSize: 0 })) got.push(e);
    })().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NbdServerError);
    expect((err as Error).message).toMatch(/media error/);
    // Only the extents before the failed read were handed out, all correct.
    expect(got.map((e) => e.offset)).toEqual([0, 256 * KiB]);
    await session.close();
  });
});

describe('aborting a reader', () => {
  it('stops at once while a read is outstanding, with the run\'s reason', async () => {
    server = await FakeNbdServer.start({
      size: 4 * MiB,
      contexts: ['base:allocation'],
      onRequest: (req, sock, srv) => {
        if (req.type === 0) return; // reads are never answered
        serveDisk(req, sock, srv);
      },
    });
    const session = await NbdSession.open(() => connectSocketChannel({ path: server!.path }), { exportName: '', metaContexts: FULL_READ_CONTEXTS });
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 200);
    const t0 = Date.now();
    await expect(collectExtents(readFull(session, { signal: ac.signal }))).rejects.toThrow(/interrupted/);
    expect(Date.now() - t0).toBeLessThan(2000);
    session.destroy();
  });
});

describe('opening a session over several connections', () => {
  const MULTI_CONN = 0b1_0000_0011; // HAS_FLAGS | READ_ONLY | CAN_MULTI_CONN
  /** A dialer whose every connection takes `ms` to come up (a slow handshake, e.g. TCP delayed ACKs). */
  const slowDialer = (ms: number) => async () => {
    await new Promise((r) => setTimeout(r, ms));
    return connectSocketChannel({ path: server!.path });
  };

  it('opens every connection at once and reads through all of them', async () => {
    const disk = randomBytes(2 * MiB);
    server = await FakeNbdServer.start({ disk, flags: MULTI_CONN, contexts: ['base:allocation'] });
    const t0 = Date.now();
    const session = await NbdSession.open(slowDialer(300), { exportName: '', metaContexts: FULL_READ_CONTEXTS, connections: 3 });
    // One after the other would take twice the dial time at least.
    expect(Date.now() - t0).toBeLessThan(550);
    expect(session.connectionCount).toBe(3);
    expectSameAsReference(await collectExtents(readFull(session, { maxRequestBytes: 128 * KiB })), disk);
    await session.close();
  });

  it('shares the contexts out: each connection answers block status for one, in one chunk', async () => {
    const size = 1 * MiB;
    const disk = randomBytes(size);
    const asked = new Map<net.Socket, number>();
    server = await FakeNbdServer.start({
      disk,
      flags: MULTI_CONN,
      contexts: ['base:allocation', 'qemu:dirty-bitmap:b'],
      onRequest: (req, sock, srv) => {
        if (req.type !== 7) return serveDisk(req, sock, srv);
        asked.set(sock, (asked.get(sock) ?? 0) + 1);
        const [id, ...more] = srv.negotiated.get(sock)!;
        expect(more).toEqual([]);
        // allocation: all data; bitmap: the second 64 KiB dirty
        const descs: Array<[number, number]> = id === 10 ? [[size, 0]] : [[64 * KiB, 0], [64 * KiB, 1], [size - 128 * KiB, 0]];
        sock.write(blockStatusChunk(req, id!, descs, true));
      },
    });
    const session = await NbdSession.open(() => connectSocketChannel({ path: server!.path }), { exportName: '', metaContexts: dirtyReadContexts('b'), connections: 2 });
    expect(session.connectionCount).toBe(2);
    expect([...session.info.contexts.keys()].sort()).toEqual(['base:allocation', 'qemu:dirty-bitmap:b']);
    const extents = await collectExtents(readDirty(session, 'b'));
    await session.close();
    expect(extents.map((e) => [e.offset, e.length])).toEqual([[64 * KiB, 64 * KiB]]);
    expect(extents[0]!.data!.equals(disk.subarray(64 * KiB, 128 * KiB))).toBe(true);
    expect([...asked.values()]).toEqual([1, 1]);
  });

  it('keeps one connection with every context when the server does not allow multi-conn', async () => {
    server = await FakeNbdServer.start({ size: MiB, contexts: ['base:allocation', 'qemu:dirty-bitmap:b'] });
    const session = await NbdSession.open(() => connectSocketChannel({ path: server!.path }), { exportName: '', metaContexts: dirtyReadContexts('b'), connections: 3 });
    expect(session.connectionCount).toBe(1);
    expect(await collectExtents(readDirty(session, 'b'))).toEqual([]);
    await session.close();
  });

  it('goes on with the connections that answered when a server takes only one client', async () => {
    server = await FakeNbdServer.start({ size: MiB, flags: MULTI_CONN, contexts: ['base:allocation'] });
    const script = server.script;
    let clients = 0;
    // Like qemu-nbd -e 1: later clients are accepted by the socket but never greeted.
    const handshake = (sock: net.Socket) => {
      if (++clients > 1) return;
      delete script.handshake;
      (server as unknown as { accept(s: net.Socket): void }).accept(sock);
      script.handshake = handshake;
    };
    script.handshake = handshake;
    const warnings: string[] = [];
    const log = { debug: () => {}, info: () => {}, warn: (m: string, d?: unknown) => warnings.push(`${m} ${JSON.stringify(d)}`), error: () => {} };
    const session = await NbdSession.open(() => connectSocketChannel({ path: server!.path }), { exportName: '', metaContexts: FULL_READ_CONTEXTS, connections: 2, extraConnectionTimeoutMs: 300, log });
    expect(session.connectionCount).toBe(1);
    expect(warnings.join('\n')).toMatch(/no handshake within 300 ms/);
    await session.close();
  });
});

describe('request batching', () => {
  it('sends the requests a reader issues together in one write (one SSH packet, one syscall)', async () => {
    const disk = randomBytes(2 * MiB);
    server = await FakeNbdServer.start({ disk, contexts: ['base:allocation'] });
    let writes = 0;
    let counting = false;
    const dial = async () => {
      const channel = await connectSocketChannel({ path: server!.path });
      return { ...channel, description: channel.description, write: (d: Buffer) => ((writes += counting ? 1 : 0), channel.write(d)) };
    };
    const session = await NbdSession.open(dial, { exportName: '', metaContexts: FULL_READ_CONTEXTS });
    counting = true;
    const extents = await collectExtents(readFull(session, { maxRequestBytes: 64 * KiB, maxRequestsInFlight: 64 }));
    counting = false;
    await session.close();
    expectSameAsReference(extents, disk);
    const reads = server.requests.filter((r) => r.type === 0).length;
    expect(reads).toBe(32);
    // One block status, then the 32 reads the reader issued in one go.
    expect(writes).toBeLessThanOrEqual(3);
  });
});

describe('recycled read buffers (reuseBuffers)', () => {
  it('are as large as their reads: small dirty ranges get small buffers, bytes right at every size', async () => {
    const size = 8 * MiB;
    const disk = randomBytes(size);
    // Dirty: 16 scattered 64 KiB ranges, then one 1 MiB run (two 512 KiB reads).
    const dirty: Array<[number, number]> = [];
    for (let i = 0; i < 16; i++) dirty.push([i * 256 * KiB, 64 * KiB]);
    dirty.push([6 * MiB, MiB]);
    const descs: Array<[number, number]> = [];
    let at = 0;
    for (const [o, l] of dirty) {
      if (o > at) descs.push([o - at, 0]);
      descs.push([l, 1]);
      at = o + l;
    }
    descs.push([size - at, 0]);
    server = await FakeNbdServer.start({
      disk,
      contexts: ['base:allocation', 'qemu:dirty-bitmap:b'],
      onRequest: (req, sock, srv) => {
        if (req.type !== 7) return serveDisk(req, sock, srv);
        sock.write(blockStatusChunk(req, 10, [[size, 0]], false));
        sock.write(blockStatusChunk(req, 11, descs, true));
      },
    });
    const session = await NbdSession.open(() => connectSocketChannel({ path: server!.path }), { exportName: '', metaContexts: dirtyReadContexts('b') });
    const seen: Array<[number, number, number]> = [];
    for await (const e of readDirty(session, 'b', { reuseBuffers: true, maxRequestBytes: 512 * KiB })) {
      // Checked before asking for the next extent, as the contract allows.
      expect(e.data!.equals(disk.subarray(e.offset, e.offset + e.length))).toBe(true);
      seen.push([e.offset, e.length, e.data!.buffer.byteLength]);
    }
    await session.close();
    expect(seen.map(([o, l]) => [o, l])).toEqual([...dirty.slice(0, 16), [6 * MiB, 512 * KiB], [6 * MiB + 512 * KiB, 512 * KiB]]);
    for (const [, l, bytes] of seen.slice(0, 16)) expect(bytes, `buffer of a ${l}-byte read`).toBeLessThan(512 * KiB);
  });

  it('follow the reads when they grow: after small ranges fill the pool, long runs reuse a bounded set of buffers', async () => {
    const size = 16 * MiB;
    const disk = randomBytes(size);
    // Dirty: 5 scattered 64 KiB data ranges, then 40 zero ranges (the reader queues them without
    // reading, so the 5 small buffers all come back to the pool), then 8 MiB of data in one run
    // (16 reads of 512 KiB).
    const dirtyDescs: Array<[number, number]> = [];
    const allocDescs: Array<[number, number]> = [];
    const add = (length: number, dirty: boolean, zero: boolean) => {
      dirtyDescs.push([length, dirty ? 1 : 0]);
      allocDescs.push([length, zero ? 2 : 0]);
    };
    for (let i = 0; i < 5; i++) add(64 * KiB, true, false), add(192 * KiB, false, false);
    for (let i = 0; i < 40; i++) add(64 * KiB, true, true), add(64 * KiB, false, false);
    add(size - 8 * MiB - 5 * 256 * KiB - 40 * 128 * KiB, false, false);
    add(8 * MiB, true, false);
    server = await FakeNbdServer.start({
      disk,
      contexts: ['base:allocation', 'qemu:dirty-bitmap:b'],
      onRequest: (req, sock, srv) => {
        if (req.type !== 7) return serveDisk(req, sock, srv);
        sock.write(blockStatusChunk(req, 10, allocDescs, false));
        sock.write(blockStatusChunk(req, 11, dirtyDescs, true));
      },
    });
    const session = await NbdSession.open(() => connectSocketChannel({ path: server!.path }), { exportName: '', metaContexts: dirtyReadContexts('b') });
    const large = new Set<ArrayBufferLike>();
    let reads = 0;
    for await (const e of readDirty(session, 'b', { reuseBuffers: true, maxRequestBytes: 512 * KiB, maxRequestsInFlight: 4 })) {
      if (!e.data) continue;
      expect(e.data.equals(disk.subarray(e.offset, e.offset + e.length))).toBe(true);
      if (e.length === 512 * KiB) {
        large.add(e.data.buffer);
        reads++;
      }
    }
    await session.close();
    expect(reads).toBe(16);
    // Reads in flight (4), the one the consumer holds, and the misses while the small ones go.
    expect(large.size).toBeLessThanOrEqual(8);
  });
});
