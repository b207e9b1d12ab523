/**
 * An incremental that the source's own tool writes straight into the point's `.rbdiff`
 * (`rbd export-diff … <file>`), while the repository follows the file as it grows: it checks
 * every record with the rbd diff codec, hashes each `w` record for the index, and makes the data
 * durable as it goes. The stored diff is then the tool's stream byte for byte, except for the
 * preamble, which is rewritten with the repository's names (docs/FORMAT.md §5).
 *
 * Why not through vprotect (socket → parse → write): on the lab's 2 vCPUs the tool, the OSD
 * and vprotect share the cores, and the socket path spent ~0.75 s of vprotect CPU per 268 MB
 * (receive, copy, write) against ~0.45 s here (read back from the page cache and sha256), and rbd
 * never waits on a full socket. Measured in strategies/ceph-rbd/README.md.
 */
import { createHash, type Hash } from 'node:crypto';
import { open, unlink, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { DataCorruptError, InterruptedError, throwIfAborted, UnavailableError, UsageError, VprotectError } from '../errors.js';
import { MAX_RECORD_BYTES, type DiskStats, type StepHook, type WrittenDisk } from './disk-writers.js';
import { AtomicFile, PARTIAL_SUFFIX } from './durable.js';
import { formatIndexLine, INDEX_HEADER } from './diff-index.js';
import { HashedFile, LineBuffer } from './hashed-file.js';
import { delay } from '../util/delay.js';
import { diskFiles } from './layout.js';
import { checkDiffHeader, encodePaddedPreamble, encodePreamble, parseRbdDiff, RECORD_HEADER_BYTES, type RbdDiffHeader } from './rbd-diff.js';

/** A source tool that writes one disk's incremental as an rbd diff v1 stream into a file. */
export interface ToolDiff {
  /** Names the tool's run in messages (its command line). */
  what: string;
  /** What the stream's f/t/s records must say: the tool names the snapshots it read. */
  header: RbdDiffHeader & { fromSnap: string; toSnap: string; size: number };
  /** Starts the tool, which creates `path` (it does not exist yet) and writes the whole stream. */
  start(path: string): Promise<ToolRun>;
  /** Stop the tool when the file has not grown for this long (default 10 min). */
  idleTimeoutMs?: number;
  /** Added to the message when that happens (where to look). */
  idleHint?: string;
}

export interface ToolRun {
  /** Settles when the tool has exited; rejects with its error (stderr) when it failed. */
  done: Promise<void>;
  kill(): void;
}

export interface ToolDiffOptions {
  pointDir: string;
  key: string;
  size: number;
  /** The repository's names for the diff: the parent point and this point. */
  fromSnap: string;
  toSnap: string;
  signal?: AbortSignal;
  onStep?: StepHook;
  /** Called with the end of each record on the disk (progress). */
  onRecord?: (end: number) => void;
}

/** Chunk read from the growing file, and how far the file may grow before an fdatasync. */
const READ_BYTES = 4 << 20;
const SYNC_EVERY_BYTES = 32 << 20;
/** Longest pause between looks at a file that is not growing. */
const MAX_POLL_MS = 16;

/**
 * The preamble with the repository's names that replaces the tool's in place (so it must be
 * exactly as long), or undefined when none fits: then the disk goes the extents way.
 */
export function repositoryPreamble(names: { fromSnap: string; toSnap: string; size: number }, tool: Pick<ToolDiff, 'header'>): Buffer | undefined {
  return encodePaddedPreamble(names, encodePreamble(tool.header).length);
}

export async function writeToolDiffDisk(opts: ToolDiffOptions, tool: ToolDiff): Promise<WrittenDisk> {
  const { pointDir, key, size } = opts;
  const diffPath = diskFiles.diff(key);
  const indexPath = diskFiles.index(key);
  const final = join(pointDir, diffPath);
  const partial = final + PARTIAL_SUFFIX;
  const toolPreamble = encodePreamble(tool.header).length;
  const preamble = repositoryPreamble(opts, tool);
  if (!preamble) throw new UsageError(`disk ${key}: the names ${opts.fromSnap}/${opts.toSnap} do not fit the preamble of ${tool.what}`);
  if (tool.header.size !== size) throw new UsageError(`disk ${key}: the tool is asked for ${tool.header.size} bytes, the disk has ${size}`);
  await unlink(partial).catch(() => {});
  throwIfAborted(opts.signal);

  const run = await tool.start(partial);
  const watch = new RunWatch(run, tool);
  let index: HashedFile | undefined;
  let file: AtomicFile | undefined;
  try {
    index = await HashedFile.create(join(pointDir, indexPath), 1 << 20);
    const lines = new LineBuffer(index);
    await lines.add(`${INDEX_HEADER}\n`);
    file = AtomicFile.adopt(final, await waitForFile(partial, watch, opts.signal));
    const follower = new Follower(file.handle, watch, opts.signal);
    const stats: DiskStats = { changedBytes: 0, dataBytes: 0, zeroBytes: 0, storedBytes: 0, records: 0 };
    const header: RbdDiffHeader = {};
    // Where the next record must start: records follow each other exactly, as the index says
    // (a record the index would skip — a second preamble record, an empty w — is refused here).
    let next: number | undefined;
    const record = (fileOffset: number, end: number) => {
      if (next === undefined) {
        checkDiffHeader(header, tool.header, tool.what);
        next = toolPreamble;
      }
      if (fileOffset !== next) throw new DataCorruptError(`${tool.what}: a record at byte ${fileOffset}, expected one at byte ${next} (the preamble once, then w and z records of at least one byte)`);
      next = end;
    };
    const preambleItem = () => {
      if (next !== undefined) throw new DataCorruptError(`${tool.what}: a from, to or size record after the data`);
    };
    let hash: Hash | undefined;
    let left = 0;
    for await (const item of parseRbdDiff(follower.chunks(), { what: tool.what, ordered: true })) {
      switch (item.type) {
        case 'from':
          preambleItem();
          header.fromSnap = item.name;
          break;
        case 'to':
          preambleItem();
          header.toSnap = item.name;
          break;
        case 'size':
          preambleItem();
          header.size = item.size;
          break;
        case 'zero': {
          record(item.record.fileOffset, item.record.fileOffset + RECORD_HEADER_BYTES);
          if (item.length === 0) throw new DataCorruptError(`${tool.what}: an empty z record at byte ${item.record.fileOffset}`);
          await lines.add(formatIndexLine({ kind: 'z', offset: item.offset, length: item.length, fileOffset: item.record.fileOffset }));
          stats.changedBytes += item.length;
          stats.zeroBytes += item.length;
          stats.records++;
          opts.onRecord?.(item.offset + item.length);
          break;
        }
        case 'data': {
          const rec = item.record;
          if (item.offset === rec.offset) {
            record(rec.fileOffset, rec.fileOffset + RECORD_HEADER_BYTES + rec.length);
            // Readers check a record against its sha256 before using it, so a record is held whole.
            if (rec.length > MAX_RECORD_BYTES) throw new VprotectError(`${tool.what}: a record of ${rec.length} bytes at byte ${rec.fileOffset} is longer than the repository's ${MAX_RECORD_BYTES}`);
            hash = createHash('sha256');
            left = rec.length;
          }
          hash!.update(item.data);
          left -= item.data.length;
          if (left === 0) {
            await lines.add(formatIndexLine({ kind: 'w', offset: rec.offset, length: rec.length, fileOffset: rec.fileOffset, sha256: hash!.digest('hex') }));
            stats.changedBytes += rec.length;
            stats.dataBytes += rec.length;
            stats.records++;
            opts.onRecord?.(rec.offset + rec.length);
          }
          break;
        }
        case 'end':
          record(item.fileOffset, item.fileOffset + 1);
          stats.storedBytes = item.fileOffset + 1;
          break;
      }
    }
    // The parser ends only after the end record and the tool's exit; its failure came first.
    await run.done;
    await lines.flush();
    await follower.synced();
    await file.handle.write(preamble, 0, preamble.length, 0);
    await file.commit();
    file = undefined;
    await opts.onStep?.(`data:${key}`);
    const indexSha = await index.commit();
    await opts.onStep?.(`index:${key}`);
    return { stats, file: diffPath, index: indexPath, blockMap: null, blockMapSha256: null, sums: [{ path: indexPath, sha256: indexSha }] };
  } catch (err) {
    const exitedOnItsOwn = watch.exited;
    run.kill();
    // The tool may still hold the file open; it is stopped and the file is garbage either way.
    const toolError = await run.done.then(
      () => undefined,
      (e: unknown) => e,
    );
    // Removed even before it was adopted: the tool may have created it after the last look.
    await (file ? file.discard() : unlink(partial).catch(() => {}));
    await index?.discard();
    // A stream cut short or off the mark usually has a reason the tool (or its caller) knows
    // better: its own failure, or why the source changed under it.
    if (err instanceof DataCorruptError && toolError instanceof VprotectError && !(toolError instanceof InterruptedError && !exitedOnItsOwn)) throw toolError;
    throw err;
  }
}

/**
 * What the repository knows of the tool's run: whether it has exited (and how), and since when
 * its file has not grown. The idle clock starts with the tool: rbd connects to the cluster and
 * opens the image before it creates the file, and a hung cluster hangs it right there.
 */
class RunWatch {
  exited = false;
  failure: unknown;
  private lastGrowth = Date.now();
  private readonly idleMs: number;

  constructor(
    readonly run: ToolRun,
    private readonly tool: ToolDiff,
  ) {
    this.idleMs = tool.idleTimeoutMs ?? 600_000;
    run.done.then(
      () => (this.exited = true),
      (err: unknown) => {
        this.exited = true;
        this.failure = err;
      },
    );
  }

  grew(): void {
    this.lastGrowth = Date.now();
  }

  /** Waits a little for the file to grow or the tool to exit; stops a tool that went silent. */
  async pause(ms: number): Promise<void> {
    if (Date.now() - this.lastGrowth >= this.idleMs) {
      this.run.kill();
      throw new UnavailableError(`${this.tool.what} wrote nothing for ${Math.round(this.idleMs / 1000)} s and was stopped`, this.tool.idleHint ? { hint: this.tool.idleHint } : {});
    }
    await Promise.race([this.run.done.catch(() => {}), delay(ms)]);
  }
}

/** The tool creates the file when it starts writing: wait for it, or for the tool to fail. */
async function waitForFile(path: string, watch: RunWatch, signal: AbortSignal | undefined): Promise<FileHandle> {
  for (let wait = 1; ; wait = Math.min(wait * 2, MAX_POLL_MS)) {
    throwIfAborted(signal);
    const exitedBefore = watch.exited;
    try {
      // r+: the same handle reads, fdatasyncs and rewrites the preamble.
      return await open(path, 'r+');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    if (exitedBefore) {
      if (watch.failure) throw watch.failure;
      throw new DataCorruptError(`the tool exited without writing ${path}`);
    }
    await watch.pause(wait);
  }
}

/** Reads the file as the tool writes it, until the tool has exited and the file has no more. */
class Follower {
  private syncedTo = 0;
  private syncing: Promise<void> | undefined;

  constructor(
    private readonly file: FileHandle,
    private readonly watch: RunWatch,
    private readonly signal: AbortSignal | undefined,
  ) {}

  /**
   * The file's bytes in order. One buffer is reused: the parser is done with a chunk (and its
   * consumer with the items of it) before it asks for the next.
   */
  async *chunks(): AsyncGenerator<Buffer> {
    const buf = Buffer.allocUnsafeSlow(READ_BYTES);
    let pos = 0;
    let wait = 1;
    for (;;) {
      throwIfAborted(this.signal);
      // Bytes written before the exit was seen are all visible to the read that follows it.
      const exitedBefore = this.watch.exited;
      const { bytesRead } = await this.file.read(buf, 0, buf.length, pos);
      if (bytesRead > 0) {
        pos += bytesRead;
        this.watch.grew();
        wait = 1;
        this.syncBehind(pos);
        yield buf.subarray(0, bytesRead);
        continue;
      }
      if (exitedBefore) {
        if (this.watch.failure) throw this.watch.failure;
        return;
      }
      await this.watch.pause(wait);
      wait = Math.min(wait * 2, MAX_POLL_MS);
    }
  }

  /**
   * Starts an fdatasync once the file is SYNC_EVERY_BYTES past the last one, one at a time: the
   * data reaches the disk while the tool still runs, so the final fsync has little left to do.
   */
  private syncBehind(pos: number): void {
    if (this.syncing || pos - this.syncedTo < SYNC_EVERY_BYTES) return;
    this.syncing = this.file.datasync().then(() => {
      this.syncedTo = pos;
      this.syncing = undefined;
    });
    // Awaited by synced(); a failure there fails the disk.
    this.syncing.catch(() => {});
  }

  /** The last fdatasync started, if any, has finished. */
  async synced(): Promise<void> {
    await this.syncing;
  }
}
