/**
 * Block maps (docs/FORMAT.md §4.1): the sha256 of every blockSize block of the logical disk,
 * one hex digest per line. Built while the data streams past (each byte hashed once); blocks
 * that receive no data are all-zero and get a precomputed digest instead of hashing zeros.
 */
import { createHash, type Hash } from 'node:crypto';
import { DataCorruptError } from '../errors.js';
import { zeros } from './extents.js';

const zeroDigests = new Map<number, Buffer>();

/** sha256 of `length` zero bytes (cached: a block map of an empty 1 TiB disk hashes one block). */
export function zeroDigest(length: number): Buffer {
  let d = zeroDigests.get(length);
  if (!d) {
    const h = createHash('sha256');
    for (let done = 0; done < length; done += 1 << 20) h.update(zeros(Math.min(1 << 20, length - done)));
    d = h.digest();
    zeroDigests.set(length, d);
  }
  return d;
}

export function blockCount(size: number, blockSize: number): number {
  return Math.ceil(size / blockSize);
}

/**
 * Feeds data at ascending offsets; emits one digest per block in order through `emit`.
 * Gaps between data read as zeros.
 */
export class BlockMapBuilder {
  private block = 0;
  /** Absolute position up to which the current block has been fed. */
  private pos = 0;
  private hash: Hash | undefined;

  constructor(
    readonly blockSize: number,
    private readonly emit: (digest: Buffer) => void,
  ) {}

  private blockEnd(size: number): number {
    return Math.min((this.block + 1) * this.blockSize, size);
  }

  private finishBlock(size: number): void {
    const end = this.blockEnd(size);
    if (this.hash) {
      if (this.pos < end) this.feedZeros(end - this.pos);
      this.emit(this.hash.digest());
    } else {
      this.emit(zeroDigest(end - this.block * this.blockSize));
    }
    this.hash = undefined;
    this.block++;
    this.pos = this.block * this.blockSize;
  }

  private feedZeros(n: number): void {
    for (let done = 0; done < n; ) {
      const take = Math.min(n - done, 1 << 20);
      this.hash!.update(zeros(take));
      done += take;
    }
    this.pos += n;
  }

  /** Everything before `offset` that was not fed is zero. */
  private advanceTo(offset: number): void {
    while (this.pos < offset) {
      const end = (this.block + 1) * this.blockSize;
      if (offset >= end) {
        this.finishBlock(Infinity);
        continue;
      }
      this.hash ??= createHash('sha256');
      this.feedZeros(offset - this.pos);
    }
  }

  data(offset: number, data: Buffer): void {
    if (offset < this.pos) throw new Error(`block map: data at ${offset} after ${this.pos}`);
    this.advanceTo(offset);
    let at = 0;
    while (at < data.length) {
      const end = (this.block + 1) * this.blockSize;
      const take = Math.min(data.length - at, end - this.pos);
      this.hash ??= createHash('sha256');
      this.hash.update(data.subarray(at, at + take));
      at += take;
      this.pos += take;
      if (this.pos === end) this.finishBlock(Infinity);
    }
  }

  /** Completes the map for a disk of `size` bytes (the last block may be short). */
  finish(size: number): void {
    const total = blockCount(size, this.blockSize);
    while (this.block < total) this.finishBlock(size);
  }
}

/** Block map text ↔ digests (32 bytes each, concatenated). */
export function parseBlockMap(text: string, size: number, blockSize: number, what: string): Buffer {
  const expected = blockCount(size, blockSize);
  if (expected === 0 && text === '') return Buffer.alloc(0);
  if (!text.endsWith('\n')) throw new DataCorruptError(`${what}: block map is truncated (no final newline)`);
  const lines = text.slice(0, -1).split('\n');
  if (lines.length !== expected) throw new DataCorruptError(`${what}: block map has ${lines.length} lines, a disk of ${size} bytes in ${blockSize}-byte blocks needs ${expected}`);
  const out = Buffer.alloc(expected * 32);
  lines.forEach((line, i) => {
    if (!/^[0-9a-f]{64}$/.test(line)) throw new DataCorruptError(`${what}: line ${i + 1} of the block map is not a sha256`);
    out.write(line, i * 32, 'hex');
  });
  return out;
}

export function digestAt(map: Buffer, block: number): Buffer {
  return map.subarray(block * 32, block * 32 + 32);
}
