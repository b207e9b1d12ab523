/**
 * Writing one disk of a point: a full as a sparse raw image plus its block map, an incremental
 * as an rbd diff plus its record index (docs/FORMAT.md §4, §5). Each byte of data is hashed
 * once while it passes (block map or record digest: SHA256SUMS lists the map and the index,
 * which cover the raw image and the diff, FORMAT §6),
 * zero granules are never stored as bytes, and memory is bounded by the write buffers.
 */
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { throwIfAborted } from '../errors.js';
import { BlockImageWriter } from './block-image-writer.js';
import { AtomicFile } from './durable.js';
import { checkedExtents, splitZeroRuns, type Extent } from './extents.js';
import { diskFiles } from './layout.js';
import { AppendFile, HashedFile, LineBuffer } from './hashed-file.js';
import { formatIndexLine, INDEX_HEADER } from './diff-index.js';
import { encodePreamble, encodeWriteHeader, encodeZero, RBD_DIFF_END } from './rbd-diff.js';

/** No diff record carries more than this, so verifying one needs at most this much memory. */
export const MAX_RECORD_BYTES = 4 << 20;

/** Size of each of the two buffers a diff is written through (see writeDiffDisk). */
const DIFF_WRITE_BUFFER = 4 << 20;

export interface DiskStats {
  changedBytes: number;
  dataBytes: number;
  zeroBytes: number;
  storedBytes: number;
  records: number;
}

/** The files a disk left behind, relative to the point, with their sha256 for SHA256SUMS. */
export interface WrittenDisk {
  stats: DiskStats;
  file: string;
  index: string | null;
  blockMap: string | null;
  blockMapSha256: string | null;
  /** Files to list in SHA256SUMS (the raw image is covered by its block map, the diff by its index). */
  sums: { path: string; sha256: string }[];
}

/** Step names for crash tests: called after each file is durable. */
export type StepHook = (step: string) => void | Promise<void>;

interface Common {
  pointDir: string;
  key: string;
  size: number;
  signal?: AbortSignal;
  onStep?: StepHook;
}

export async function writeFullDisk(opts: Common & { blockSize: number }, extents: AsyncIterable<Extent> | Iterable<Extent>): Promise<WrittenDisk> {
  const { pointDir, key, size } = opts;
  const rawPath = diskFiles.raw(key);
  const mapPath = diskFiles.blockMap(key);
  const raw = await AtomicFile.create(join(pointDir, rawPath));
  let map: HashedFile | undefined;
  let writer: BlockImageWriter | undefined;
  try {
    // Size first: every range we do not write stays a hole.
    await raw.handle.truncate(size);
    map = await HashedFile.create(join(pointDir, mapPath), 1 << 20);
    const lines = new LineBuffer(map);
    writer = new BlockImageWriter(raw.data, opts.blockSize, size, (d) => lines.add(`${d.toString('hex')}\n`));
    const stats: DiskStats = { changedBytes: size, dataBytes: 0, zeroBytes: 0, storedBytes: 0, records: 0 };
    for await (const e of checkedExtents(extents, size, `disk ${key}`)) {
      throwIfAborted(opts.signal);
      for (const run of splitZeroRuns(e)) {
        if (!run.data) continue;
        await writer.data(run.offset, run.data);
        stats.dataBytes += run.length;
      }
    }
    await writer.finish();
    await lines.flush();
    await raw.commit();
    await opts.onStep?.(`data:${key}`);
    const mapSha = await map.commit();
    await opts.onStep?.(`blockmap:${key}`);
    stats.zeroBytes = size - stats.dataBytes;
    stats.storedBytes = stats.dataBytes;
    return { stats, file: rawPath, index: null, blockMap: mapPath, blockMapSha256: mapSha, sums: [{ path: mapPath, sha256: mapSha }] };
  } catch (err) {
    await writer?.abort();
    await raw.discard();
    await map?.discard();
    throw err;
  }
}

export async function writeDiffDisk(opts: Common & { fromSnap: string; toSnap: string }, extents: AsyncIterable<Extent> | Iterable<Extent>): Promise<WrittenDisk> {
  const { pointDir, key, size } = opts;
  const diffPath = diskFiles.diff(key);
  const indexPath = diskFiles.index(key);
  // Not hashed as a whole: the index's record digests cover its data (the profile of an
  // incremental had 22 % of vprotect's CPU in sha256, half of it this second hash).
  // 2 × 4 MiB write buffers rather than the default 2 × 8 MiB: each fresh page of buffer costs a
  // page fault the first time (10–20 µs on the lab VM), and larger buffers did not save CPU.
  const diff = await AppendFile.create(join(pointDir, diffPath), DIFF_WRITE_BUFFER);
  let index: HashedFile | undefined;
  try {
    index = await HashedFile.create(join(pointDir, indexPath), 1 << 20);
    const lines = new LineBuffer(index);
    await lines.add(`${INDEX_HEADER}\n`);
    await diff.append(encodePreamble({ fromSnap: opts.fromSnap, toSnap: opts.toSnap, size }));
    const stats: DiskStats = { changedBytes: 0, dataBytes: 0, zeroBytes: 0, storedBytes: 0, records: 0 };
    // Adjacent zero runs (from several extents) become one `z` record.
    let zero: { offset: number; length: number } | undefined;
    const flushZero = async () => {
      if (!zero) return;
      await lines.add(formatIndexLine({ kind: 'z', offset: zero.offset, length: zero.length, fileOffset: diff.size }));
      await diff.append(encodeZero(zero.offset, zero.length));
      stats.zeroBytes += zero.length;
      stats.records++;
      zero = undefined;
    };
    for await (const e of checkedExtents(extents, size, `disk ${key}`)) {
      throwIfAborted(opts.signal);
      stats.changedBytes += e.length;
      for (const run of splitZeroRuns(e)) {
        if (!run.data) {
          if (zero && zero.offset + zero.length === run.offset) zero.length += run.length;
          else {
            await flushZero();
            zero = { offset: run.offset, length: run.length };
          }
          continue;
        }
        await flushZero();
        for (let at = 0; at < run.length; at += MAX_RECORD_BYTES) {
          const data = run.data.subarray(at, Math.min(run.length, at + MAX_RECORD_BYTES));
          const sha = createHash('sha256').update(data).digest('hex');
          await lines.add(formatIndexLine({ kind: 'w', offset: run.offset + at, length: data.length, fileOffset: diff.size, sha256: sha }));
          await diff.append(encodeWriteHeader(run.offset + at, data.length));
          await diff.append(data);
          stats.dataBytes += data.length;
          stats.records++;
        }
      }
    }
    await flushZero();
    await diff.append(RBD_DIFF_END);
    await lines.flush();
    stats.storedBytes = diff.size;
    await diff.commit();
    await opts.onStep?.(`data:${key}`);
    const indexSha = await index.commit();
    await opts.onStep?.(`index:${key}`);
    return {
      stats,
      file: diffPath,
      index: indexPath,
      blockMap: null,
      blockMapSha256: null,
      sums: [{ path: indexPath, sha256: indexSha }],
    };
  } catch (err) {
    await diff.discard();
    await index?.discard();
    throw err;
  }
}
