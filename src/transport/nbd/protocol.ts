/**
 * Wire constants and encoders of the NBD protocol (fixed newstyle negotiation, structured
 * replies, block status), as specified in https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md.
 * Pure data: no I/O here, so the framing can be unit-tested byte by byte.
 */

export const NBDMAGIC = 0x4e42444d41474943n; // "NBDMAGIC"
export const IHAVEOPT = 0x49484156454f5054n; // "IHAVEOPT"
export const OLDSTYLE_MAGIC = 0x00420281861253n;
export const OPTION_REPLY_MAGIC = 0x0003e889045565a9n;
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;
export const EXTENDED_REPLY_MAGIC = 0x6e8a278c;

/** Handshake flags (server → client, 16 bits) and client flags (32 bits). */
export const FLAG_FIXED_NEWSTYLE = 1 << 0;
export const FLAG_NO_ZEROES = 1 << 1;

export const Opt = {
  EXPORT_NAME: 1,
  ABORT: 2,
  LIST: 3,
  STARTTLS: 5,
  INFO: 6,
  GO: 7,
  STRUCTURED_REPLY: 8,
  LIST_META_CONTEXT: 9,
  SET_META_CONTEXT: 10,
} as const;

export const OptReply = {
  ACK: 1,
  SERVER: 2,
  INFO: 3,
  META_CONTEXT: 4,
} as const;

/** Option error replies have bit 31 set. */
export const OPT_REPLY_ERROR_BIT = 0x80000000;
const OPT_ERRORS: Record<number, string> = {
  1: 'ERR_UNSUP (option not supported)',
  2: 'ERR_POLICY (refused by server policy)',
  3: 'ERR_INVALID (invalid request)',
  4: 'ERR_PLATFORM (not supported on this platform)',
  5: 'ERR_TLS_REQD (server requires TLS)',
  6: 'ERR_UNKNOWN (no such export)',
  7: 'ERR_SHUTDOWN (server is shutting down)',
  8: 'ERR_BLOCK_SIZE_REQD (server requires block size negotiation)',
  9: 'ERR_TOO_BIG (request too big)',
};
export function optErrorName(type: number): string {
  return OPT_ERRORS[type - OPT_REPLY_ERROR_BIT] ?? `error 0x${type.toString(16)}`;
}

export const Info = {
  EXPORT: 0,
  NAME: 1,
  DESCRIPTION: 2,
  BLOCK_SIZE: 3,
} as const;

/** Transmission flags (16 bits, in NBD_INFO_EXPORT). */
export const TFlag = {
  HAS_FLAGS: 1 << 0,
  READ_ONLY: 1 << 1,
  SEND_FLUSH: 1 << 2,
  SEND_FUA: 1 << 3,
  ROTATIONAL: 1 << 4,
  SEND_TRIM: 1 << 5,
  SEND_WRITE_ZEROES: 1 << 6,
  SEND_DF: 1 << 7,
  CAN_MULTI_CONN: 1 << 8,
  SEND_RESIZE: 1 << 9,
  SEND_CACHE: 1 << 10,
  SEND_FAST_ZERO: 1 << 11,
} as const;

export const Cmd = {
  READ: 0,
  WRITE: 1,
  DISC: 2,
  FLUSH: 3,
  TRIM: 4,
  CACHE: 5,
  WRITE_ZEROES: 6,
  BLOCK_STATUS: 7,
} as const;

export const CmdFlag = {
  FUA: 1 << 0,
  NO_HOLE: 1 << 1,
  DF: 1 << 2,
  REQ_ONE: 1 << 3,
  FAST_ZERO: 1 << 4,
} as const;

export const ReplyFlag = { DONE: 1 << 0 } as const;

export const ReplyType = {
  NONE: 0,
  OFFSET_DATA: 1,
  OFFSET_HOLE: 2,
  BLOCK_STATUS: 5,
  ERROR: (1 << 15) + 1,
  ERROR_OFFSET: (1 << 15) + 2,
} as const;
export const REPLY_TYPE_ERROR_BIT = 1 << 15;

/** base:allocation status bits. */
export const STATE_HOLE = 1 << 0;
export const STATE_ZERO = 1 << 1;
/** qemu:dirty-bitmap:<name> status bit. */
export const STATE_DIRTY = 1 << 0;

