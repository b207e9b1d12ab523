/**
 * Reads a disk as `rbd export-diff [--from-snap S] pool/image@snap -`, parsed on the fly by the
 * repository's rbd diff codec (src/repository/rbd-diff.ts): nothing is spooled, memory is the
 * read-ahead (exec.ts) plus one record of at most 4 MiB. Without --from-snap rbd lists only
 * allocated extents, so a mostly empty 1 TiB image costs what it holds, not 1 TiB of zeros.
 *
 * The stream must describe exactly what was asked: its from/to snapshot names and image size are
 * checked before the first extent, the codec checks every record, and rbd's exit status is
 * checked after the end record. A bad or truncated stream fails the disk — never a wrong point.
 */
import { DataCorruptError, UnavailableError, VprotectError } from '../../src/errors.js';
import { MAX_RECORD_BYTES } from '../../src/repository/disk-writers.js';
import type { Extent } from '../../src/repository/extents.js';
import { checkDiffHeader, parseRbdDiff, type RbdDiffHeader, type RbdDiffItem } from '../../src/repository/rbd-diff.js';
import { delay } from '../../src/util/delay.js';
import type { StreamingExec } from './exec.js';
import { imageSpec, type Rbd } from './rbd.js';

export interface ExportDiffRequest {
  pool: string;
  image: string;
  snap: string;
  /** Base snapshot of an incremental; absent for a full. */
  fromSnap?: string;
  /** The snapshot's size: the stream's `s` record must say the same. */
  size: number;
  signal?: AbortSignal;
  /** Fail when rbd sends nothing for this long (default 10 min): a hung OSD must not hang the run. */
  idleTimeoutMs?: number;
  /**
   * Join the pieces of a record into one buffer (default true). A full does not need it (the
   * repository coalesces raw writes itself), so it saves the copy; an incremental does, so that
   * the stored diff has rbd's records rather than one per pipe chunk.
   */
  joinRecords?: boolean;
  /**
   * The consumer is done with an extent's bytes when it asks for the next extent (the
   * repository's point writer hashes and copies or writes each one first). Then extents are
   * views of the read buffers and records are joined in one reused buffer: no copy, no fresh
   * memory. Default false: every extent owns its bytes (tests that collect extents).
   */
  reuseBuffers?: boolean;
}

/** Where to look when rbd stops sending. */
export const IDLE_HINT = 'check the cluster (ceph -s): rbd waits for ever on inactive placement groups';

/** argv (after the cluster arguments) of the export-diff for a request, to stdout or into a new file. */
export function exportDiffArgs(r: Pick<ExportDiffRequest, 'pool' | 'image' | 'snap' | 'fromSnap'>, to = '-'): string[] {
  return ['export-diff', '--no-progress', ...(r.fromSnap !== undefined ? ['--from-snap', r.fromSnap] : []), imageSpec(r.pool, r.image, r.snap), to];
}

/** Starts the export-diff of a request (rbd reads ahead from here on); readExportDiff parses it. */
export function startExportDiff(rbd: Pick<Rbd, 'stream'>, req: Pick<ExportDiffRequest, 'pool' | 'image' | 'snap' | 'fromSnap' | 'signal'>): Promise<StreamingExec> {
  return rbd.stream(exportDiffArgs(req), req.signal);
}

/**
 * The extents of an export-diff. `started`: the command, when startExportDiff already ran it for
 * this very request (the session starts the first disk's read while it lists snapshots).
 */
export async function* readExportDiff(rbd: Pick<Rbd, 'stream'>, req: ExportDiffRequest, started?: Promise<StreamingExec>): AsyncGenerator<Extent> {
  const what = `rbd export-diff ${req.fromSnap ? `--from-snap ${req.fromSnap} ` : ''}${req.pool}/${req.image}@${req.snap}`;
  const proc = await (started ?? startExportDiff(rbd, req));
  const idle = idleWatch(proc, req.idleTimeoutMs ?? 600_000, what);
  let exited = false;
  try {
    yield* diffExtents(parseRbdDiff(idle.source, { what, ordered: true }), { ...req, sourceReusesBuffers: proc.reusesBuffers === true }, what);
    await proc.done;
    exited = true;
  } catch (err) {
    if (idle.fired) throw idle.fired;
    // A truncated stream usually means rbd failed: its own message (stderr) says why.
    const exit = await Promise.race([proc.done.then(() => undefined, (e: unknown) => e), delay(2000).then(() => 'running' as const)]);
    if (exit instanceof VprotectError && err instanceof DataCorruptError) throw exit;
    throw err;
  } finally {
    idle.stop();
    if (!exited) proc.kill();
  }
}

