/**
 * Restoring a disk of a point into an RBD image. The chain reader's checked extents are turned
 * into one rbd diff v1 stream (the repository's encoder) and fed to `rbd import-diff -`, which
 * first resizes the image to the stream's size (its `s` record), then applies the records:
 * - a new image is created at the disk's size and receives only `w` records (an RBD image
 *   reads as zeros where nothing was written, so holes cost nothing);
 * - an existing image (only with overwrite) takes the disk's size from the stream, and every
 *   range without data gets a `z` record, so nothing of its old content survives;
 * - an existing image the caller knows to be empty (a volume Cinder has just created blank)
 *   receives only `w` records, and keeps its size when it is larger than the disk.
 * One pass, no temporary file, whatever the chain length. Stock tools can do the same from the
 * repository (`rbd import` + `snap create` + `import-diff` per point; docs/FORMAT.md §10).
 */
import { errorMessage, UsageError, VprotectError } from '../../src/errors.js';
import type { CephClusterConfig } from '../../src/inventory/types.js';
import type { EventSink } from '../../src/log.js';
import { openDiskReader, type DiskReader } from '../../src/repository/chain-reader.js';
import { splitZeroRuns } from '../../src/repository/extents.js';
import { encodePreamble, encodeWriteHeader, encodeZero, RBD_DIFF_END } from '../../src/repository/rbd-diff.js';
import type { PointInfo, Repository } from '../../src/repository/repository.js';
import type { RestoreContext, RestoreResult, RestoreTarget } from '../../src/repository/restore.js';
import { localExec, type CommandExec } from './exec.js';
import { prefetch } from './prefetch.js';
import { imageSpec, Rbd } from './rbd.js';
import type { RbdImageInfo } from './rbd-json.js';

/** Whole stream chunks handed to rbd's stdin: large, so the pipe moves MiBs per write. */
const BATCH_BYTES = 4 << 20;
/**
 * How far the stream is produced ahead of rbd: two batches. 32 MiB was no faster (restore of a
 * 1 GiB-data chain through the CLI, 3 alternating pairs: 11.1–16.9 s vs 11.1–12.8 s) and peaked at
 * 180–185 MiB RSS against 152–160 MiB: the batches it holds are garbage awaiting the collector.
 */
const PRODUCED_AHEAD_BYTES = 2 * BATCH_BYTES;

export interface RbdRestoreOptions {
  /** Replace the content of an image that exists already (only on the user's explicit request). */
  overwrite?: boolean;
  /**
   * The existing image reads as zeros everywhere because the caller has just created it blank
   * (a new Cinder volume): no `z` records are sent, and an image larger than the disk keeps its
   * size (its tail reads as zeros) instead of being shrunk to the disk and grown back. A clone is
   * never taken as empty: it reads its parent's data.
   */
  emptyImage?: boolean;
  /** `rbd info` of the image, when the caller has just asked for it (saves one rbd start). */
  info?: RbdImageInfo;
}

export class RbdRestoreTarget implements RestoreTarget {
  private readonly opts: RbdRestoreOptions;

  /** `options`: the overwrite flag alone (`vprotect restore --to-rbd … --overwrite`), or all options. */
  constructor(
    private readonly rbd: Rbd,
    readonly pool: string,
    readonly image: string,
    options: boolean | RbdRestoreOptions = false,
  ) {
    imageSpec(pool, image);
    this.opts = typeof options === 'boolean' ? { overwrite: options } : options;
  }

  get overwrite(): boolean {
    return this.opts.overwrite === true;
  }

  describe(): string {
    return `rbd image ${this.pool}/${this.image} (${this.rbd.describe()})`;
  }

  async restore(reader: DiskReader, ctx: RestoreContext): Promise<RestoreResult> {
    const { pool, image } = this;
    const spec = imageSpec(pool, image);
    const existing = this.opts.info ?? (await this.rbd.infoIfExists(pool, image, ctx.signal));
    if (existing && !this.overwrite) {
      throw new UsageError(`rbd image ${spec} exists already`, { hint: 'restore to a new image name, or pass --overwrite to replace its content' });
    }
    if (!existing) await this.rbd.create(pool, image, reader.size, ctx.signal);
    const empty = existing !== undefined && this.opts.emptyImage === true && !existing.parent;
    // import-diff resizes the image to this before the first record (no separate rbd resize).
    const size = empty ? Math.max(existing.size, reader.size) : reader.size;
    const stats = { dataBytes: 0 };
    try {
      await this.rbd.run(['import-diff', '--no-progress', '-', spec], {
        // Produced ahead of rbd (reading + checking the chain runs while rbd writes).
        input: prefetch(diffStream(reader, { size, zeros: existing !== undefined && !empty, stats, ...(ctx.signal ? { signal: ctx.signal } : {}), ...(ctx.events ? { events: ctx.events } : {}) }), PRODUCED_AHEAD_BYTES),
        // Hours for a large disk: no overall timeout (the pipe's backpressure keeps it bounded).
        timeoutMs: 0,
        ...(ctx.signal ? { signal: ctx.signal } : {}),
      });
    } catch (err) {
      if (!existing) {
        // A new image that is only partly written must not look like a restored disk.
        await this.rbd.remove(pool, image).catch((e: unknown) => {
          throw new VprotectError(`restore to ${spec} failed (${errorMessage(err)}), and the partial image could not be removed: ${errorMessage(e)}`, { cause: err, hint: `remove it with rbd rm ${spec}` });
        });
      } else {
        throw new VprotectError(`restore into the existing image ${spec} failed part-way: its content is now mixed: ${errorMessage(err)}`, { cause: err, hint: 'run the restore again with --overwrite' });
      }
      throw err;
    }
    ctx.events?.({ type: 'progress-end', id: `restore:${reader.key}` });
    return { target: spec, size, dataBytes: stats.dataBytes };
  }
}

