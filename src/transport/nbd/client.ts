/**
 * One NBD connection in the transmission phase: READ and BLOCK_STATUS requests pipelined on
 * the wire (any number in flight, matched to replies by cookie), replies parsed as a byte
 * stream by a state machine that copies READ payloads straight into each request's own
 * destination buffer — no intermediate buffers, no per-chunk allocations.
 *
 * Every reply is checked against what was asked: magic, cookie, chunk type for the command,
 * offsets inside the request, no overlapping chunks, full coverage before DONE. Any violation
 * kills the connection and fails every outstanding request (NbdProtocolError): a wrong byte
 * must never reach a backup. A server that stops answering is detected by an idle watchdog,
 * so nothing hangs.
 */
import { UnavailableError } from '../../errors.js';
import type { Logger } from '../../log.js';
import type { ByteChannel, ChannelSink, ReadPacing } from './channel.js';
import { NbdProtocolError, NbdServerError } from './errors.js';
import { ByteQueue, negotiate, type ExportInfo, type HandshakeOptions } from './handshake.js';
import {
  Cmd,
  errnoName,
  EXTENDED_REPLY_MAGIC,
  readUint64,
  REPLY_TYPE_ERROR_BIT,
  ReplyFlag,
  ReplyType,
  REQUEST_HEADER_SIZE,
  SIMPLE_REPLY_HEADER_SIZE,
  SIMPLE_REPLY_MAGIC,
  STRUCTURED_REPLY_HEADER_SIZE,
  STRUCTURED_REPLY_MAGIC,
  writeRequest,
} from './protocol.js';

export type { ExportInfo } from './handshake.js';

/** One run of a block-status context: [offset, offset+length) has status `flags`. */
export interface StatusDescriptor {
  offset: number;
  length: number;
  flags: number;
}

/** Block status of one request: context name → descriptors, ascending and contiguous from the request's offset. */
export type BlockStatus = ReadonlyMap<string, readonly StatusDescriptor[]>;

export interface NbdConnectionOptions extends HandshakeOptions {
  /** Fail outstanding requests when the server sends nothing for this long (default 120 s). */
  idleTimeoutMs?: number;
  log?: Logger;
}

/** The largest non-data chunk (block status, error) accepted; qemu sends at most ~1 MiB. */
const MAX_METADATA_CHUNK = 16 * 1024 * 1024;
const NO_COOKIE_HI = 0;

interface Pending {
  cookie: number;
  cmd: number;
  offset: number;
  length: number;
  /** READ: where the payload lands; bytes covered so far; covered [start, end) relative ranges. */
  dest: Buffer | undefined;
  covered: number;
  ranges: Array<[number, number]> | undefined;
  /** BLOCK_STATUS: context id → descriptors. */
  statuses: Map<number, StatusDescriptor[]> | undefined;
  error: NbdServerError | undefined;
  resolve: (value: never) => void;
  reject: (err: Error) => void;
}

type ParseState = 'header' | 'payload' | 'data';

/** Opens an NBD connection over `channel`: negotiation, then ready for requests. */
export async function openNbdConnection(channel: ByteChannel, options: NbdConnectionOptions): Promise<NbdConnection> {
  const queue = new ByteQueue(channel.description);
  let target: ChannelSink = queue;
  channel.attach({
    onData: (chunk) => target.onData(chunk),
    onClose: (err) => target.onClose(err),
  });
  let info: ExportInfo;
  try {
    info = await negotiate(channel, queue, options);
  } catch (err) {
    channel.destroy();
    throw err;
  }
  const conn = new NbdConnection(channel, info, options);
  target = conn.sink;
  for (const early of queue.drain()) conn.sink.onData(early);
  return conn;
}

export class NbdConnection {
  readonly info: ExportInfo;
  readonly description: string;
  /** The channel's read pacing, if it asked for one. */
  readonly pacing: ReadPacing | undefined;
  /** Exposed for openNbdConnection: where the channel's bytes go after negotiation. */
  readonly sink: ChannelSink;

