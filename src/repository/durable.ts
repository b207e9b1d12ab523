/**
 * The write protocol of docs/FORMAT.md §9: `<name>.partial` → fsync → rename → fsync of the
 * directory. On NFS, close-to-open consistency plus fsync makes the data durable on the server
 * before the rename makes it visible, so a reader never sees a complete name with partial data.
 */
import { open, rename, unlink, type FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';
import { DataFile } from './direct-io.js';

export const PARTIAL_SUFFIX = '.partial';

export async function fsyncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } catch (err) {
    // Some file systems refuse fsync on a directory (EINVAL); the rename is then as durable as it gets.
    if ((err as NodeJS.ErrnoException).code !== 'EINVAL') throw err;
  } finally {
    await fh.close();
  }
}

/** Writes a small file atomically and durably. */
export async function writeFileDurable(path: string, data: string | Buffer): Promise<void> {
  const file = await AtomicFile.create(path);
  try {
    await file.handle.writeFile(data);
    await file.commit();
  } catch (err) {
    await file.discard();
    throw err;
  }
}

/** A file being written under its `.partial` name until `commit()`. */
export class AtomicFile {
  private constructor(
    readonly path: string,
    /** Writes of bulk data: O_DIRECT where aligned (direct-io.ts). */
    readonly data: DataFile,
  ) {}

  static async create(path: string): Promise<AtomicFile> {
    const partial = path + PARTIAL_SUFFIX;
    const handle = await open(partial, 'w');
    return new AtomicFile(path, await DataFile.open(handle, partial));
  }

  /** The file `path`.partial that someone else created, opened as `handle`: committed or discarded the same way. */
  static adopt(path: string, handle: FileHandle): AtomicFile {
    return new AtomicFile(path, DataFile.plain(handle));
  }

  get handle(): FileHandle {
    return this.data.handle;
  }

  get partialPath(): string {
    return this.path + PARTIAL_SUFFIX;
  }

  /** fsync, close, rename into place, fsync the directory. */
  async commit(): Promise<void> {
    await this.data.closeDirect();
    await this.handle.sync();
    await this.handle.close();
    await rename(this.partialPath, this.path);
    await fsyncDir(dirname(this.path));
  }

  /** Closes and removes the partial file (best effort: it is garbage either way). */
  async discard(): Promise<void> {
    await this.data.closeDirect().catch(() => {});
    await this.handle.close().catch(() => {});
    await unlink(this.partialPath).catch(() => {});
  }
}
