/**
 * A scripted NBD server for unit tests: a correct fixed-newstyle negotiation by default, and a
 * transmission phase that either serves a Buffer correctly or does whatever a test scripts
 * (wrong magic, truncated replies, error chunks, silence, hang-ups).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const NBDMAGIC = Buffer.from('NBDMAGIC');
export const IHAVEOPT = Buffer.from('IHAVEOPT');
const OPT_REPLY_MAGIC = Buffer.from('0003e889045565a9', 'hex');

export interface Request {
  type: number;
  flags: number;
  cookie: Buffer; // 8 bytes, echoed as is
  offset: number;
  length: number;
}

export interface ServerScript {
  size?: number;
  /** Transmission flags (default HAS_FLAGS | READ_ONLY). */
  flags?: number;
  contexts?: string[];
  minBlock?: number;
  maxBlock?: number;
  /** Replaces the whole negotiation: write what you like to the socket. */
  handshake?: (sock: net.Socket) => void;
  /** Answers one request; default serves `disk`. */
  onRequest?: (req: Request, sock: net.Socket, server: FakeNbdServer) => void;
  disk?: Buffer;
}

export class FakeNbdServer {
  readonly path: string;
  readonly requests: Request[] = [];
  /** Most requests received and not yet answered at once (set by tests' scripts via `answered`). */
  private readonly dir: string;
  private readonly server: net.Server;
  private readonly sockets = new Set<net.Socket>();
  contextIds = new Map<string, number>();
  /** Context ids each client negotiated (SET_META_CONTEXT): block status answers those. */
  readonly negotiated = new WeakMap<net.Socket, number[]>();

  private constructor(readonly script: ServerScript) {
    this.dir = mkdtempSync(join(tmpdir(), 'vp-fake-nbd-'));
    this.path = join(this.dir, 's.sock');
    (script.contexts ?? []).forEach((c, i) => this.contextIds.set(c, 10 + i));
    this.server = net.createServer((sock) => this.accept(sock));
  }

  static async start(script: ServerScript = {}): Promise<FakeNbdServer> {
    const s = new FakeNbdServer(script);
    await new Promise<void>((resolve) => s.server.listen(s.path, resolve));
    return s;
  }

  get size(): number {
    return this.script.size ?? this.script.disk?.length ?? 1024 * 1024;
  }

  async stop(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    rmSync(this.dir, { recursive: true, force: true });
  }

  private accept(sock: net.Socket): void {
    this.sockets.add(sock);
    sock.on('close', () => this.sockets.delete(sock));
    sock.on('error', () => {});
    if (this.script.handshake) {
      this.script.handshake(sock);
      return;
    }
    const greeting = Buffer.alloc(18);
    NBDMAGIC.copy(greeting, 0);
    IHAVEOPT.copy(greeting, 8);
    greeting.writeUInt16BE(3, 16); // FIXED_NEWSTYLE | NO_ZEROES
    sock.write(greeting);
    let buf = Buffer.alloc(0);
    let phase: 'flags' | 'options' | 'transmission' = 'flags';
    sock.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      for (;;) {
        if (phase === 'flags') {
          if (buf.length < 4) return;
          buf = buf.subarray(4);
          phase = 'options';
        } else if (phase === 'options') {
          if (buf.length < 16) return;
          const len = buf.readUInt32BE(12);
          if (buf.length < 16 + len) return;
          const opt = buf.readUInt32BE(8);
          const data = buf.subarray(16, 16 + len);
          buf = buf.subarray(16 + len);
          if (this.option(sock, opt, data)) phase = 'transmission';
        } else {
          if (buf.length < 28) return;
          const req: Request = {
            flags: buf.readUInt16BE(4),
            type: buf.readUInt16BE(6),
            cookie: Buffer.from(buf.subarray(8, 16)),
            offset: Number(buf.readBigUInt64BE(16)),
            length: buf.readUInt32BE(24),
          };
          buf = buf.subarray(28);
          this.requests.push(req);
          if (req.type === 2) {
            sock.end();
            return;
          }
          (this.script.onRequest ?? serveDisk)(req, sock, this);
        }
      }
    });
  }

  /** Handles one option; true when transmission starts. */
  private option(sock: net.Socket, opt: number, data: Buffer): boolean {
    if (opt === 8) {
      sock.write(optReply(opt, 1));
      return false;
    }
    if (opt === 10 || opt === 9) {
      const nameLen = data.readUInt32BE(0);
      let p = 4 + nameLen;
      const n = data.readUInt32BE(p);
      p += 4;
      const asked: string[] = [];
      for (let i = 0; i < n; i++) {
        const l = data.readUInt32BE(p);
        asked.push(data.toString('utf8', p + 4, p + 4 + l));
        p += 4 + l;
      }
      const grant = opt === 9 && asked.length === 0 ? [...this.contextIds.keys()] : asked.filter((a) => this.contextIds.has(a));
      if (opt === 10) this.negotiated.set(sock, grant.map((name) => this.contextIds.get(name)!));
      for (const name of grant) {
        const payload = Buffer.alloc(4 + Buffer.byteLength(name));
        payload.writeUInt32BE(this.contextIds.get(name)!, 0);
        payload.write(name, 4);
        sock.write(optReply(opt, 4, payload));
      }
      sock.write(optReply(opt, 1));
      return false;
    }
    if (opt === 7) {
      const exp = Buffer.alloc(12);
      exp.writeUInt16BE(0, 0);
      exp.writeBigUInt64BE(BigInt(this.size), 2);
      exp.writeUInt16BE(this.script.flags ?? 0b11, 10);
      sock.write(optReply(opt, 3, exp));
      const bs = Buffer.alloc(14);
      bs.writeUInt16BE(3, 0);
      bs.writeUInt32BE(this.script.minBlock ?? 1, 2);
      bs.writeUInt32BE(4096, 6);
      bs.writeUInt32BE(this.script.maxBlock ?? 32 * 1024 * 1024, 10);
      sock.write(optReply(opt, 3, bs));
      sock.write(optReply(opt, 1));
      return true;
    }
    sock.write(optReply(opt, 0x80000001));
    return false;
  }
}