export const CONTEXT_BASE_ALLOCATION = 'base:allocation';
export const CONTEXT_ALLOCATION_DEPTH = 'qemu:allocation-depth';
export function dirtyBitmapContext(bitmap: string): string {
  return `qemu:dirty-bitmap:${bitmap}`;
}

/** errno values the protocol uses (Linux numbering is mandated by the spec). */
const ERRNO: Record<number, string> = {
  1: 'EPERM (operation not permitted)',
  5: 'EIO (input/output error)',
  12: 'ENOMEM (out of memory)',
  22: 'EINVAL (invalid argument)',
  28: 'ENOSPC (no space left)',
  75: 'EOVERFLOW (value too large)',
  95: 'ENOTSUP (not supported)',
  108: 'ESHUTDOWN (server is shutting down)',
};
export function errnoName(code: number): string {
  return ERRNO[code] ?? `error ${code}`;
}

export const REQUEST_HEADER_SIZE = 28;
export const SIMPLE_REPLY_HEADER_SIZE = 16;
export const STRUCTURED_REPLY_HEADER_SIZE = 20;
export const OPTION_REPLY_HEADER_SIZE = 20;

/** The largest request length the 32-bit length field can carry. */
export const MAX_REQUEST_LENGTH = 0xffffffff;

export function encodeOption(option: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const buf = Buffer.allocUnsafe(16 + data.length);
  buf.writeBigUInt64BE(IHAVEOPT, 0);
  buf.writeUInt32BE(option, 8);
  buf.writeUInt32BE(data.length, 12);
  data.copy(buf, 16);
  return buf;
}

/** NBD_OPT_GO / NBD_OPT_INFO payload: export name, then the info types we ask for. */
export function encodeGo(exportName: string, infos: readonly number[]): Buffer {
  const name = Buffer.from(exportName, 'utf8');
  const buf = Buffer.allocUnsafe(4 + name.length + 2 + 2 * infos.length);
  let p = buf.writeUInt32BE(name.length, 0);
  p += name.copy(buf, p);
  p = buf.writeUInt16BE(infos.length, p);
  for (const info of infos) p = buf.writeUInt16BE(info, p);
  return buf;
}

/** NBD_OPT_SET_META_CONTEXT / LIST_META_CONTEXT payload. */
export function encodeMetaContextQuery(exportName: string, queries: readonly string[]): Buffer {
  const parts: Buffer[] = [];
  const name = Buffer.from(exportName, 'utf8');
  const head = Buffer.allocUnsafe(4);
  head.writeUInt32BE(name.length, 0);
  parts.push(head, name);
  const count = Buffer.allocUnsafe(4);
  count.writeUInt32BE(queries.length, 0);
  parts.push(count);
  for (const q of queries) {
    const bytes = Buffer.from(q, 'utf8');
    const len = Buffer.allocUnsafe(4);
    len.writeUInt32BE(bytes.length, 0);
    parts.push(len, bytes);
  }
  return Buffer.concat(parts);
}

/** Writes one 28-byte request header into `buf` at `at`. Cookies stay below 2^53. */
export function writeRequest(buf: Buffer, at: number, type: number, flags: number, cookie: number, offset: number, length: number): void {
  buf.writeUInt32BE(REQUEST_MAGIC, at);
  buf.writeUInt16BE(flags, at + 4);
  buf.writeUInt16BE(type, at + 6);
  buf.writeUInt32BE(Math.floor(cookie / 0x100000000), at + 8);
  buf.writeUInt32BE(cookie >>> 0, at + 12);
  buf.writeUInt32BE(Math.floor(offset / 0x100000000), at + 16);
  buf.writeUInt32BE(offset >>> 0, at + 20);
  buf.writeUInt32BE(length, at + 24);
}

/** Reads a 64-bit big-endian unsigned integer as a number; throws past 2^53. */
export function readUint64(buf: Buffer, at: number): number {
  const hi = buf.readUInt32BE(at);
  const lo = buf.readUInt32BE(at + 4);
  if (hi >= 0x200000) throw new RangeError(`64-bit value 0x${hi.toString(16)}${lo.toString(16).padStart(8, '0')} is beyond 2^53`);
  return hi * 0x100000000 + lo;
}
