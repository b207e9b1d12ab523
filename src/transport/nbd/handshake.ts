/**
 * The NBD negotiation phase (fixed newstyle): structured replies, meta contexts for block
 * status, then NBD_OPT_GO asking for the block-size constraints. Sequential and small, so it
 * reads with a simple awaitable byte queue; the fast path is the transmission phase (client.ts).
 */
import { UnavailableError } from '../../errors.js';
import type { ByteChannel, ChannelSink } from './channel.js';
import { NbdProtocolError } from './errors.js';
import {
  encodeGo,
  encodeMetaContextQuery,
  encodeOption,
  FLAG_FIXED_NEWSTYLE,
  FLAG_NO_ZEROES,
  IHAVEOPT,
  Info,
  NBDMAGIC,
  OLDSTYLE_MAGIC,
  Opt,
  OPT_REPLY_ERROR_BIT,
  OPTION_REPLY_HEADER_SIZE,
  OPTION_REPLY_MAGIC,
  optErrorName,
  OptReply,
  readUint64,
  TFlag,
} from './protocol.js';

export interface ExportInfo {
  /** The export's name as asked for ('' is qemu-nbd's default export). */
  name: string;
  size: number;
  /** Transmission flags (TFlag). */
  flags: number;
  readOnly: boolean;
  canMultiConn: boolean;
  /** Block-size constraints; the spec's defaults when the server sent none. */
  minBlock: number;
  preferredBlock: number;
  maxBlock: number;
  /** Negotiated meta contexts: name → the id the server tags block-status chunks with. */
  contexts: ReadonlyMap<string, number>;
}

export interface HandshakeOptions {
  exportName: string;
  /** Meta contexts to negotiate; each must be granted or the handshake fails. */
  metaContexts?: readonly string[];
  /** Whole negotiation must finish within this (default 30 s). */
  timeoutMs?: number;
}

const ERR_UNKNOWN = OPT_REPLY_ERROR_BIT + 6;

/** Largest option reply we accept (descriptions, context names are tiny). */
const MAX_OPTION_REPLY = 1024 * 1024;

/** A sink that queues bytes and lets the negotiation await exactly n of them. */
export class ByteQueue implements ChannelSink {
  private chunks: Buffer[] = [];
  private bytes = 0;
  private waiter: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void } | undefined;
  private closed: Error | undefined;

  constructor(private readonly where: string) {}

  onData(chunk: Buffer): void {
    this.chunks.push(Buffer.from(chunk)); // copy: the channel may reuse its buffer
    this.bytes += chunk.length;
    this.wake();
  }

  onClose(err?: Error): void {
    this.closed = err ?? new UnavailableError(`NBD server ${this.where} closed the connection during negotiation`);
    this.wake();
  }

  fail(err: Error): void {
    if (!this.closed) this.closed = err;
    this.wake();
  }

  read(n: number): Promise<Buffer> {
    return new Promise((resolve, reject) => {
      this.waiter = { n, resolve, reject };
      this.wake();
    });
  }

  /** Whatever arrived beyond what negotiation consumed (handed to the transmission parser). */
  drain(): Buffer[] {
    const rest = this.chunks;
    this.chunks = [];
    this.bytes = 0;
    return rest;
  }

  private wake(): void {
    const w = this.waiter;
    if (!w) return;
    if (this.bytes >= w.n) {
      this.waiter = undefined;
      w.resolve(this.take(w.n));
    } else if (this.closed) {
      this.waiter = undefined;
      const err = this.closed;
      w.reject(
        err instanceof UnavailableError && this.bytes > 0
          ? new UnavailableError(`${err.message} (in the middle of a message: ${this.bytes} of ${w.n} bytes)`, { cause: err.cause })
          : err,
      );
    }
  }

  private take(n: number): Buffer {
    const first = this.chunks[0];
    if (first && first.length >= n) {
      const out = first.subarray(0, n);
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
      this.bytes -= n;
      return out;
    }
    const all = Buffer.concat(this.chunks);
    this.chunks = all.length > n ? [all.subarray(n)] : [];
    this.bytes -= n;
    return all.subarray(0, n);
  }
}

interface OptionReply {
  type: number;
  data: Buffer;
}

