/**
 * "rbd diff v1", the stream format of `rbd export-diff` / `rbd import-diff` (Ceph
 * doc/dev/rbd-diff.rst; docs/FORMAT.md §5): an encoder, and a streaming, validating parser that
 * holds no more than one input chunk in memory. The ceph-rbd strategy parses `rbd export-diff`
 * output with it on the fly; the repository writes incrementals with the encoder.
 * A bad or truncated stream raises DataCorruptError, never yields a wrong extent silently.
 */
import { DataCorruptError } from '../errors.js';
import type { Extent } from './extents.js';

export const RBD_DIFF_HEADER = Buffer.from('rbd diff v1\n', 'latin1');
/** Bytes before the data of a `w` record: tag, u64 offset, u64 length. */
export const RECORD_HEADER_BYTES = 17;
/** Longest snapshot name accepted (Ceph's limit is far lower; this only bounds memory). */
const MAX_NAME = 4096;

export interface RbdDiffHeader {
  fromSnap?: string;
  toSnap?: string;
  size?: number;
}

function u64(n: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(n));
  return b;
}

export function encodeName(tag: 'f' | 't', name: string): Buffer {
  const bytes = Buffer.from(name, 'utf8');
  const b = Buffer.alloc(5 + bytes.length);
  b.write(tag, 0, 'latin1');
  b.writeUInt32LE(bytes.length, 1);
  bytes.copy(b, 5);
  return b;
}

export function encodeSize(size: number): Buffer {
  return Buffer.concat([Buffer.from('s', 'latin1'), u64(size)]);
}

/** Header of a `w` record; the `length` data bytes follow it. */
export function encodeWriteHeader(offset: number, length: number): Buffer {
  return Buffer.concat([Buffer.from('w', 'latin1'), u64(offset), u64(length)]);
}

export function encodeZero(offset: number, length: number): Buffer {
  return Buffer.concat([Buffer.from('z', 'latin1'), u64(offset), u64(length)]);
}

export const RBD_DIFF_END = Buffer.from('e', 'latin1');

/** The bytes of the stream header and the f/t/s records that vprotect writes before the data. */
export function encodePreamble(h: RbdDiffHeader): Buffer {
  const parts: Buffer[] = [RBD_DIFF_HEADER];
  if (h.fromSnap !== undefined) parts.push(encodeName('f', h.fromSnap));
  if (h.toSnap !== undefined) parts.push(encodeName('t', h.toSnap));
  if (h.size !== undefined) parts.push(encodeSize(h.size));
  return Buffer.concat(parts);
}

/** Bytes of an `s` record. */
export const SIZE_RECORD_BYTES = 9;

/**
 * The preamble of `h` grown to exactly `length` bytes by repeating its size record (the same
 * size again changes nothing for any reader, rbd import-diff included): so a diff that the
 * source's tool wrote with longer snapshot names gets the repository's names without moving its
 * records (docs/FORMAT.md §5). Undefined when no number of size records fills the difference.
 */
export function encodePaddedPreamble(h: RbdDiffHeader & { size: number }, length: number): Buffer | undefined {
  const plain = encodePreamble(h);
  const pad = length - plain.length;
  if (pad < 0 || pad % SIZE_RECORD_BYTES !== 0) return undefined;
  return Buffer.concat([plain, ...Array.from({ length: pad / SIZE_RECORD_BYTES }, () => encodeSize(h.size))]);
}

/**
 * Checks a stream's from/to snapshot names and size against what was asked for (the header of
 * one diff must describe exactly the snapshots read). `header` holds what its f/t/s records said.
 */
export function checkDiffHeader(header: RbdDiffHeader, expected: RbdDiffHeader & { size: number }, what: string): void {
  if (header.fromSnap !== expected.fromSnap) {
    throw new DataCorruptError(`${what}: the stream is ${header.fromSnap === undefined ? 'a full export' : `relative to snapshot ${header.fromSnap}`}, expected ${expected.fromSnap === undefined ? 'a full export' : `snapshot ${expected.fromSnap}`}`);
  }
  if (header.toSnap !== expected.toSnap) throw new DataCorruptError(`${what}: the stream ends at snapshot ${header.toSnap ?? '(none)'}, expected ${expected.toSnap}`);
  if (header.size !== expected.size) throw new DataCorruptError(`${what}: the stream says the image has ${header.size ?? 'no'} bytes, the snapshot has ${expected.size}`);
}