/**
 * The disk as an rbd diff v1 stream of an image of `size` bytes (default: the disk's): `w` for
 * data, `z` for the rest of the disk when `zeros` is set.
 */
export async function* diffStream(reader: DiskReader, opts: { size?: number; zeros: boolean; stats: { dataBytes: number }; signal?: AbortSignal; events?: EventSink }): AsyncGenerator<Buffer> {
  let batch: Buffer[] = [];
  let batchBytes = 0;
  const push = (b: Buffer) => {
    batch.push(b);
    batchBytes += b.length;
  };
  const take = () => {
    const out = batch.length === 1 ? batch[0]! : Buffer.concat(batch, batchBytes);
    batch = [];
    batchBytes = 0;
    return out;
  };
  if (opts.size !== undefined && opts.size < reader.size) throw new UsageError(`an image of ${opts.size} bytes cannot hold disk ${reader.key} of ${reader.size} bytes`);
  push(encodePreamble({ size: opts.size ?? reader.size }));
  let zeroRun: { offset: number; length: number } | undefined;
  const flushZero = () => {
    if (zeroRun && opts.zeros) push(encodeZero(zeroRun.offset, zeroRun.length));
    zeroRun = undefined;
  };
  let reported = 0;
  for await (const e of reader.extents(opts.signal ? { signal: opts.signal } : {})) {
    for (const run of splitZeroRuns(e)) {
      if (!run.data) {
        if (zeroRun && zeroRun.offset + zeroRun.length === run.offset) zeroRun.length += run.length;
        else {
          flushZero();
          zeroRun = { offset: run.offset, length: run.length };
        }
        continue;
      }
      flushZero();
      push(encodeWriteHeader(run.offset, run.length));
      push(run.data);
      opts.stats.dataBytes += run.length;
    }
    if (batchBytes >= BATCH_BYTES) yield take();
    if (opts.events && e.offset + e.length - reported >= 64 << 20) {
      reported = e.offset + e.length;
      opts.events({ type: 'progress', id: `restore:${reader.key}`, label: `restore ${reader.key}`, done: reported, total: reader.size });
    }
  }
  flushZero();
  push(RBD_DIFF_END);
  yield take();
}

/** Where the restore's rbd commands go: an open cluster handle, or the inventory entry to open one. */
export type RbdClusterRef =
  | { rbd: Rbd }
  | {
      /** The inventory's name for the cluster, and its entry. */
      clusterName: string;
      cluster: CephClusterConfig;
      /** Where rbd runs (default: this machine). */
      exec?: CommandExec;
    };

export type RestoreToRbdRequest = RbdClusterRef &
  RbdRestoreOptions & {
    repo: Repository;
    point: PointInfo;
    disk: string;
    pool: string;
    image: string;
    signal?: AbortSignal;
    events?: EventSink;
  };

/**
 * Restores disk `disk` of `point` into `pool/image` (new, or existing with overwrite). A given
 * cluster handle is used as is and left open; otherwise one is opened for this restore.
 */
export async function restoreToRbd(req: RestoreToRbdRequest): Promise<RestoreResult> {
  let opened: Rbd | undefined;
  if (!('rbd' in req)) {
    const exec = req.exec ?? localExec();
    opened = await Rbd.open(exec, req.clusterName, req.cluster, { remote: exec.where !== 'the backup node' });
  }
  const rbd = 'rbd' in req ? req.rbd : opened!;
  try {
    const reader = await openDiskReader(req.repo, req.point, req.disk);
    try {
      const options: RbdRestoreOptions = { overwrite: req.overwrite ?? false, ...(req.emptyImage ? { emptyImage: true } : {}), ...(req.info ? { info: req.info } : {}) };
      return await new RbdRestoreTarget(rbd, req.pool, req.image, options).restore(reader, { ...(req.signal ? { signal: req.signal } : {}), ...(req.events ? { events: req.events } : {}) });
    } finally {
      await reader.close();
    }
  } finally {
    await opened?.dispose();
  }
}