  private readonly channel: ByteChannel;
  private readonly contextNames = new Map<number, string>();
  private readonly pending = new Map<number, Pending>();
  private nextCookie = 1;
  private dead: Error | undefined;
  private closing: Promise<void> | undefined;
  private onDrained: (() => void) | undefined;
  private bytesOutstanding = 0;

  // Outgoing requests are batched: one write (one SSH packet, one syscall) for many. The flush
  // is a nextTick, which runs once the microtask queue is empty: the extent readers issue their
  // requests from an async-generator loop, one microtask chain per request, and a microtask
  // flush went out after every single request (256 writes for 256 reads).
  private outgoing: Buffer[] = [];
  private flushScheduled = false;

  // Reply parser state.
  private state: ParseState = 'header';
  private readonly header = Buffer.alloc(STRUCTURED_REPLY_HEADER_SIZE);
  private headerFill = 0;
  private headerSize = 0;
  private current: Pending | undefined;
  private chunkFlags = 0;
  private chunkType = 0;
  private chunkLength = 0;
  private payload = Buffer.alloc(4096);
  private payloadFill = 0;
  private payloadSize = 0;
  private dataAt = 0; // position in current.dest
  private dataLeft = 0;

  // Idle watchdog.
  private progress = 0;
  private watchdog: NodeJS.Timeout | undefined;

  constructor(channel: ByteChannel, info: ExportInfo, private readonly options: NbdConnectionOptions) {
    this.channel = channel;
    this.info = info;
    this.description = channel.description;
    this.pacing = channel.pacing;
    for (const [name, id] of info.contexts) this.contextNames.set(id, name);
    this.sink = {
      onData: (chunk) => this.feed(chunk),
      onClose: (err) => this.peerClosed(err),
    };
    const idle = options.idleTimeoutMs ?? 120_000;
    const tick = Math.max(10, Math.floor(idle / 4));
    let lastProgress = -1;
    let stalled = 0;
    this.watchdog = setInterval(() => {
      if (this.pending.size === 0 || this.progress !== lastProgress) {
        lastProgress = this.progress;
        stalled = 0;
        return;
      }
      stalled += tick;
      if (stalled >= idle) {
        this.fail(new UnavailableError(`NBD server ${this.description} sent nothing for ${Math.round(stalled / 1000)} s with ${this.pending.size} request(s) outstanding`));
      }
    }, tick);
    this.watchdog.unref();
  }

  /** Requests sent and not yet answered. */
  get outstanding(): number {
    return this.pending.size;
  }

  /** Bytes of READ payload requested and not yet answered (for load balancing). */
  get outstandingBytes(): number {
    return this.bytesOutstanding;
  }

  /** Why this connection can no longer be used, if it cannot. */
  get failure(): Error | undefined {
    return this.dead;
  }

  /**
   * Reads [offset, offset+length) into `into` (its first `length` bytes; a view of it is
   * returned) or into a new buffer. Holes come back as zeros.
   */
  read(offset: number, length: number, into?: Buffer): Promise<Buffer> {
    if (length === 0) return Promise.resolve(Buffer.alloc(0));
    const problem = this.checkRange(offset, length, true);
    if (problem) return Promise.reject(problem);
    if (into && into.length < length) return Promise.reject(new RangeError(`read buffer of ${into.length} bytes is smaller than the ${length} requested`));
    return this.send(Cmd.READ, offset, length, into ? into.subarray(0, length) : Buffer.allocUnsafe(length)) as Promise<Buffer>;
  }

  /**
   * Block status of [offset, offset+length) for every negotiated context. The server may
   * describe less than asked (never nothing); descriptors are clipped to the request.
   */
  blockStatus(offset: number, length: number): Promise<BlockStatus> {
    if (this.info.contexts.size === 0) return Promise.reject(new UnavailableError('block status needs at least one negotiated meta context'));
    const problem = this.checkRange(offset, length, false);
    if (problem) return Promise.reject(problem);
    return this.send(Cmd.BLOCK_STATUS, offset, length, undefined) as Promise<BlockStatus>;
  }

