/**
 * Files written front to back through the durable protocol, with writes gathered into large
 * buffers: AppendFile as is (a diff, whose records its index hashes), HashedFile hashed as it is
 * written (for SHA256SUMS: indexes and block maps).
 */
import { createHash } from 'node:crypto';
import { AtomicFile } from './durable.js';
import { CoalescingWriter } from './coalescing-writer.js';

export class AppendFile {
  /** Bytes appended so far = the file's length. */
  size = 0;

  private constructor(
    private readonly file: AtomicFile,
    private readonly writer: CoalescingWriter,
  ) {}

  static async create(path: string, bufferSize?: number): Promise<AppendFile> {
    const file = await AtomicFile.create(path);
    return new AppendFile(file, new CoalescingWriter(file.data, bufferSize));
  }

  async append(data: Buffer): Promise<void> {
    await this.writer.write(this.size, data);
    this.size += data.length;
  }

  /** Durable under its final name. */
  async commit(): Promise<void> {
    await this.writer.close();
    await this.file.commit();
  }

  async discard(): Promise<void> {
    await this.writer.close().catch(() => {});
    await this.file.discard();
  }
}

export class HashedFile {
  private readonly hash = createHash('sha256');

  private constructor(private readonly file: AppendFile) {}

  static async create(path: string, bufferSize?: number): Promise<HashedFile> {
    return new HashedFile(await AppendFile.create(path, bufferSize));
  }

  /** Bytes appended so far = the file's length. */
  get size(): number {
    return this.file.size;
  }

  async append(data: Buffer | string): Promise<void> {
    const b = typeof data === 'string' ? Buffer.from(data, 'latin1') : data;
    this.hash.update(b);
    await this.file.append(b);
  }

  /** Durable under its final name; returns the file's sha256 (hex). */
  async commit(): Promise<string> {
    await this.file.commit();
    return this.hash.digest('hex');
  }

  async discard(): Promise<void> {
    await this.file.discard();
  }
}

/** Text lines gathered into ~1 MiB appends (an index or block map line is ~80 bytes). */
export class LineBuffer {
  private parts: string[] = [];
  private bytes = 0;

  constructor(private readonly file: HashedFile) {}

  async add(line: string): Promise<void> {
    this.parts.push(line);
    this.bytes += line.length;
    if (this.bytes >= 1 << 20) await this.flush();
  }

  get pending(): number {
    return this.bytes;
  }

  async flush(): Promise<void> {
    if (this.parts.length === 0) return;
    const text = this.parts.join('');
    this.parts = [];
    this.bytes = 0;
    await this.file.append(text);
  }
}