/** A whole diff as a stream of buffers (tests, small tools). The repository's writer streams its own. */
export async function* encodeRbdDiff(h: RbdDiffHeader, extents: AsyncIterable<Extent> | Iterable<Extent>): AsyncGenerator<Buffer> {
  yield encodePreamble(h);
  for await (const e of extents) {
    if (e.data) {
      yield encodeWriteHeader(e.offset, e.length);
      yield e.data;
    } else {
      yield encodeZero(e.offset, e.length);
    }
  }
  yield RBD_DIFF_END;
}

/** Where a record sits, shared by all pieces of one `w` record. */
export interface RbdDiffRecord {
  kind: 'w' | 'z';
  offset: number;
  length: number;
  /** Position of the record's tag byte in the stream. */
  fileOffset: number;
}

export type RbdDiffItem =
  | { type: 'from'; name: string }
  | { type: 'to'; name: string }
  | { type: 'size'; size: number }
  /** A piece of a `w` record's data, in order; `offset` is where this piece goes on the disk. */
  | { type: 'data'; offset: number; data: Buffer; record: RbdDiffRecord }
  | { type: 'zero'; offset: number; length: number; record: RbdDiffRecord }
  | { type: 'end'; fileOffset: number };

/** Pulls exact byte counts out of a chunked stream, keeping at most one chunk around. */
class ByteReader {
  private chunk: Buffer = Buffer.alloc(0);
  private pos = 0;
  /** Bytes consumed so far = position in the stream. */
  consumed = 0;
  private readonly it: AsyncIterator<Buffer | Uint8Array | string>;

  constructor(
    source: AsyncIterable<Buffer | Uint8Array | string>,
    private readonly what: string,
  ) {
    this.it = source[Symbol.asyncIterator]();
  }

  private async fill(): Promise<boolean> {
    while (this.pos >= this.chunk.length) {
      const r = await this.it.next();
      if (r.done) return false;
      const v = r.value;
      this.chunk = typeof v === 'string' ? Buffer.from(v, 'latin1') : Buffer.isBuffer(v) ? v : Buffer.from(v.buffer, v.byteOffset, v.byteLength);
      this.pos = 0;
    }
    return true;
  }

  /** Exactly n bytes (copied only when they span chunks); throws at end of stream. */
  async exact(n: number, context: string): Promise<Buffer> {
    if (!(await this.fill())) this.truncated(context);
    if (this.chunk.length - this.pos >= n) {
      const b = this.chunk.subarray(this.pos, this.pos + n);
      this.pos += n;
      this.consumed += n;
      return b;
    }
    const out = Buffer.alloc(n);
    let got = 0;
    while (got < n) {
      if (!(await this.fill())) this.truncated(context);
      const take = Math.min(n - got, this.chunk.length - this.pos);
      this.chunk.copy(out, got, this.pos, this.pos + take);
      this.pos += take;
      got += take;
      this.consumed += take;
    }
    return out;
  }

  /** Between 1 and n bytes, a view of the current chunk (no copy). */
  async upTo(n: number, context: string): Promise<Buffer> {
    if (!(await this.fill())) this.truncated(context);
    const take = Math.min(n, this.chunk.length - this.pos);
    const b = this.chunk.subarray(this.pos, this.pos + take);
    this.pos += take;
    this.consumed += take;
    return b;
  }

  async atEnd(): Promise<boolean> {
    return !(await this.fill());
  }

  private truncated(context: string): never {
    throw new DataCorruptError(`${this.what}: truncated rbd diff (stream ends at byte ${this.consumed}, inside ${context})`);
  }
}

function readU64(b: Buffer, at: number, what: string, fileOffset: number): number {
  const v = b.readBigUInt64LE(at);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new DataCorruptError(`${what}: value ${v} at byte ${fileOffset + at} is too large for an rbd diff`);
  return Number(v);
}

export interface ParseOptions {
  /** Names the stream in errors (a file path, "rbd export-diff volumes/x@s"). */
  what?: string;
  /** Require ascending, non-overlapping records (true: vprotect's own diffs and rbd export-diff output). */
  ordered?: boolean;
}