export function optReply(opt: number, type: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.alloc(20 + data.length);
  OPT_REPLY_MAGIC.copy(b, 0);
  b.writeUInt32BE(opt, 8);
  b.writeUInt32BE(type, 12);
  b.writeUInt32BE(data.length, 16);
  data.copy(b, 20);
  return b;
}

export function chunkHeader(req: Request, type: number, length: number, done: boolean, magic = 0x668e33ef): Buffer {
  const b = Buffer.alloc(20);
  b.writeUInt32BE(magic, 0);
  b.writeUInt16BE(done ? 1 : 0, 4);
  b.writeUInt16BE(type, 6);
  req.cookie.copy(b, 8);
  b.writeUInt32BE(length, 16);
  return b;
}

export function offsetData(req: Request, offset: number, data: Buffer, done: boolean): Buffer {
  const off = Buffer.alloc(8);
  off.writeBigUInt64BE(BigInt(offset));
  return Buffer.concat([chunkHeader(req, 1, 8 + data.length, done), off, data]);
}

export function offsetHole(req: Request, offset: number, length: number, done: boolean): Buffer {
  const p = Buffer.alloc(12);
  p.writeBigUInt64BE(BigInt(offset));
  p.writeUInt32BE(length, 8);
  return Buffer.concat([chunkHeader(req, 2, 12, done), p]);
}

export function errorChunk(req: Request, errno: number, message: string, done: boolean): Buffer {
  const msg = Buffer.from(message);
  const p = Buffer.alloc(6 + msg.length);
  p.writeUInt32BE(errno, 0);
  p.writeUInt16BE(msg.length, 4);
  msg.copy(p, 6);
  return Buffer.concat([chunkHeader(req, 0x8001, p.length, done), p]);
}

export function blockStatusChunk(req: Request, contextId: number, descriptors: Array<[number, number]>, done: boolean): Buffer {
  const p = Buffer.alloc(4 + 8 * descriptors.length);
  p.writeUInt32BE(contextId, 0);
  descriptors.forEach(([len, flags], i) => {
    p.writeUInt32BE(len, 4 + 8 * i);
    p.writeUInt32BE(flags, 8 + 8 * i);
  });
  return Buffer.concat([chunkHeader(req, 5, p.length, done), p]);
}

export function noneChunk(req: Request): Buffer {
  return chunkHeader(req, 0, 0, true);
}

export function simpleReply(req: Request, errno: number): Buffer {
  const b = Buffer.alloc(16);
  b.writeUInt32BE(0x67446698, 0);
  b.writeUInt32BE(errno, 4);
  req.cookie.copy(b, 8);
  return b;
}

/** The correct behaviour: reads from `disk` in one data chunk; block status: all data. */
export function serveDisk(req: Request, sock: net.Socket, server: FakeNbdServer): void {
  const disk = server.script.disk ?? Buffer.alloc(server.size);
  if (req.type === 0) {
    sock.write(offsetData(req, req.offset, disk.subarray(req.offset, req.offset + req.length), true));
  } else if (req.type === 7) {
    const ids = server.negotiated.get(sock) ?? [...server.contextIds.values()];
    ids.forEach((id, i) => sock.write(blockStatusChunk(req, id, [[req.length, 0]], i === ids.length - 1)));
  } else {
    sock.write(simpleReply(req, 22));
  }
}
