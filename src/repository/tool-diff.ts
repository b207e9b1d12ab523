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
import { open, rename, unlink, type FileHandle } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { DataCorruptError, throwIfAborted, UnavailableError, UsageError, VprotectError } from '../errors.js';
import { MAX_RECORD_BYTES, type DiskStats, type StepHook, type WrittenDisk } from './disk-writers.js';
import { fsyncDir, PARTIAL_SUFFIX } from './durable.js';
import { formatIndexLine, INDEX_HEADER } from './diff-index.js';
import { HashedFile, LineBuffer } from './hashed-file.js';
import { diskFiles } from './layout.js';
import { checkDiffHeader, encodePaddedPreamble, encodePreamble, parseRbdDiff, type RbdDiffHeader } from './rbd-diff.js';

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

export async function writeToolDiffDisk(opts: ToolDiffOptions, tool: ToolDiff): Promise<WrittenDisk> {
  const { pointDir, key, size } = opts;
  const diffPath = diskFiles.diff(key);
  const indexPath = diskFiles.index(key);
  const final = join(pointDir, diffPath);
  const partial = final + PARTIAL_SUFFIX;
  // The tool's preamble is rewritten in place, so ours must fit it exactly (before any data moves).
  const toolPreamble = encodePreamble(tool.header).length;
  const preamble = encodePaddedPreamble({ fromSnap: opts.fromSnap, toSnap: opts.toSnap, size }, toolPreamble);
  if (!preamble) throw new UsageError(`disk ${key}: the names ${opts.fromSnap}/${opts.toSnap} do not fit the preamble of ${tool.what}`);
  if (tool.header.size !== size) throw new UsageError(`disk ${key}: the tool is asked for ${tool.header.size} bytes, the disk has ${size}`);
  await unlink(partial).catch(() => {});
  throwIfAborted(opts.signal);

  const run = await tool.start(partial);
  let index: HashedFile | undefined;
  let file: FileHandle | undefined;
  try {
    index = await HashedFile.create(join(pointDir, indexPath), 1 << 20);
    const lines = new LineBuffer(index);
    await lines.add(`${INDEX_HEADER}\n`);
    file = await waitForFile(partial, run, opts.signal);
    const follower = new Follower(file, run, tool, opts.signal);
    const stats: DiskStats = { changedBytes: 0, dataBytes: 0, zeroBytes: 0, storedBytes: 0, records: 0 };
    const header: RbdDiffHeader = {};
    let headerChecked = false;
    const checkHeader = (fileOffset: number) => {
      if (headerChecked) return;
      headerChecked = true;
      checkDiffHeader(header, tool.header, tool.what);
      if (fileOffset !== toolPreamble) throw new DataCorruptError(`${tool.what}: the records start at byte ${fileOffset}, expected ${toolPreamble} (f, t and s records once each)`);
    };
    let hash: Hash | undefined;
    let left = 0;
    for await (const item of parseRbdDiff(follower.chunks(), { what: tool.what, ordered: true })) {
      switch (item.type) {
        case 'from':
          header.fromSnap = item.name;
          break;
        case 'to':
          header.toSnap = item.name;
          break;
        case 'size':
          header.size = item.size;
          break;
        case 'zero': {
          checkHeader(item.record.fileOffset);
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
            checkHeader(rec.fileOffset);
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
          checkHeader(item.fileOffset);
          stats.storedBytes = item.fileOffset + 1;
          break;
      }
    }
    // The parser ends only after the end record and the tool's exit; its failure came first.
    await run.done;
    await lines.flush();
    await follower.synced();
    await file.write(preamble, 0, preamble.length, 0);
    await file.sync();
    await file.close();
    file = undefined;
    await rename(partial, final);
    await fsyncDir(dirname(final));
    await opts.onStep?.(`data:${key}`);
    const indexSha = await index.commit();
    await opts.onStep?.(`index:${key}`);
    return { stats, file: diffPath, index: indexPath, blockMap: null, blockMapSha256: null, sums: [{ path: indexPath, sha256: indexSha }] };
  } catch (err) {
    run.kill();
    // The tool may still hold the file open; it is stopped and the file is garbage either way.
    await run.done.catch(() => {});
    await file?.close().catch(() => {});
    await unlink(partial).catch(() => {});
    await index?.discard();
    throw err;
  }
}

/** The tool creates the file when it starts writing: wait for it, or for the tool to fail. */
async function waitForFile(path: string, run: ToolRun, signal: AbortSignal | undefined): Promise<FileHandle> {
  let exited = false;
  let failure: unknown;
  run.done.then(
    () => (exited = true),
    (err: unknown) => {
      exited = true;
      failure = err;
    },
  );
  for (let wait = 1; ; wait = Math.min(wait * 2, MAX_POLL_MS)) {
    throwIfAborted(signal);
    const exitedBefore = exited;
    try {
      // r+: the same handle reads, fdatasyncs and rewrites the preamble.
      return await open(path, 'r+');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    if (exitedBefore) {
      if (failure) throw failure;
      throw new DataCorruptError(`the tool exited without writing ${path}`);
    }
    await Promise.race([run.done.catch(() => {}), sleep(wait)]);
  }
}

/** Reads the file as the tool writes it, until the tool has exited and the file has no more. */
class Follower {
  private exited = false;
  private failure: unknown;
  private syncedTo = 0;
  private syncing: Promise<void> | undefined;

  constructor(
    private readonly file: FileHandle,
    private readonly run: ToolRun,
    private readonly tool: ToolDiff,
    private readonly signal: AbortSignal | undefined,
  ) {
    run.done.then(
      () => (this.exited = true),
      (err: unknown) => {
        this.exited = true;
        this.failure = err;
      },
    );
  }

  /**
   * The file's bytes in order. One buffer is reused: the parser is done with a chunk (and its
   * consumer with the items of it) before it asks for the next.
   */
  async *chunks(): AsyncGenerator<Buffer> {
    const buf = Buffer.allocUnsafeSlow(READ_BYTES);
    const idleMs = this.tool.idleTimeoutMs ?? 600_000;
    let pos = 0;
    let lastGrowth = Date.now();
    let wait = 1;
    for (;;) {
      throwIfAborted(this.signal);
      // Bytes written before the exit was seen are all visible to the read that follows it.
      const exitedBefore = this.exited;
      const { bytesRead } = await this.file.read(buf, 0, buf.length, pos);
      if (bytesRead > 0) {
        pos += bytesRead;
        lastGrowth = Date.now();
        wait = 1;
        this.syncBehind(pos);
        yield buf.subarray(0, bytesRead);
        continue;
      }
      if (exitedBefore) {
        if (this.failure) throw this.failure;
        return;
      }
      if (Date.now() - lastGrowth >= idleMs) {
        this.run.kill();
        throw new UnavailableError(`${this.tool.what} wrote nothing for ${Math.round(idleMs / 1000)} s and was stopped`, this.tool.idleHint ? { hint: this.tool.idleHint } : {});
      }
      await Promise.race([this.run.done.catch(() => {}), sleep(wait)]);
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

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
