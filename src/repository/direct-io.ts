/**
 * A repository data file written with O_DIRECT wherever the bytes allow it.
 *
 * Why: copying into the page cache was the largest CPU cost of a backup on this kind of VM.
 * `perf` of a 1 GiB full over TCP put 42 % of vprotect's samples in the kernel's
 * copy_folio_from_iter_atomic, and `dd bs=4M` of 1 GiB took 2.3–5.0 s (1.8–3.8 s of system
 * time) buffered against 1.4 s (0.3 s) with `oflag=direct`. A backup writes each byte once and
 * reads it back rarely, so the page cache buys nothing and evicts the host's working set.
 *
 * O_DIRECT needs the memory, the file offset and the length aligned to the logical block size
 * (PAGE_BYTES covers 512 and 4096). Memory comes aligned from src/util/buffer-pool.ts; writers
 * align offsets and lengths where they can (block-image-writer.ts, coalescing-writer.ts). Any
 * write that is not aligned — a record header, the tail of a file — goes through the ordinary
 * handle of the same file. Both handles share the inode, so the owner's fsync of the ordinary
 * handle makes both kinds of write durable. A filesystem without O_DIRECT (tmpfs) refuses the
 * open, and one that wants a larger alignment fails the first write with EINVAL: from then on
 * everything goes the ordinary way.
 */
import { constants, type FileHandle, open } from 'node:fs/promises';
import { isPageAligned, PAGE_BYTES } from '../util/buffer-pool.js';

export class DataFile {
  private constructor(
    /** The ordinary handle: unaligned writes, truncate, fsync. */
    readonly handle: FileHandle,
    private direct: FileHandle | undefined,
  ) {}

  /** Only the ordinary handle: a file another process writes, which vprotect only reads back and syncs. */
  static plain(handle: FileHandle): DataFile {
    return new DataFile(handle, undefined);
  }

  /** Adds an O_DIRECT handle of `path` to `handle` (the same file) when the filesystem has one. */
  static async open(handle: FileHandle, path: string): Promise<DataFile> {
    let direct: FileHandle | undefined;
    if (constants.O_DIRECT) direct = await open(path, constants.O_WRONLY | constants.O_DIRECT).catch(() => undefined);
    return new DataFile(handle, direct);
  }

  /** Whether writes can still go around the page cache (benches and tests report it). */
  get directIo(): boolean {
    return this.direct !== undefined;
  }

  /** Writes all of `data` at `position`: directly when aligned, else through the page cache. */
  async write(data: Buffer, position: number): Promise<void> {
    const direct = this.direct;
    if (direct && position % PAGE_BYTES === 0 && data.length % PAGE_BYTES === 0 && isPageAligned(data)) {
      try {
        await writeAll(direct, data, position);
        return;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EINVAL') throw err;
        // The device wants more alignment than PAGE_BYTES: write this (again) the ordinary way.
        await this.closeDirect();
      }
    }
    await writeAll(this.handle, data, position);
  }

  /** Closes the O_DIRECT handle (the owner closes `handle`); later writes go the ordinary way. */
  async closeDirect(): Promise<void> {
    const direct = this.direct;
    this.direct = undefined;
    await direct?.close();
  }
}

/**
 * Reads for the restore side: the data was written around the page cache, and reading it back
 * through the cache costs the same page-cache work as writing it did. `readAligned` reads
 * `length` bytes at a page-aligned `position` into page-aligned `into` (which must hold the
 * length rounded up to a page) with O_DIRECT, or returns undefined when it cannot (the caller
 * reads the ordinary way). Fewer bytes come back only at the end of the file.
 */
export class DirectReader {
  private constructor(private handle: FileHandle | undefined) {}

  static async open(path: string): Promise<DirectReader> {
    const handle = constants.O_DIRECT ? await open(path, constants.O_RDONLY | constants.O_DIRECT).catch(() => undefined) : undefined;
    return new DirectReader(handle);
  }

  async readAligned(position: number, length: number, into: Buffer): Promise<Buffer | undefined> {
    const handle = this.handle;
    const whole = Math.ceil(length / PAGE_BYTES) * PAGE_BYTES;
    if (!handle || position % PAGE_BYTES !== 0 || into.length < whole || !isPageAligned(into)) return undefined;
    let done = 0;
    try {
      while (done < whole) {
        const { bytesRead } = await handle.read(into, done, whole - done, position + done);
        done += bytesRead;
        // End of file, or a short read that left the position unaligned (only at the end).
        if (bytesRead === 0 || done % PAGE_BYTES !== 0) break;
      }
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EINVAL') throw err;
      await this.close(); // the device wants more alignment: the ordinary way from now on
      return undefined;
    }
    return into.subarray(0, Math.min(done, length));
  }

  async close(): Promise<void> {
    const handle = this.handle;
    this.handle = undefined;
    await handle?.close();
  }
}

export async function writeAll(fh: FileHandle, data: Buffer, position: number): Promise<void> {
  let done = 0;
  while (done < data.length) {
    const { bytesWritten } = await fh.write(data, done, data.length - done, position + done);
    done += bytesWritten;
  }
}
