/**
 * Restoring one disk of a point somewhere. A target takes the chain reader's checked extents
 * and puts them in place; the file and stream targets live here, others (hypervisor, RBD,
 * Cinder) implement the same RestoreTarget interface in their own modules.
 */
import { rename, rm } from 'node:fs/promises';
import type { Writable } from 'node:stream';
import { once } from 'node:events';
import { DestinationError, throwIfAborted, UsageError } from '../errors.js';
import type { EventSink } from '../log.js';
import { runCommand, type CommandOptions, type CommandResult } from '../transport/command.js';
import type { DiskReader } from './chain-reader.js';
import { CoalescingWriter } from './coalescing-writer.js';
import { AtomicFile } from './durable.js';
import { splitZeroRuns, zeros } from './extents.js';

export interface RestoreContext {
  signal?: AbortSignal;
  events?: EventSink;
}

export interface RestoreResult {
  target: string;
  size: number;
  /** Data bytes written (zeros are skipped where the target allows holes). */
  dataBytes: number;
}

export interface RestoreTarget {
  /** What the user sees: "file /tmp/x.raw", "stdout". */
  describe(): string;
  restore(reader: DiskReader, ctx: RestoreContext): Promise<RestoreResult>;
}

function progress(ctx: RestoreContext, reader: DiskReader, done: number): void {
  ctx.events?.({ type: 'progress', id: `restore:${reader.key}`, label: `restore ${reader.key}`, done, total: reader.size });
}

/** Writes a sparse raw file; `<path>.partial` until complete, so a failed restore leaves no plausible file. */
export async function restoreToRawFile(reader: DiskReader, path: string, ctx: RestoreContext): Promise<RestoreResult> {
  const file = await AtomicFile.create(path);
  try {
    await file.handle.truncate(reader.size);
    const writer = new CoalescingWriter(file.data);
    let dataBytes = 0;
    let reported = 0;
    // The writer copies what it gathers and waits for what it writes directly, so the reader
    // may recycle its buffers.
    for await (const e of reader.extents({ signal: ctx.signal, reuseBuffers: true })) {
      for (const run of splitZeroRuns(e)) {
        if (!run.data) continue;
        await writer.write(run.offset, run.data);
        dataBytes += run.length;
      }
      if (e.offset + e.length - reported >= 64 << 20) {
        reported = e.offset + e.length;
        progress(ctx, reader, reported);
      }
    }
    await writer.close();
    await file.commit();
    progress(ctx, reader, reader.size);
    ctx.events?.({ type: 'progress-end', id: `restore:${reader.key}` });
    return { target: path, size: reader.size, dataBytes };
  } catch (err) {
    await file.discard();
    throw err;
  }
}

export class FileTarget implements RestoreTarget {
  constructor(
    readonly path: string,
    readonly format: 'raw' | 'qcow2' = 'raw',
    /** Injectable for tests; the project's command runner by default. */
    private readonly run: (argv: readonly string[], o?: CommandOptions) => Promise<CommandResult> = runCommand,
  ) {
    if (format !== 'raw' && format !== 'qcow2') throw new UsageError(`unknown format ${String(format)}`, { hint: 'use raw or qcow2' });
  }

  describe(): string {
    return `${this.format} file ${this.path}`;
  }

  async restore(reader: DiskReader, ctx: RestoreContext): Promise<RestoreResult> {
    if (this.format === 'raw') return restoreToRawFile(reader, this.path, ctx);
    // qcow2: a sparse raw next to the target (costs only the data), converted by qemu-img.
    const tmp = `${this.path}.raw-tmp`;
    const partial = `${this.path}.partial`;
    try {
      const r = await restoreToRawFile(reader, tmp, ctx);
      throwIfAborted(ctx.signal);
      await this.run(['qemu-img', 'convert', '-f', 'raw', '-O', 'qcow2', tmp, partial], { signal: ctx.signal });
      await rename(partial, this.path);
      return { ...r, target: this.path };
    } finally {
      await rm(tmp, { force: true });
      await rm(partial, { force: true });
    }
  }
}

/** Every byte in order (a pipe cannot have holes), honouring backpressure. */
export class StreamTarget implements RestoreTarget {
  constructor(
    readonly stream: Writable,
    readonly name = 'stdout',
  ) {}

  describe(): string {
    return this.name;
  }

  async restore(reader: DiskReader, ctx: RestoreContext): Promise<RestoreResult> {
    let dataBytes = 0;
    // A write error (EPIPE: the reader went away) may arrive while no write is pending.
    let failure: Error | undefined;
    const onError = (err: Error) => (failure ??= err);
    this.stream.on('error', onError);
    const broken = (err: Error) =>
      new DestinationError(`cannot write to ${this.name}: ${(err as NodeJS.ErrnoException).code === 'EPIPE' ? 'the reading end was closed' : err.message}`, { cause: err });
    // Wait for 'drain' only when the stream asks for it; a signal (Ctrl-C) ends the wait too,
    // so a reader that stopped reading cannot hold the process forever.
    const write = async (b: Buffer) => {
      if (failure) throw broken(failure);
      if (this.stream.write(b)) return;
      try {
        await once(this.stream, 'drain', ctx.signal ? { signal: ctx.signal } : {});
      } catch (err) {
        throwIfAborted(ctx.signal);
        throw broken(err as Error);
      }
    };
    // No reuseBuffers: a stream may keep a written buffer queued after write() returns.
    for await (const e of reader.extents({ signal: ctx.signal })) {
      if (e.data) {
        await write(e.data);
        dataBytes += e.length;
      } else {
        for (let done = 0; done < e.length; ) {
          const n = Math.min(e.length - done, 1 << 20);
          await write(zeros(n));
          done += n;
        }
      }
    }
    this.stream.off('error', onError);
    return { target: this.name, size: reader.size, dataBytes };
  }
}