  /** Waits for outstanding replies, sends NBD_CMD_DISC and closes. Idempotent. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      if (!this.dead && this.pending.size > 0) {
        await new Promise<void>((resolve) => {
          this.onDrained = resolve;
        });
      }
      if (!this.dead) {
        const disc = Buffer.allocUnsafe(REQUEST_HEADER_SIZE);
        writeRequest(disc, 0, Cmd.DISC, 0, 0, 0, 0);
        this.flush();
        this.channel.write(disc);
        this.channel.end();
      }
      this.dead ??= new UnavailableError(`NBD connection to ${this.description} is closed`);
      this.stop();
    })();
    return this.closing;
  }

  /** Tears the connection down now; outstanding requests fail with `err`. */
  destroy(err?: Error): void {
    this.fail(err ?? new UnavailableError(`NBD connection to ${this.description} was closed with requests outstanding`));
  }

  private checkRange(offset: number, length: number, isRead: boolean): Error | undefined {
    if (this.dead) return this.dead;
    if (this.closing) return new UnavailableError(`NBD connection to ${this.description} is closing`);
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length <= 0 || length > 0xffffffff) {
      return new RangeError(`invalid NBD request range offset ${offset} length ${length}`);
    }
    if (offset + length > this.info.size) {
      return new RangeError(`NBD request ${offset}+${length} goes beyond the export's end (${this.info.size})`);
    }
    if (isRead && length > this.info.maxBlock) {
      return new RangeError(`NBD read of ${length} bytes exceeds the server's maximum of ${this.info.maxBlock}`);
    }
    return undefined;
  }

  private send(cmd: number, offset: number, length: number, dest: Buffer | undefined): Promise<unknown> {
    return new Promise((resolve, reject) => {
      const cookie = this.nextCookie++;
      const req: Pending = {
        cookie,
        cmd,
        offset,
        length,
        dest,
        covered: 0,
        ranges: dest ? [] : undefined,
        statuses: cmd === Cmd.BLOCK_STATUS ? new Map() : undefined,
        error: undefined,
        resolve: resolve as (v: never) => void,
        reject,
      };
      this.pending.set(cookie, req);
      if (dest) this.bytesOutstanding += length;
      const header = Buffer.allocUnsafe(REQUEST_HEADER_SIZE);
      writeRequest(header, 0, cmd, 0, cookie, offset, length);
      this.outgoing.push(header);
      if (!this.flushScheduled) {
        this.flushScheduled = true;
        process.nextTick(() => this.flush());
      }
    });
  }

  private flush(): void {
    this.flushScheduled = false;
    if (this.outgoing.length === 0 || this.dead) return;
    const batch = this.outgoing.length === 1 ? this.outgoing[0]! : Buffer.concat(this.outgoing);
    this.outgoing = [];
    this.channel.write(batch);
  }

  // ---- reply parsing ------------------------------------------------------------------

  private feed(chunk: Buffer): void {
    if (this.dead) return;
    this.progress++;
    try {
      this.parse(chunk);
    } catch (err) {
      this.fail(err instanceof Error ? err : new Error(String(err)));
    }
  }

  private parse(chunk: Buffer): void {
    let p = 0;
    const end = chunk.length;
    while (p < end && !this.dead) {
      if (this.state === 'data') {
        const n = Math.min(this.dataLeft, end - p);
        chunk.copy(this.current!.dest!, this.dataAt, p, p + n);
        p += n;
        this.dataAt += n;
        this.dataLeft -= n;
        if (this.dataLeft === 0) this.endChunk();
      } else if (this.state === 'header') {
        const want = (this.headerFill < 4 ? 4 : this.headerSize) - this.headerFill;
        const n = Math.min(want, end - p);
        chunk.copy(this.header, this.headerFill, p, p + n);
        p += n;
        this.headerFill += n;
        if (this.headerFill === 4 && this.headerSize === 0) {
          const magic = this.header.readUInt32BE(0);
          if (magic === STRUCTURED_REPLY_MAGIC) this.headerSize = STRUCTURED_REPLY_HEADER_SIZE;
          else if (magic === SIMPLE_REPLY_MAGIC) this.headerSize = SIMPLE_REPLY_HEADER_SIZE;
          else if (magic === EXTENDED_REPLY_MAGIC) throw this.violation('extended-header reply, which was not negotiated');
          else throw this.violation(`reply with wrong magic 0x${magic.toString(16).padStart(8, '0')}`);
        }
        if (this.headerSize !== 0 && this.headerFill === this.headerSize) this.onHeader();
      } else {
        const n = Math.min(this.payloadSize - this.payloadFill, end - p);
        chunk.copy(this.payload, this.payloadFill, p, p + n);
        p += n;
        this.payloadFill += n;
        if (this.payloadFill === this.payloadSize) this.onPayload();
      }
    }
  }

  private violation(message: string): NbdProtocolError {
    return new NbdProtocolError(this.description, message);
  }

  private lookup(offsetOfCookie: number): Pending {
    const hi = this.header.readUInt32BE(offsetOfCookie);
    const lo = this.header.readUInt32BE(offsetOfCookie + 4);
    const cookie = hi * 0x100000000 + lo;
    const req = hi === NO_COOKIE_HI ? this.pending.get(cookie) : undefined;
    if (!req) throw this.violation(`reply for unknown cookie ${cookie} (no such request outstanding)`);
    return req;
  }

  private onHeader(): void {
    const simple = this.headerSize === SIMPLE_REPLY_HEADER_SIZE;
    this.headerFill = 0;
    this.headerSize = 0;
    if (simple) {
      const errno = this.header.readUInt32BE(4);
      const req = this.lookup(8);
      if (errno === 0) {
        // With structured replies negotiated, a simple reply can only report an error for the
        // commands we send: a successful one would carry data in a framing we cannot check.
        throw this.violation(`simple success reply to ${commandName(req.cmd)}, which must use structured replies`);
      }
      req.error = this.serverError(req, errno, '');
      this.finish(req);
      return;
    }
    this.chunkFlags = this.header.readUInt16BE(4);
    this.chunkType = this.header.readUInt16BE(6);
    const req = this.lookup(8);
    this.chunkLength = this.header.readUInt32BE(16);
    this.current = req;
    const type = this.chunkType;
    const len = this.chunkLength;
    switch (type) {
      case ReplyType.NONE:
        if (len !== 0) throw this.violation(`NONE chunk with ${len} payload bytes`);
        if (!(this.chunkFlags & ReplyFlag.DONE)) throw this.violation('NONE chunk without the DONE flag');
        this.endChunk();
        return;
      case ReplyType.OFFSET_DATA:
        if (req.cmd !== Cmd.READ) throw this.violation(`OFFSET_DATA chunk in reply to ${commandName(req.cmd)}`);
        if (len < 9) throw this.violation(`OFFSET_DATA chunk of ${len} bytes (at least 9 expected)`);
        return this.expectPayload(8);
      case ReplyType.OFFSET_HOLE:
        if (req.cmd !== Cmd.READ) throw this.violation(`OFFSET_HOLE chunk in reply to ${commandName(req.cmd)}`);
        if (len !== 12) throw this.violation(`OFFSET_HOLE chunk of ${len} bytes (12 expected)`);
        return this.expectPayload(12);
      case ReplyType.BLOCK_STATUS:
        if (req.cmd !== Cmd.BLOCK_STATUS) throw this.violation(`BLOCK_STATUS chunk in reply to ${commandName(req.cmd)}`);
        if (len < 12 || (len - 4) % 8 !== 0) throw this.violation(`BLOCK_STATUS chunk of ${len} bytes (4 + 8n, n ≥ 1 expected)`);
        if (len > MAX_METADATA_CHUNK) throw this.violation(`BLOCK_STATUS chunk of ${len} bytes is unreasonably large`);
        return this.expectPayload(len);
      default:
        if (type & REPLY_TYPE_ERROR_BIT) {
          if (len < 6) throw this.violation(`error chunk of ${len} bytes (at least 6 expected)`);
          if (len > MAX_METADATA_CHUNK) throw this.violation(`error chunk of ${len} bytes is unreasonably large`);
          return this.expectPayload(len);
        }
        throw this.violation(`unknown reply chunk type ${type}`);
    }
  }

  private expectPayload(size: number): void {
    if (this.payload.length < size) this.payload = Buffer.alloc(Math.max(size, this.payload.length * 2));
    this.payloadSize = size;
    this.payloadFill = 0;
    this.state = 'payload';
  }

  private onPayload(): void {
    const req = this.current!;
    const buf = this.payload;
    switch (this.chunkType) {
      case ReplyType.OFFSET_DATA: {
        // The 8-byte offset has arrived; the data itself is copied straight into dest.
        const at = readUint64(buf, 0);
        const len = this.chunkLength - 8;
        const rel = this.claim(req, at, len, 'OFFSET_DATA');
        this.dataAt = rel;
        this.dataLeft = len;
        this.state = 'data';
        return;
      }
      case ReplyType.OFFSET_HOLE: {
        const at = readUint64(buf, 0);
        const len = buf.readUInt32BE(8);
        if (len === 0) throw this.violation('OFFSET_HOLE of length 0');
        const rel = this.claim(req, at, len, 'OFFSET_HOLE');
        req.dest!.fill(0, rel, rel + len);
        this.endChunk();
        return;
      }
      case ReplyType.BLOCK_STATUS: {
        this.onBlockStatus(req, buf, this.payloadSize);
        this.endChunk();
        return;
      }
      default: {
        // Error chunk: 32-bit errno, 16-bit message length, message (then an offset for ERROR_OFFSET).
        const errno = buf.readUInt32BE(0);
        const msgLen = buf.readUInt16BE(4);
        const extra = this.chunkType === ReplyType.ERROR_OFFSET ? 8 : 0;
        if (6 + msgLen + extra > this.payloadSize) throw this.violation(`error chunk's message of ${msgLen} bytes overruns its ${this.payloadSize}-byte payload`);
        if (errno === 0) throw this.violation('error chunk with error code 0');
        let text = buf.toString('utf8', 6, 6 + msgLen).trim();
        if (extra) text += `${text ? ' ' : ''}(at offset ${readUint64(buf, 6 + msgLen)})`;
        req.error ??= this.serverError(req, errno, text);
        this.endChunk();
        return;
      }
    }
  }

  /** Checks a data/hole chunk lies inside its request and overlaps nothing seen; returns its position in dest. */
  private claim(req: Pending, at: number, len: number, what: string): number {
    const rel = at - req.offset;
    if (rel < 0 || rel + len > req.length) {
      throw this.violation(`${what} chunk ${at}+${len} lies outside the request ${req.offset}+${req.length}`);
    }
    const ranges = req.ranges!;
    for (const [s, e] of ranges) {
      if (rel < e && rel + len > s) throw this.violation(`${what} chunk ${at}+${len} overlaps data already received for request ${req.offset}+${req.length}`);
    }
    ranges.push([rel, rel + len]);
    req.covered += len;
    return rel;
  }

  private onBlockStatus(req: Pending, buf: Buffer, size: number): void {
    const id = buf.readUInt32BE(0);
    const name = this.contextNames.get(id);
    if (name === undefined) throw this.violation(`BLOCK_STATUS for unknown context id ${id}`);
    const statuses = req.statuses!;
    if (statuses.has(id)) throw this.violation(`two BLOCK_STATUS chunks for context ${name} in one reply`);
    const end = Math.min(req.offset + req.length, this.info.size);
    const list: StatusDescriptor[] = [];
    let at = req.offset;
    for (let p = 4; p < size; p += 8) {
      if (at >= end) throw this.violation(`BLOCK_STATUS for ${name} describes beyond the requested ${req.offset}+${req.length}`);
      const length = buf.readUInt32BE(p);
      const flags = buf.readUInt32BE(p + 4);
      if (length === 0) throw this.violation(`BLOCK_STATUS descriptor of length 0 for ${name}`);
      const clipped = Math.min(length, end - at); // only the last may run past the request
      if (clipped < length && p + 8 < size) throw this.violation(`BLOCK_STATUS for ${name} describes beyond the requested ${req.offset}+${req.length}`);
      list.push({ offset: at, length: clipped, flags });
      at += clipped;
    }
    statuses.set(id, list);
  }

  private endChunk(): void {
    const req = this.current!;
    this.state = 'header';
    this.current = undefined;
    if (this.chunkFlags & ReplyFlag.DONE) this.finish(req);
  }

  private finish(req: Pending): void {
    this.pending.delete(req.cookie);
    if (req.dest) this.bytesOutstanding -= req.length;
    if (req.error) {
      req.reject(req.error);
    } else if (req.cmd === Cmd.READ) {
      if (req.covered !== req.length) {
        this.fail(this.violation(`reply to READ ${req.offset}+${req.length} ended after ${req.covered} bytes`), req);
        return;
      }
      req.resolve(req.dest as never);
    } else {
      const result = new Map<string, StatusDescriptor[]>();
      for (const [name, id] of this.info.contexts) {
        const list = req.statuses!.get(id);
        if (!list) {
          this.fail(this.violation(`reply to BLOCK_STATUS ${req.offset}+${req.length} has no chunk for context ${name}`), req);
          return;
        }
        result.set(name, list);
      }
      req.resolve(result as never);
    }
    if (this.pending.size === 0 && this.onDrained) {
      const done = this.onDrained;
      this.onDrained = undefined;
      done();
    }
  }

  private serverError(req: Pending, errno: number, text: string): NbdServerError {
    return new NbdServerError(
      `NBD server ${this.description} failed ${commandName(req.cmd)} ${req.offset}+${req.length}: ${errnoName(errno)}${text ? ` — ${text}` : ''}`,
      errno,
    );
  }

  // ---- teardown -----------------------------------------------------------------------

  private peerClosed(err?: Error): void {
    if (this.dead) {
      this.stop();
      return;
    }
    const mid = this.state !== 'header' || this.headerFill > 0;
    if (err) {
      this.fail(err);
    } else if (this.pending.size > 0 || mid) {
      this.fail(
        new UnavailableError(
          `NBD server ${this.description} closed the connection with ${this.pending.size} request(s) outstanding${mid ? ', in the middle of a reply' : ''}`,
        ),
      );
    } else {
      this.dead = new UnavailableError(`NBD server ${this.description} closed the connection`);
      this.stop();
    }
  }

  /** Marks the connection dead, fails every outstanding request, closes the channel. */
  private fail(err: Error, first?: Pending): void {
    if (this.dead) return;
    this.dead = err;
    this.options.log?.debug('nbd connection failed', { server: this.description, error: err.message });
    if (first) first.reject(err);
    const all = [...this.pending.values()];
    this.pending.clear();
    this.bytesOutstanding = 0;
    for (const req of all) if (req !== first) req.reject(err);
    this.stop();
    this.channel.destroy();
    if (this.onDrained) {
      const done = this.onDrained;
      this.onDrained = undefined;
      done();
    }
  }

  private stop(): void {
    if (this.watchdog) clearInterval(this.watchdog);
    this.watchdog = undefined;
  }
}

function commandName(cmd: number): string {
  switch (cmd) {
    case Cmd.READ:
      return 'READ';
    case Cmd.BLOCK_STATUS:
      return 'BLOCK_STATUS';
    default:
      return `command ${cmd}`;
  }
}