/**
 * Runs the negotiation on `channel` (attached to `queue`) and returns what was agreed.
 * Throws NbdProtocolError for broken framing, UnavailableError when the server refuses.
 */
export async function negotiate(channel: ByteChannel, queue: ByteQueue, options: HandshakeOptions): Promise<ExportInfo> {
  const where = channel.description;
  const timeoutMs = options.timeoutMs ?? 30_000;
  const timer = setTimeout(() => queue.fail(new UnavailableError(`NBD server ${where} did not complete the handshake within ${timeoutMs} ms`)), timeoutMs);
  try {
    return await run();
  } finally {
    clearTimeout(timer);
  }

  async function run(): Promise<ExportInfo> {
    const greeting = await queue.read(18);
    const magic = greeting.readBigUInt64BE(0);
    if (magic !== NBDMAGIC) throw new NbdProtocolError(where, `greeting does not start with NBDMAGIC (got 0x${magic.toString(16)}): is this an NBD server?`);
    const style = greeting.readBigUInt64BE(8);
    if (style === OLDSTYLE_MAGIC) throw new UnavailableError(`NBD server ${where} speaks only the oldstyle protocol, which has no export names or block status`);
    if (style !== IHAVEOPT) throw new NbdProtocolError(where, `unknown negotiation magic 0x${style.toString(16)}`);
    const serverFlags = greeting.readUInt16BE(16);
    if (!(serverFlags & FLAG_FIXED_NEWSTYLE)) throw new UnavailableError(`NBD server ${where} does not support the fixed newstyle negotiation`);
    const clientFlags = Buffer.allocUnsafe(4);
    clientFlags.writeUInt32BE(FLAG_FIXED_NEWSTYLE | (serverFlags & FLAG_NO_ZEROES), 0);
    channel.write(clientFlags);

    // Structured replies: needed for block status and for holes in reads.
    channel.write(encodeOption(Opt.STRUCTURED_REPLY));
    const sr = await readOptionReply(Opt.STRUCTURED_REPLY);
    if (sr.type !== OptReply.ACK) {
      throw new UnavailableError(`NBD server ${where} does not support structured replies (${describeReplyType(sr.type)}); block status needs them`);
    }

    const wanted = options.metaContexts ?? [];
    const contexts = new Map<string, number>();
    if (wanted.length > 0) {
      channel.write(encodeOption(Opt.SET_META_CONTEXT, encodeMetaContextQuery(options.exportName, wanted)));
      for (;;) {
        const r = await readOptionReply(Opt.SET_META_CONTEXT);
        if (r.type === OptReply.ACK) break;
        if (r.type === OptReply.META_CONTEXT) {
          if (r.data.length < 4) throw new NbdProtocolError(where, 'META_CONTEXT reply shorter than its context id');
          contexts.set(r.data.toString('utf8', 4), r.data.readUInt32BE(0));
          continue;
        }
        if (r.type === ERR_UNKNOWN) throw noSuchExport(r.data);
        if (r.type & OPT_REPLY_ERROR_BIT) {
          throw new UnavailableError(`NBD server ${where} refused block-status contexts ${wanted.join(', ')}: ${optErrorName(r.type)}${message(r.data)}`);
        }
        throw new NbdProtocolError(where, `unexpected reply ${describeReplyType(r.type)} to SET_META_CONTEXT`);
      }
      const missing = wanted.filter((c) => !contexts.has(c));
      if (missing.length > 0) {
        const offered = await listContexts();
        throw new UnavailableError(
          `NBD export ${JSON.stringify(options.exportName)} on ${where} does not offer ${missing.join(', ')} (it offers: ${offered.length ? offered.join(', ') : 'none'})`,
          { hint: missing.some((m) => m.startsWith('qemu:dirty-bitmap:')) ? 'the bitmap must be exported: qemu-nbd -B NAME, or a libvirt incremental backup job' : undefined },
        );
      }
    }

    channel.write(encodeOption(Opt.GO, encodeGo(options.exportName, [Info.BLOCK_SIZE])));
    let size: number | undefined;
    let flags = 0;
    let minBlock = 1;
    let preferredBlock = 4096;
    let maxBlock = 32 * 1024 * 1024;
    for (;;) {
      const r = await readOptionReply(Opt.GO);
      if (r.type === OptReply.ACK) break;
      if (r.type === OptReply.INFO) {
        if (r.data.length < 2) throw new NbdProtocolError(where, 'INFO reply without an info type');
        const info = r.data.readUInt16BE(0);
        if (info === Info.EXPORT) {
          if (r.data.length !== 12) throw new NbdProtocolError(where, `INFO_EXPORT of ${r.data.length} bytes (expected 12)`);
          size = readUint64(r.data, 2);
          flags = r.data.readUInt16BE(10);
        } else if (info === Info.BLOCK_SIZE) {
          if (r.data.length !== 14) throw new NbdProtocolError(where, `INFO_BLOCK_SIZE of ${r.data.length} bytes (expected 14)`);
          minBlock = r.data.readUInt32BE(2);
          preferredBlock = r.data.readUInt32BE(6);
          maxBlock = r.data.readUInt32BE(10);
          if (minBlock < 1 || (minBlock & (minBlock - 1)) !== 0 || preferredBlock < minBlock || maxBlock < minBlock) {
            throw new NbdProtocolError(where, `impossible block sizes min ${minBlock} preferred ${preferredBlock} max ${maxBlock}`);
          }
        }
        continue; // other infos (name, description) are not needed
      }
      if (r.type === ERR_UNKNOWN) throw noSuchExport(r.data);
      if (r.type & OPT_REPLY_ERROR_BIT) {
        throw new UnavailableError(`NBD server ${where} refused export ${JSON.stringify(options.exportName)}: ${optErrorName(r.type)}${message(r.data)}`);
      }
      throw new NbdProtocolError(where, `unexpected reply ${describeReplyType(r.type)} to GO`);
    }
    if (size === undefined) throw new NbdProtocolError(where, 'GO was acknowledged without INFO_EXPORT (export size unknown)');
    return {
      name: options.exportName,
      size,
      flags,
      readOnly: (flags & TFlag.READ_ONLY) !== 0,
      canMultiConn: (flags & TFlag.CAN_MULTI_CONN) !== 0,
      minBlock,
      preferredBlock,
      maxBlock,
      contexts,
    };
  }

  function noSuchExport(data: Buffer): UnavailableError {
    return new UnavailableError(`NBD server ${where} has no export ${JSON.stringify(options.exportName)}${message(data)}`, {
      hint: 'qemu-nbd serves "" unless started with -x NAME; a libvirt backup job names its exports after the disk target (vda)',
    });
  }

  async function readOptionReply(option: number): Promise<OptionReply> {
    const head = await queue.read(OPTION_REPLY_HEADER_SIZE);
    const magic = head.readBigUInt64BE(0);
    if (magic !== OPTION_REPLY_MAGIC) throw new NbdProtocolError(where, `option reply with wrong magic 0x${magic.toString(16)}`);
    const echoed = head.readUInt32BE(8);
    if (echoed !== option) throw new NbdProtocolError(where, `reply for option ${echoed} while waiting for option ${option}`);
    const type = head.readUInt32BE(12);
    const length = head.readUInt32BE(16);
    if (length > MAX_OPTION_REPLY) throw new NbdProtocolError(where, `option reply of ${length} bytes`);
    const data = length ? await queue.read(length) : Buffer.alloc(0);
    return { type, data };
  }

  /** Best effort list of what the export offers, for the error message only. */
  async function listContexts(): Promise<string[]> {
    const names: string[] = [];
    try {
      channel.write(encodeOption(Opt.LIST_META_CONTEXT, encodeMetaContextQuery(options.exportName, [])));
      for (;;) {
        const r = await readOptionReply(Opt.LIST_META_CONTEXT);
        if (r.type !== OptReply.META_CONTEXT) break;
        if (r.data.length >= 4) names.push(r.data.toString('utf8', 4));
      }
    } catch {
      // The listing only decorates an error message; its own failure changes nothing.
    }
    return names;
  }
}

function message(data: Buffer): string {
  const text = data.toString('utf8').trim();
  return text ? ` — ${text}` : '';
}

function describeReplyType(type: number): string {
  if (type & OPT_REPLY_ERROR_BIT) return optErrorName(type);
  return `type ${type}`;
}