/**
 * Parses an rbd diff v1 stream. Validates the header, every tag, lengths, that records lie
 * inside the announced size and (by default) ascend without overlapping, and that the stream
 * ends with `e` and nothing after it.
 */
export async function* parseRbdDiff(source: AsyncIterable<Buffer | Uint8Array | string>, opts: ParseOptions = {}): AsyncGenerator<RbdDiffItem> {
  const what = opts.what ?? 'rbd diff';
  const ordered = opts.ordered !== false;
  const r = new ByteReader(source, what);
  const header = await r.exact(RBD_DIFF_HEADER.length, 'the header');
  if (!header.equals(RBD_DIFF_HEADER)) throw new DataCorruptError(`${what}: not an rbd diff v1 stream (header ${JSON.stringify(header.toString('latin1'))})`);
  let size: number | undefined;
  let end = 0;
  for (;;) {
    const fileOffset = r.consumed;
    const tag = (await r.exact(1, 'a record tag')).toString('latin1');
    switch (tag) {
      case 'f':
      case 't': {
        const len = (await r.exact(4, `the ${tag} record`)).readUInt32LE(0);
        if (len > MAX_NAME) throw new DataCorruptError(`${what}: snapshot name of ${len} bytes at byte ${fileOffset}`);
        const name = (await r.exact(len, `the ${tag} record`)).toString('utf8');
        yield { type: tag === 'f' ? 'from' : 'to', name };
        break;
      }
      case 's': {
        size = readU64(await r.exact(8, 'the size record'), 0, what, fileOffset + 1);
        yield { type: 'size', size };
        break;
      }
      case 'w':
      case 'z': {
        const h = await r.exact(16, `the ${tag} record at byte ${fileOffset}`);
        const offset = readU64(h, 0, what, fileOffset + 1);
        const length = readU64(h, 8, what, fileOffset + 1);
        if (offset + length > Number.MAX_SAFE_INTEGER) throw new DataCorruptError(`${what}: record at byte ${fileOffset} ends past 2^53`);
        if (size !== undefined && offset + length > size) throw new DataCorruptError(`${what}: record ${offset}+${length} at byte ${fileOffset} goes past the image size ${size}`);
        if (ordered && offset < end) throw new DataCorruptError(`${what}: record ${offset}+${length} at byte ${fileOffset} overlaps or precedes the previous one (ended at ${end})`);
        end = offset + length;
        const record: RbdDiffRecord = { kind: tag, offset, length, fileOffset };
        if (tag === 'z') {
          yield { type: 'zero', offset, length, record };
          break;
        }
        let done = 0;
        while (done < length) {
          const data = await r.upTo(length - done, `the data of the w record at byte ${fileOffset}`);
          yield { type: 'data', offset: offset + done, data, record };
          done += data.length;
        }
        break;
      }
      case 'e': {
        if (!(await r.atEnd())) throw new DataCorruptError(`${what}: data after the end record at byte ${fileOffset}`);
        yield { type: 'end', fileOffset };
        return;
      }
      default:
        throw new DataCorruptError(`${what}: unknown record tag 0x${Buffer.from(tag, 'latin1').toString('hex')} at byte ${fileOffset}`);
    }
  }
}

/**
 * The header and the extents of an rbd diff, for strategies: `header` resolves once the first
 * data or zero record (or the end) is reached; `extents` must be consumed for it to progress.
 */
export function rbdDiffExtents(source: AsyncIterable<Buffer | Uint8Array | string>, opts: ParseOptions = {}): { header: RbdDiffHeader; extents: AsyncGenerator<Extent> } {
  const header: RbdDiffHeader = {};
  async function* extents(): AsyncGenerator<Extent> {
    let ended = false;
    for await (const item of parseRbdDiff(source, opts)) {
      switch (item.type) {
        case 'from': header.fromSnap = item.name; break;
        case 'to': header.toSnap = item.name; break;
        case 'size': header.size = item.size; break;
        case 'data': yield { offset: item.offset, length: item.data.length, data: item.data }; break;
        case 'zero': yield { offset: item.offset, length: item.length }; break;
        case 'end': ended = true; break;
      }
    }
    if (!ended) throw new DataCorruptError(`${opts.what ?? 'rbd diff'}: no end record`);
  }
  return { header, extents: extents() };
}
