/**
 * The data-plane unit shared by strategies and the repository (DESIGN.md §3): a disk is
 * described by an ascending, non-overlapping sequence of extents, each either bytes or zeros.
 */
import { DataCorruptError } from '../errors.js';

/** `data` present: these bytes (length === data.length). Absent: the range reads as zeros. */
export type Extent = { offset: number; length: number; data?: Buffer };

/** Zero detection granularity: the page size, so holes line up with file system blocks. */
export const ZERO_GRANULE = 4096;

const zeroPage = Buffer.alloc(1 << 20);

/** True when every byte of `buf` is 0 (memcmp against a shared zero page; ~35 GB/s). */
export function isZero(buf: Buffer): boolean {
  for (let pos = 0; pos < buf.length; pos += zeroPage.length) {
    const end = Math.min(buf.length, pos + zeroPage.length);
    if (!buf.subarray(pos, end).equals(zeroPage.subarray(0, end - pos))) return false;
  }
  return true;
}

/** A shared read-only buffer of zeros, at least `length` long (for hashing holes). */
export function zeros(length: number): Buffer {
  return length <= zeroPage.length ? zeroPage.subarray(0, length) : Buffer.alloc(length);
}

/**
 * isZero of data[start, end), with its first bytes looked at here first: a data granule almost
 * always has a non-zero byte among them, and then no view and no memcmp call is made (about a
 * quarter million granules per GiB).
 */
function granuleIsZero(data: Buffer, start: number, end: number): boolean {
  const probe = Math.min(end, start + 16);
  for (let i = start; i < probe; i++) if (data[i] !== 0) return false;
  return isZero(data.subarray(start, end));
}

/**
 * Splits a data extent into runs of data and zeros at ZERO_GRANULE boundaries (absolute disk
 * offsets), so that zero pages inside data are never stored as bytes. Adjacent runs of the same
 * kind are merged; the data runs are views of the input buffer (no copy).
 */
export function* splitZeroRuns(extent: Extent): Generator<Extent> {
  const { offset, data } = extent;
  if (!data) {
    if (extent.length > 0) yield extent;
    return;
  }
  let runStart = 0;
  let runZero: boolean | undefined;
  let pos = 0;
  while (pos < data.length) {
    const next = Math.min(data.length, pos + ZERO_GRANULE - ((offset + pos) % ZERO_GRANULE));
    const zero = granuleIsZero(data, pos, next);
    if (runZero !== undefined && zero !== runZero) {
      yield runZero ? { offset: offset + runStart, length: pos - runStart } : { offset: offset + runStart, length: pos - runStart, data: data.subarray(runStart, pos) };
      runStart = pos;
    }
    runZero = zero;
    pos = next;
  }
  if (runZero !== undefined && pos > runStart) {
    yield runZero ? { offset: offset + runStart, length: pos - runStart } : { offset: offset + runStart, length: pos - runStart, data: data.subarray(runStart, pos) };
  }
}

/**
 * Passes extents through, checking the contract: ascending, non-overlapping, inside `size`,
 * data length matching. A strategy bug must fail the point, never write a wrong one.
 */
export async function* checkedExtents(extents: AsyncIterable<Extent> | Iterable<Extent>, size: number, what: string): AsyncGenerator<Extent> {
  let end = 0;
  for await (const e of extents) {
    if (!Number.isSafeInteger(e.offset) || !Number.isSafeInteger(e.length) || e.offset < 0 || e.length < 0) {
      throw new DataCorruptError(`${what}: invalid extent ${e.offset}+${e.length}`);
    }
    if (e.offset < end) throw new DataCorruptError(`${what}: extent at ${e.offset} overlaps or is out of order (previous ended at ${end})`);
    if (e.offset + e.length > size) throw new DataCorruptError(`${what}: extent ${e.offset}+${e.length} goes past the disk size ${size}`);
    if (e.data && e.data.length !== e.length) throw new DataCorruptError(`${what}: extent at ${e.offset} says ${e.length} bytes but carries ${e.data.length}`);
    end = e.offset + e.length;
    if (e.length > 0) yield e;
  }
}