/**
 * The extents of a parsed export-diff after checking its header against the request. Pieces of
 * one `w` record are joined into buffers of up to 4 MiB, so the repository stores records the
 * size rbd made them (pipe chunks are 64 KiB) without ever widening a range.
 */
export async function* diffExtents(
  items: AsyncIterable<RbdDiffItem>,
  req: Pick<ExportDiffRequest, 'fromSnap' | 'snap' | 'size' | 'joinRecords' | 'reuseBuffers'> & { sourceReusesBuffers?: boolean },
  what: string,
): AsyncGenerator<Extent> {
  const join = req.joinRecords !== false;
  const reuse = req.reuseBuffers === true;
  // Views of the source's buffers are handed on only when both sides allow it.
  const own = !reuse && req.sourceReusesBuffers === true ? (b: Buffer) => Buffer.from(b) : (b: Buffer) => b;
  // With reuse, records are joined in this one buffer (the consumer is done with the previous).
  let joinBuffer: Buffer | undefined;
  const header: RbdDiffHeader = {};
  let checked = false;
  const check = () => {
    if (checked) return;
    checked = true;
    checkDiffHeader(header, { ...(req.fromSnap !== undefined ? { fromSnap: req.fromSnap } : {}), toSnap: req.snap, size: req.size }, what);
  };
  let acc: Buffer | undefined;
  let accOffset = 0;
  let accFill = 0;
  let ended = false;
  for await (const item of items) {
    switch (item.type) {
      case 'from':
        if (checked) throw new DataCorruptError(`${what}: from-snapshot record after the data`);
        header.fromSnap = item.name;
        break;
      case 'to':
        if (checked) throw new DataCorruptError(`${what}: to-snapshot record after the data`);
        header.toSnap = item.name;
        break;
      case 'size':
        if (checked) throw new DataCorruptError(`${what}: size record after the data`);
        header.size = item.size;
        break;
      case 'zero':
        check();
        yield { offset: item.offset, length: item.length };
        break;
      case 'data': {
        check();
        if (!join) {
          yield { offset: item.offset, length: item.data.length, data: own(item.data) };
          break;
        }
        let piece = item.data;
        let offset = item.offset;
        const recordEnd = item.record.offset + item.record.length;
        while (piece.length > 0) {
          if (!acc) {
            const want = Math.min(recordEnd - offset, MAX_RECORD_BYTES);
            if (piece.length >= want) {
              // The piece holds the whole (rest of the) record: hand it on without a copy.
              yield { offset, length: want, data: own(piece.subarray(0, want)) };
              piece = piece.subarray(want);
              offset += want;
              continue;
            }
            acc = reuse ? (joinBuffer ??= Buffer.allocUnsafeSlow(MAX_RECORD_BYTES)).subarray(0, want) : Buffer.allocUnsafe(want);
            accOffset = offset;
            accFill = 0;
          }
          const n = Math.min(piece.length, acc.length - accFill);
          piece.copy(acc, accFill, 0, n);
          accFill += n;
          piece = piece.subarray(n);
          offset += n;
          if (accFill === acc.length) {
            const data = acc;
            acc = undefined;
            yield { offset: accOffset, length: data.length, data };
          }
        }
        break;
      }
      case 'end':
        check();
        ended = true;
        break;
    }
  }
  // The codec guarantees a record's data arrives whole before the next record or the end.
  if (acc) throw new DataCorruptError(`${what}: a record ended early`);
  if (!ended) throw new DataCorruptError(`${what}: no end record`);
}

/**
 * Kills the command when its stdout stays silent for `ms`; `fired` then says so. One timer per
 * stream, not one per chunk: each chunk only notes the time, and the timer, when it fires, looks
 * at how long ago that was and sleeps again for the rest (thousands of chunks per GiB would
 * otherwise each clear and set a timer).
 */
function idleWatch(proc: StreamingExec, ms: number, what: string): { source: AsyncIterable<Buffer>; fired: Error | undefined; stop(): void } {
  let lastChunk = Date.now();
  let timer: NodeJS.Timeout | undefined;
  const wait = (delayMs: number) => {
    timer = setTimeout(check, delayMs);
    timer.unref?.();
  };
  const check = () => {
    const silent = Date.now() - lastChunk;
    if (silent < ms) return wait(ms - silent);
    timer = undefined;
    state.fired = new UnavailableError(`${what} sent no data for ${Math.round(ms / 1000)} s and was stopped`, { hint: IDLE_HINT });
    proc.kill();
  };
  const state = {
    fired: undefined as Error | undefined,
    source: (async function* () {
      for await (const chunk of proc.stdout) {
        lastChunk = Date.now();
        yield chunk;
      }
    })(),
    stop() {
      if (timer) clearTimeout(timer);
      timer = undefined;
    },
  };
  wait(ms);
  return state;
}
