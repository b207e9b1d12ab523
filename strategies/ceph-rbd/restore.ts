/**
 * Restoring a disk of a point into an RBD image. The chain reader's checked extents are turned
 * into one rbd diff v1 stream (the repository's encoder) and fed to `rbd import-diff -`:
 * - a new image is created at the disk's size and receives only `w` records (an RBD image
 *   reads as zeros where nothing was written, so holes cost nothing);
 * - an existing image (only with overwrite) is resized, and every range without data gets a
 *   `z` record, so nothing of its old content survives.
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

/** Whole stream chunks handed to rbd's stdin: large, so the pipe moves MiBs per write. */
const BATCH_BYTES = 4 << 20;

export class RbdRestoreTarget implements RestoreTarget {
  constructor(
    private readonly rbd: Rbd,
    readonly pool: string,
    readonly image: string,
    readonly overwrite = false,
  ) {
    imageSpec(pool, image);
  }

  describe(): string {
    return `rbd image ${this.pool}/${this.image} (${this.rbd.describe()})`;
  }

  async restore(reader: DiskReader, ctx: RestoreContext): Promise<RestoreResult> {
    const { pool, image } = this;
    const spec = imageSpec(pool, image);
    const existing = await this.rbd.infoIfExists(pool, image, ctx.signal);
    if (existing && !this.overwrite) {
      throw new UsageError(`rbd image ${spec} exists already`, { hint: 'restore to a new image name, or pass --overwrite to replace its content' });
    }
    if (existing) {
      // Resize first: import-diff's own resize would come after writes past the old end.
      if (existing.size !== reader.size) await this.rbd.resize(pool, image, reader.size, ctx.signal);
    } else {
      await this.rbd.create(pool, image, reader.size, ctx.signal);
    }
    const stats = { dataBytes: 0 };
    try {
      await this.rbd.run(['import-diff', '--no-progress', '-', spec], {
        // Produced ahead of rbd (reading + checking the chain runs while rbd writes).
        input: prefetch(diffStream(reader, { zeros: Boolean(existing), stats, ...(ctx.signal ? { signal: ctx.signal } : {}), ...(ctx.events ? { events: ctx.events } : {}) }), 32 << 20),
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
    return { target: spec, size: reader.size, dataBytes: stats.dataBytes };
  }
}

/** The disk as an rbd diff v1 stream: `w` for data, `z` for the rest when `zeros` is set. */
export async function* diffStream(reader: DiskReader, opts: { zeros: boolean; stats: { dataBytes: number }; signal?: AbortSignal; events?: EventSink }): AsyncGenerator<Buffer> {
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
  push(encodePreamble({ size: reader.size }));
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

export interface RestoreToRbdRequest {
  repo: Repository;
  point: PointInfo;
  disk: string;
  /** The inventory's name for the cluster, and its entry. */
  clusterName: string;
  cluster: CephClusterConfig;
  pool: string;
  image: string;
  overwrite?: boolean;
  /** Where rbd runs (default: this machine). */
  exec?: CommandExec;
  signal?: AbortSignal;
  events?: EventSink;
}

/** Restores disk `disk` of `point` into `pool/image` (new, or existing with overwrite). */
export async function restoreToRbd(req: RestoreToRbdRequest): Promise<RestoreResult> {
  const exec = req.exec ?? localExec();
  const rbd = await Rbd.open(exec, req.clusterName, req.cluster, { remote: exec.where !== 'the backup node' });
  try {
    const reader = await openDiskReader(req.repo, req.point, req.disk);
    try {
      return await new RbdRestoreTarget(rbd, req.pool, req.image, req.overwrite ?? false).restore(reader, { ...(req.signal ? { signal: req.signal } : {}), ...(req.events ? { events: req.events } : {}) });
    } finally {
      await reader.close();
    }
  } finally {
    await rbd.dispose();
  }
}
