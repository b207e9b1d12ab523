/**
 * The record index of an incremental's diff (docs/FORMAT.md §5.1), loaded into typed arrays so
 * that the chain reader can find records by binary search (about 57 bytes per record in memory).
 * Loading checks that the index is consistent with itself and with the diff's size, so a
 * damaged index is reported as such instead of sending reads to wrong places.
 */
import { createReadStream } from 'node:fs';
import { createInterface } from 'node:readline';
import { DataCorruptError } from '../errors.js';
import { RECORD_HEADER_BYTES, SIZE_RECORD_BYTES } from './rbd-diff.js';

export const INDEX_HEADER = '# vprotect rbdiff index v1';

export interface IndexRecord {
  kind: 'w' | 'z';
  offset: number;
  length: number;
  fileOffset: number;
  /** hex, or undefined for `z`. */
  sha256?: string;
}

export function formatIndexLine(r: IndexRecord): string {
  return `${r.kind} ${r.offset} ${r.length} ${r.fileOffset} ${r.sha256 ?? '-'}\n`;
}

export class DiffIndex {
  constructor(
    readonly count: number,
    readonly kinds: Uint8Array, // 1 = w, 0 = z
    readonly offsets: Float64Array,
    readonly lengths: Float64Array,
    readonly fileOffsets: Float64Array,
    readonly digests: Buffer,
  ) {}

  isData(i: number): boolean {
    return this.kinds[i] === 1;
  }

  digest(i: number): Buffer {
    return this.digests.subarray(i * 32, i * 32 + 32);
  }

  /** Index of the first record that ends after `offset` (binary search). */
  firstEndingAfter(offset: number): number {
    let lo = 0;
    let hi = this.count;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.offsets[mid]! + this.lengths[mid]! <= offset) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }
}

class Grow {
  data: Float64Array = new Float64Array(1024);
  push(i: number, v: number): void {
    if (i >= this.data.length) {
      const n = new Float64Array(this.data.length * 2);
      n.set(this.data);
      this.data = n;
    }
    this.data[i] = v;
  }
}

/**
 * Loads and checks an index: ascending non-overlapping records inside `size`, file offsets that
 * follow each other exactly from `firstFileOffset` (or that plus repeated size records: a diff
 * written by the source's tool, docs/FORMAT.md §5), and the diff file's length
 * (`diffFileSize` = last record's end + 1 byte for `e`).
 */
export async function loadDiffIndex(path: string, opts: { size: number; firstFileOffset: number; diffFileSize: number; what: string; diffPath?: string }): Promise<DiffIndex> {
  const { what } = opts;
  const rl = createInterface({ input: createReadStream(path, { encoding: 'latin1' }), crlfDelay: Infinity });
  const offsets = new Grow();
  const lengths = new Grow();
  const fileOffsets = new Grow();
  let kinds = new Uint8Array(1024);
  let digests = Buffer.alloc(1024 * 32);
  let n = 0;
  let lineNo = 0;
  let end = 0;
  let nextFileOffset = opts.firstFileOffset;
  // Where the records may start: after the plain preamble, or after it and some repeated `s` records.
  const startsRecords = (at: number) => at >= opts.firstFileOffset && (at - opts.firstFileOffset) % SIZE_RECORD_BYTES === 0;
  const bad = (msg: string): never => {
    throw new DataCorruptError(`${what}: line ${lineNo}: ${msg}`, { data: { file: path } });
  };
  for await (const line of rl) {
    lineNo++;
    if (lineNo === 1) {
      if (line !== INDEX_HEADER) bad(`not a vprotect rbdiff index (expected "${INDEX_HEADER}")`);
      continue;
    }
    const f = line.split(' ');
    if (f.length !== 5) bad('expected 5 fields');
    const [kind, o, l, fo, sha] = f as [string, string, string, string, string];
    if (kind !== 'w' && kind !== 'z') bad(`unknown kind ${kind}`);
    const offset = Number(o);
    const length = Number(l);
    const fileOffset = Number(fo);
    if (![offset, length, fileOffset].every((v) => Number.isSafeInteger(v) && v >= 0) || length === 0) bad('bad number');
    if (offset < end) bad(`record at ${offset} overlaps or precedes the previous one`);
    if (offset + length > opts.size) bad(`record ${offset}+${length} is past the disk size ${opts.size}`);
    if (n === 0 && startsRecords(fileOffset)) nextFileOffset = fileOffset;
    if (fileOffset !== nextFileOffset) bad(`record should start at byte ${nextFileOffset} of the diff, index says ${fileOffset}`);
    if (kind === 'w' ? !/^[0-9a-f]{64}$/.test(sha) : sha !== '-') bad('bad sha256 field');
    end = offset + length;
    nextFileOffset = fileOffset + RECORD_HEADER_BYTES + (kind === 'w' ? length : 0);
    if (n >= kinds.length) {
      const k = new Uint8Array(kinds.length * 2);
      k.set(kinds);
      kinds = k;
      const d = Buffer.alloc(digests.length * 2);
      digests.copy(d);
      digests = d;
    }
    kinds[n] = kind === 'w' ? 1 : 0;
    offsets.push(n, offset);
    lengths.push(n, length);
    fileOffsets.push(n, fileOffset);
    if (kind === 'w') digests.write(sha, n * 32, 'hex');
    n++;
  }
  if (lineNo === 0) bad('empty index');
  if (n === 0 && startsRecords(opts.diffFileSize - 1)) nextFileOffset = opts.diffFileSize - 1;
  if (nextFileOffset + 1 !== opts.diffFileSize) {
    // Named as damage of the diff: the index is checked by SHA256SUMS, the diff's length only here.
    throw new DataCorruptError(`${what}: the diff should be ${nextFileOffset + 1} bytes long by its index, it is ${opts.diffFileSize}`, { data: { file: opts.diffPath ?? path } });
  }
  return new DiffIndex(n, kinds.subarray(0, n), offsets.data.subarray(0, n), lengths.data.subarray(0, n), fileOffsets.data.subarray(0, n), digests.subarray(0, n * 32));
}
