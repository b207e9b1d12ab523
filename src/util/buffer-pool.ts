/**
 * Large buffers handed out again instead of allocated anew.
 *
 * Why: a multi-MiB `Buffer.allocUnsafe` is a fresh mmap every time, and the kernel then faults
 * in every 4 KiB page on first touch. On the lab VM that made filling a fresh 8 MiB buffer run
 * at 117–257 MiB/s against 2–4 GiB/s for a reused one, so a data path that allocates one
 * buffer per block runs at a tenth of the disk's speed.
 *
 * The contract that makes reuse safe is the producer's to state and the consumer's to honour:
 * "the data of an extent is valid until the consumer asks for the next one" (the NBD readers'
 * `reuseBuffers`, the chain reader's `reuseBuffers`). A producer takes a buffer, fills it,
 * yields views of it, and gives it back only once the consumer has asked for more. A consumer
 * that must keep bytes longer (a stream that queues writes, a list of pieces) copies them.
 *
 * The buffers start on a page boundary (see pageAlignedBuffer), so file writers can hand them
 * to O_DIRECT (src/repository/direct-io.ts).
 */

/** Alignment O_DIRECT asks of memory, file offsets and lengths (the largest logical block size in use). */
export const PAGE_BYTES = 4096;

/** The part of the WebAssembly API used here (tsconfig has no DOM lib, where its types live). */
interface WasmMemoryApi {
  Memory: new (d: { initial: number; maximum: number; shared?: boolean }) => { buffer: ArrayBuffer | SharedArrayBuffer };
}
const wasm = (globalThis as { WebAssembly?: WasmMemoryApi }).WebAssembly;

/** Backings made by pageAlignedBuffer: only views of these can go to O_DIRECT. */
const pageAligned = new WeakSet<ArrayBufferLike>();

/**
 * `size` bytes starting on a page boundary, zero-filled, or undefined when the runtime will not
 * give one. Node has no aligned allocator: a large ArrayBuffer comes from malloc, which puts it
 * 16 bytes past a page (measured: every O_DIRECT write from one failed with EINVAL). WebAssembly
 * memories are mapped whole pages by V8, so their base is aligned; `shared` gives a
 * SharedArrayBuffer-backed one (the hash worker reads it without a copy).
 */
export function pageAlignedBuffer(size: number, shared: boolean): Buffer | undefined {
  const pages = Math.max(1, Math.ceil(size / 65536));
  if (!wasm) return undefined;
  try {
    const memory = new wasm.Memory({ initial: pages, maximum: pages, ...(shared ? { shared: true } : {}) });
    pageAligned.add(memory.buffer);
    return Buffer.from(memory.buffer, 0, size);
  } catch {
    return undefined; // out of address space for wasm memories, or no WebAssembly: plain buffers still work
  }
}

/** True when `buf` starts on a page boundary of memory from pageAlignedBuffer. */
export function isPageAligned(buf: Buffer): boolean {
  return pageAligned.has(buf.buffer) && buf.byteOffset % PAGE_BYTES === 0;
}

export class BufferPool {
  private readonly free: Buffer[] = [];
  /** Every buffer this pool handed out (a view or a foreign buffer given back is refused). */
  private readonly handedOut = new WeakSet<Buffer>();
  /** Buffers allocated by this pool so far (tests and benches check that reuse happens). */
  allocated = 0;

  /**
   * @param bufferSize bytes of every buffer the pool hands out
   * @param maxFree buffers kept for reuse; more given back are dropped (bounds idle memory)
   * @param shared back the buffers with SharedArrayBuffers, so a worker thread can read them
   *   without a copy (hashing off the main thread)
   */
  constructor(
    readonly bufferSize: number,
    readonly maxFree = 4,
    readonly shared = false,
  ) {
    if (!Number.isSafeInteger(bufferSize) || bufferSize <= 0) throw new RangeError(`buffer pool: bad buffer size ${bufferSize}`);
    if (!Number.isSafeInteger(maxFree) || maxFree < 0) throw new RangeError(`buffer pool: bad maxFree ${maxFree}`);
  }

  /** A buffer of exactly `bufferSize` bytes with undefined content; a reused one when available. */
  take(): Buffer {
    const buf = this.free.pop();
    if (buf) return buf;
    this.allocated++;
    // Its own backing (never a slice of Node's shared pool), page-aligned when the runtime allows.
    const fresh =
      pageAlignedBuffer(this.bufferSize, this.shared) ??
      (this.shared ? Buffer.from(new SharedArrayBuffer(this.bufferSize)) : Buffer.allocUnsafeSlow(this.bufferSize));
    this.handedOut.add(fresh);
    return fresh;
  }

  /**
   * Returns a buffer obtained from `take()` (the whole buffer, not a view). The caller and
   * whoever it handed views to must be done with it: the next `take()` overwrites it.
   */
  give(buf: Buffer): void {
    if (!this.handedOut.has(buf)) {
      throw new RangeError(`buffer pool: given a buffer of ${buf.length} bytes that it did not hand out (its buffers are ${this.bufferSize})`);
    }
    // A buffer given twice would later be handed to two owners at once.
    if (this.free.includes(buf)) throw new Error('buffer pool: the same buffer was given back twice');
    if (this.free.length < this.maxFree) this.free.push(buf);
  }
}
