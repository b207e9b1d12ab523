/**
 * A random-access view of one disk at one point: the chain's full image with the point's
 * ancestors' diffs laid over it in order (DESIGN.md §4). Restore, verify, merge and export all
 * read through it. Every byte it returns has been checked: a `w` record against its sha256 in
 * the index, a block of the full image against the block map. A mismatch raises
 * DataCorruptError naming the file; nothing wrong is ever returned.
 */
import { createHash } from 'node:crypto';
import { open, readFile, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { DataCorruptError, DestinationError, throwIfAborted, UsageError } from '../errors.js';
import { digestAt, parseBlockMap, zeroDigest } from './block-map.js';
import { BufferPool } from '../util/buffer-pool.js';
import { readAt } from './coalescing-writer.js';
import { DirectReader } from './direct-io.js';
import { MAX_RECORD_BYTES } from './disk-writers.js';
import { DiffIndex, loadDiffIndex } from './diff-index.js';
import type { Extent } from './extents.js';
import type { DiskEntry } from './manifest.js';
import { sha256Off } from './hash-worker.js';
import { encodePreamble, RECORD_HEADER_BYTES } from './rbd-diff.js';
import type { PointInfo, Repository } from './repository.js';

/** A range of the disk and where its bytes come from: layer -1 = zeros, 0 = the full image, n = the n-th diff. */
export interface Segment {
  start: number;
  end: number;
  layer: number;
  /** Record number in that diff's index (-1 for the full image and zeros). */
  record: number;
}

interface BaseLayer {
  kind: 'raw';
  point: PointInfo;
  path: string;
  fh: FileHandle;
  /** The same file read around the page cache (direct-io.ts), for whole blocks. */
  direct: DirectReader;
  size: number;
  blockSize: number;
  /** Concatenated digests; undefined means "do not check" (never for a normal read). */
  map: Buffer | undefined;
}

interface DiffLayer {
  kind: 'diff';
  point: PointInfo;
  path: string;
  fh: FileHandle;
  size: number;
  index: DiffIndex;
}

type Layer = BaseLayer | DiffLayer | { kind: 'none'; point: PointInfo; size: 0 };

/**
 * Lays the records of one diff over the current segments after resizing them to `newSize`
 * (a diff may grow or shrink the disk). Records must be ascending and non-overlapping.
 */
export function overlay(segments: Segment[], oldSize: number, newSize: number, layer: number, index: { count: number; offsets: ArrayLike<number>; lengths: ArrayLike<number> }): Segment[] {
  const base: Segment[] = [];
  for (const s of segments) {
    if (s.start >= newSize) break;
    base.push(s.end > newSize ? { ...s, end: newSize } : s);
  }
  if (newSize > oldSize) base.push({ start: oldSize, end: newSize, layer: -1, record: -1 });
  const out: Segment[] = [];
  let i = 0;
  let cur: Segment | undefined = base[0];
  for (let r = 0; r < index.count; r++) {
    const rs = index.offsets[r]!;
    const re = rs + index.lengths[r]!;
    // Segments entirely before the record stay as they are.
    while (cur && cur.end <= rs) {
      out.push(cur);
      cur = base[++i];
    }
    if (cur && cur.start < rs) out.push({ ...cur, end: rs });
    // Skip what the record covers; keep the tail of a segment that reaches past it.
    while (cur && cur.end <= re) cur = base[++i];
    if (cur && cur.start < re) cur = { ...cur, start: re };
    out.push({ start: rs, end: re, layer, record: r });
  }
  while (cur) {
    out.push(cur);
    cur = base[++i];
  }
  return out;
}

export interface ExtentOptions {
  from?: number;
  to?: number;
  signal?: AbortSignal;
  /**
   * Read into recycled buffers (src/util/buffer-pool.ts): an extent's `data` is then valid only
   * until the next extent is requested, so the consumer must write, hash or copy it before
   * asking for more. A consumer that queues the bytes (a stream's write buffer) must not set
   * it. Fresh multi-MiB buffers fault in every page on first touch; reusing them made restore
   * several times faster. Default false (every extent owns its bytes).
   */
  reuseBuffers?: boolean;
}

/** One block or record held while its extents are out, with the pool buffer it lives in. */
interface Held {
  layer: number;
  /** Block number (full image) or record number (diff). */
  n: number;
  data: Buffer;
  buffer: Buffer | undefined;
  /** sha256 of `data`, when computed ahead (on the hash worker). */
  digest?: Buffer;
}

/**
 * The state of one extents() walk: the block and records whose extents may still be in the
 * consumer's hands (a segment boundary can split one, so they are kept for the next segment),
 * the next blocks of the full image read ahead and hashed on the worker (while this thread
 * hands out the current one), and with reuseBuffers the pools everything is read into.
 */
class Walk {
  block: Held | undefined;
  /** In block order, all of one layer and segment. */
  ahead: (Omit<Held, 'data'> & { ready: Promise<{ data: Buffer; digest?: Buffer }> })[] = [];
  readonly records = new Map<number, Held>();
  private readonly blockPools = new Map<number, BufferPool>();
  private readonly recordPool: BufferPool | undefined;

  constructor(readonly reuse: boolean) {
    this.recordPool = reuse ? new BufferPool(RECORD_HEADER_BYTES + MAX_RECORD_BYTES, 2) : undefined;
  }

  takeBlockBuffer(size: number): Buffer | undefined {
    if (!this.reuse) return undefined;
    let pool = this.blockPools.get(size);
    // Shared memory: the hash worker reads the block where it was read to.
    if (!pool) this.blockPools.set(size, (pool = new BufferPool(size, READ_AHEAD + 1, true)));
    return pool.take();
  }

  takeRecordBuffer(length: number): Buffer | undefined {
    // A record larger than ours (an imported diff) gets a buffer of its own.
    return this.recordPool && length + RECORD_HEADER_BYTES <= this.recordPool.bufferSize ? this.recordPool.take() : undefined;
  }

  /** Hands a buffer back: only once the consumer has asked for the extent after its last view. */
  give(buffer: Buffer | undefined): void {
    if (!buffer) return;
    if (buffer.length === this.recordPool?.bufferSize) this.recordPool.give(buffer);
    else this.blockPools.get(buffer.length)?.give(buffer);
  }

  /** Waits for read-aheads nobody will use, so no read outlives the walk. */
  async abandonAhead(): Promise<void> {
    const all = this.ahead.splice(0);
    for (const a of all) await a.ready.then(() => this.give(a.buffer), () => {});
  }
}

export class DiskReader {
  constructor(
    readonly point: PointInfo,
    readonly key: string,
    readonly size: number,
    readonly layers: Layer[],
    readonly segments: Segment[],
  ) {}

  /** The disk's extents in [from, to): data (checked) or zeros; pieces of at most one block or record. */
  async *extents(opts: ExtentOptions = {}): AsyncGenerator<Extent> {
    const from = opts.from ?? 0;
    const to = Math.min(opts.to ?? this.size, this.size);
    const walk = new Walk(opts.reuseBuffers ?? false);
    try {
      let i = firstSegmentEndingAfter(this.segments, from);
      for (; i < this.segments.length && this.segments[i]!.start < to; i++) {
        throwIfAborted(opts.signal);
        const seg = this.segments[i]!;
        const s = Math.max(seg.start, from);
        const e = Math.min(seg.end, to);
        const layer = seg.layer < 0 ? undefined : this.layers[seg.layer];
        if (!layer || layer.kind === 'none') {
          yield { offset: s, length: e - s };
        } else if (layer.kind === 'raw') {
          for (let pos = s; pos < e; ) {
            const block = Math.floor(pos / layer.blockSize);
            const blockStart = block * layer.blockSize;
            const blockLength = Math.min(layer.blockSize, layer.size - blockStart);
            // The block map says this block is all zeros: it is a hole in the image, so do not
            // read it (a mostly empty 1 TiB disk restores without reading 1 TiB of holes).
            // `verify --read-data` still reads every block of the file against the map.
            if (isZeroBlock(layer, block)) {
              const end = Math.min(e, blockStart + blockLength);
              yield { offset: pos, length: end - pos };
              pos = end;
              continue;
            }
            const data = await this.baseBlock(walk, seg.layer, layer, block, e);
            const end = Math.min(e, blockStart + data.length);
            yield { offset: pos, length: end - pos, data: data.subarray(pos - blockStart, end - blockStart) };
            pos = end;
          }
        } else if (!layer.index.isData(seg.record)) {
          yield { offset: s, length: e - s };
        } else {
          const data = await this.record(walk, seg.layer, layer, seg.record);
          const rs = layer.index.offsets[seg.record]!;
          yield { offset: s, length: e - s, data: data.subarray(s - rs, e - rs) };
        }
      }
    } finally {
      await walk.abandonAhead();
    }
  }

  /** Bytes [offset, offset+length) (random access; zeros are materialised). */
  async read(offset: number, length: number): Promise<Buffer> {
    if (offset < 0 || offset + length > this.size) throw new UsageError(`read ${offset}+${length} is outside the disk (${this.size} bytes)`);
    const out = Buffer.alloc(length);
    for await (const e of this.extents({ from: offset, to: offset + length, reuseBuffers: true })) if (e.data) e.data.copy(out, e.offset - offset);
    return out;
  }

  /** Block `block` of the full image, checked; keeps READ_AHEAD data blocks before `segEnd` coming. */
  private async baseBlock(walk: Walk, layerNo: number, layer: BaseLayer, block: number, segEnd: number): Promise<Buffer> {
    if (walk.block?.layer === layerNo && walk.block.n === block) return walk.block.data;
    const start = block * layer.blockSize;
    const length = Math.min(layer.blockSize, layer.size - start);
    let held: Held;
    const ahead = walk.ahead[0];
    if (ahead?.layer === layerNo && ahead.n === block) {
      walk.ahead.shift();
      held = { layer: ahead.layer, n: ahead.n, buffer: ahead.buffer, ...(await ahead.ready) };
    } else {
      await walk.abandonAhead();
      const buffer = walk.takeBlockBuffer(layer.blockSize);
      held = { layer: layerNo, n: block, buffer, data: await readBlock(layer, start, length, buffer) };
    }
    // The consumer asked for this extent, so it is done with the previous block's.
    walk.give(walk.block?.buffer);
    walk.block = held;
    this.readAhead(walk, layerNo, layer, block, segEnd);
    const data = held.data;
    if (data.length !== length) throw new DataCorruptError(`${layer.path}: ends at ${start + data.length}, before the disk size ${layer.size}`, { data: { file: layer.path, point: layer.point.pointId } });
    // A block the map records as zeros never gets here (extents() yields it as a hole).
    if (layer.map) {
      const ok = (held.digest ?? createHash('sha256').update(data).digest()).equals(digestAt(layer.map, block));
      if (!ok) {
        throw new DataCorruptError(`${layer.path}: block ${block} (bytes ${start}–${start + length - 1}) does not match the block map of point ${layer.point.pointId}`, {
          data: { file: layer.path, point: layer.point.pointId, block },
        });
      }
    }
    return data;
  }

  private readAhead(walk: Walk, layerNo: number, layer: BaseLayer, block: number, segEnd: number): void {
    let next = (walk.ahead.at(-1)?.n ?? block) + 1;
    while (walk.ahead.length < READ_AHEAD) {
      while (next * layer.blockSize < segEnd && isZeroBlock(layer, next)) next++;
      if (next * layer.blockSize >= segEnd) return;
      walk.ahead.push(this.startRead(walk, layerNo, layer, next));
      next++;
    }
  }

  private startRead(walk: Walk, layerNo: number, layer: BaseLayer, block: number): Walk['ahead'][number] {
    const start = block * layer.blockSize;
    const buffer = walk.takeBlockBuffer(layer.blockSize);
    const length = Math.min(layer.blockSize, layer.size - start);
    // Read, then hash on the worker (shared buffers only): both while this thread hands out
    // the current block. A short read is hashed too; the length check rejects it anyway.
    const ready = readBlock(layer, start, length, buffer).then(async (data) => (buffer && layer.map ? { data, digest: await sha256Off(data) } : { data }));
    ready.catch(() => {}); // observed when used or abandoned; never an unhandled rejection
    return { layer: layerNo, n: block, buffer, ready };
  }

  private async record(walk: Walk, layerNo: number, layer: DiffLayer, r: number): Promise<Buffer> {
    const held = walk.records.get(layerNo);
    if (held?.n === r) return held.data;
    const buffer = walk.takeRecordBuffer(layer.index.lengths[r]!);
    const data = await readRecord(layer.fh, layer.index, r, layer.path, layer.point.pointId, buffer).catch((err: unknown) => {
      walk.give(buffer);
      throw err;
    });
    walk.give(held?.buffer);
    walk.records.set(layerNo, { layer: layerNo, n: r, data, buffer });
    return data;
  }

  async close(): Promise<void> {
    for (const l of this.layers) if (l.kind !== 'none') await closeLayer(l);
  }
}

/** Closes a layer's file handles (errors ignored: nothing was written through them). */
export async function closeLayer(layer: BaseLayer | DiffLayer): Promise<void> {
  await layer.fh.close().catch(() => {});
  if (layer.kind === 'raw') await layer.direct.close().catch(() => {});
}

/** `length` bytes of a full image at block start `start`, into `buffer` when given. */
async function readBlock(layer: BaseLayer, start: number, length: number, buffer: Buffer | undefined): Promise<Buffer> {
  return (buffer && (await layer.direct.readAligned(start, length, buffer))) ?? readAt(layer.fh, start, length, buffer);
}

/**
 * Blocks of the full image read and hashed ahead: two keep the disk reading while the worker
 * hashes the previous one (reads and hashing of one block are sequential).
 */
const READ_AHEAD = 2;

/** The block map records block `block` as all zeros (so it is a hole in the image). */
function isZeroBlock(layer: BaseLayer, block: number): boolean {
  if (!layer.map) return false;
  return digestAt(layer.map, block).equals(zeroDigest(Math.min(layer.blockSize, layer.size - block * layer.blockSize)));
}

function firstSegmentEndingAfter(segs: Segment[], offset: number): number {
  let lo = 0;
  let hi = segs.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (segs[mid]!.end <= offset) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** A `w` record's data, checked: header bytes in the diff match the index, data matches its sha256. Read into `into` when given (see readAt). */
export async function readRecord(fh: FileHandle, index: DiffIndex, r: number, path: string, pointId: string, into?: Buffer): Promise<Buffer> {
  const offset = index.offsets[r]!;
  const length = index.lengths[r]!;
  const fileOffset = index.fileOffsets[r]!;
  const buf = await readAt(fh, fileOffset, RECORD_HEADER_BYTES + length, into);
  const where = { data: { file: path, point: pointId, record: r, offset } };
  if (buf.length !== RECORD_HEADER_BYTES + length) throw new DataCorruptError(`${path}: truncated inside the record for bytes ${offset}+${length}`, where);
  if (buf.toString('latin1', 0, 1) !== 'w' || Number(buf.readBigUInt64LE(1)) !== offset || Number(buf.readBigUInt64LE(9)) !== length) {
    throw new DataCorruptError(`${path}: the record header at byte ${fileOffset} does not match the index`, where);
  }
  const data = buf.subarray(RECORD_HEADER_BYTES);
  if (!createHash('sha256').update(data).digest().equals(index.digest(r))) {
    throw new DataCorruptError(`${path}: the record for bytes ${offset}+${length} does not match its sha256 (point ${pointId})`, where);
  }
  return data;
}

/** Loads the index of a diff disk entry (checked against the diff file's size). */
export async function openDiffLayer(point: PointInfo, disk: DiskEntry): Promise<DiffLayer> {
  const path = join(point.dir, disk.file);
  const fh = await openData(path, point);
  try {
    const st = await fh.stat();
    const firstFileOffset = encodePreamble({ fromSnap: point.manifest.parentId ?? '', toSnap: point.pointId, size: disk.size }).length;
    const index = await loadDiffIndex(join(point.dir, disk.index!), { size: disk.size, firstFileOffset, diffFileSize: st.size, what: join(point.dir, disk.index!), diffPath: path });
    return { kind: 'diff', point, path, fh, size: disk.size, index };
  } catch (err) {
    await fh.close();
    throw err;
  }
}

export async function openBaseLayer(point: PointInfo, disk: DiskEntry, opts: { checkMap: boolean }): Promise<BaseLayer> {
  const path = join(point.dir, disk.file);
  const fh = await openData(path, point);
  try {
    const st = await fh.stat();
    if (st.size !== disk.size) throw new DataCorruptError(`${path}: is ${st.size} bytes, the disk is ${disk.size}`, { data: { file: path, point: point.pointId } });
    let map: Buffer | undefined;
    if (opts.checkMap) {
      const mapPath = join(point.dir, disk.blockMap!);
      const text = await readFile(mapPath, 'latin1').catch((err: unknown) => {
        throw new DataCorruptError(`${mapPath}: cannot be read (${(err as Error).message})`, { data: { file: mapPath, point: point.pointId } });
      });
      if (disk.blockMapSha256 && createHash('sha256').update(text, 'latin1').digest('hex') !== disk.blockMapSha256) {
        throw new DataCorruptError(`${mapPath}: does not match the sha256 in the manifest of point ${point.pointId}`, { data: { file: mapPath, point: point.pointId } });
      }
      map = parseBlockMap(text, disk.size, point.manifest.blockSize, mapPath);
    }
    return { kind: 'raw', point, path, fh, direct: await DirectReader.open(path), size: disk.size, blockSize: point.manifest.blockSize, map };
  } catch (err) {
    await fh.close();
    throw err;
  }
}

async function openData(path: string, point: PointInfo): Promise<FileHandle> {
  try {
    return await open(path, 'r');
  } catch (err) {
    throw new DataCorruptError(`${path}: missing or unreadable (${(err as Error).message}); point ${point.pointId} cannot be read`, { cause: err, data: { file: path, point: point.pointId } });
  }
}

/** The reader of disk `key` at `point`, through its chain. */
export async function openDiskReader(repo: Repository, point: PointInfo, key: string): Promise<DiskReader> {
  const target = point.manifest.disks.find((d) => d.key === key);
  if (!target) {
    throw new UsageError(`point ${point.pointId} has no disk ${key}`, { hint: `its disks: ${point.manifest.disks.map((d) => d.key).join(', ') || 'none'}` });
  }
  const chains = await repo.listChains(point.vmId);
  const chainInfo = chains.find((c) => c.chainId === point.chainId);
  if (chainInfo?.merge) {
    throw new DestinationError(`chain ${point.chainId} has an unfinished merge`, { hint: `run \`vprotect merge ${point.chainId}\` to finish it` });
  }
  const chain = await repo.chainOf(point);
  const layers: Layer[] = [];
  let segments: Segment[] = [];
  let size = 0;
  try {
    for (const p of chain) {
      const disk = p.manifest.disks.find((d) => d.key === key);
      if (!disk) {
        // The disk did not exist at this point: whatever came before is gone.
        layers.push({ kind: 'none', point: p, size: 0 });
        segments = [];
        size = 0;
        continue;
      }
      if (p.manifest.level === 'full') {
        const base = await openBaseLayer(p, disk, { checkMap: true });
        layers.push(base);
        segments = disk.size > 0 ? [{ start: 0, end: disk.size, layer: layers.length - 1, record: -1 }] : [];
      } else {
        const layer = await openDiffLayer(p, disk);
        layers.push(layer);
        segments = overlay(segments, size, disk.size, layers.length - 1, layer.index);
      }
      size = disk.size;
    }
  } catch (err) {
    for (const l of layers) if (l.kind !== 'none') await closeLayer(l);
    throw err;
  }
  return new DiskReader(point, key, size, layers, segments);
}
