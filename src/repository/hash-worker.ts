/**
 * sha256 of buffers on a worker thread, so that checking a block and handling the previous one
 * run at the same time. Hashing is the largest CPU cost of a restore (every data block of a
 * full image is checked against its block map: ~0.6 s of one core per GiB with sha_ni) and the
 * main thread has the rest to do (zero detection, copies, I/O dispatch).
 *
 * Only buffers backed by a SharedArrayBuffer go to the worker (no copy); anything else is
 * hashed here. One worker per process, started on first use; it holds the process open only
 * while a digest is pending.
 */
import { createHash } from 'node:crypto';
import { Worker } from 'node:worker_threads';

// Plain CommonJS source (eval: true), so the worker loads the same from dist/ and under vitest.
const WORKER_SOURCE = `
const { parentPort } = require('node:worker_threads');
const { createHash } = require('node:crypto');
parentPort.on('message', ({ id, buffer, offset, length }) => {
  try {
    const digest = createHash('sha256').update(new Uint8Array(buffer, offset, length)).digest();
    parentPort.postMessage({ id, digest });
  } catch (err) {
    parentPort.postMessage({ id, error: String(err && err.message || err) });
  }
});
`;

interface Pending {
  resolve: (digest: Buffer) => void;
  reject: (err: Error) => void;
}

class HashWorker {
  private readonly worker: Worker;
  private readonly pending = new Map<number, Pending>();
  private nextId = 0;
  dead = false;

  constructor() {
    this.worker = new Worker(WORKER_SOURCE, { eval: true });
    this.worker.unref();
    this.worker.on('message', (m: { id: number; digest?: Uint8Array; error?: string }) => {
      const p = this.pending.get(m.id);
      if (!p) return;
      this.pending.delete(m.id);
      if (this.pending.size === 0) this.worker.unref();
      if (m.digest) p.resolve(Buffer.from(m.digest.buffer, m.digest.byteOffset, m.digest.byteLength));
      else p.reject(new Error(`sha256 worker: ${m.error}`));
    });
    const fail = (err: Error) => {
      this.dead = true;
      for (const p of this.pending.values()) p.reject(err);
      this.pending.clear();
    };
    this.worker.on('error', fail);
    this.worker.on('exit', (code) => fail(new Error(`sha256 worker exited (code ${code})`)));
  }

  digest(data: Buffer): Promise<Buffer> {
    const id = this.nextId++;
    return new Promise<Buffer>((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      if (this.pending.size === 1) this.worker.ref();
      this.worker.postMessage({ id, buffer: data.buffer, offset: data.byteOffset, length: data.length });
    });
  }
}

let shared: HashWorker | undefined;

/**
 * sha256 of `data`. The caller must not change `data` until the promise settles. A buffer not
 * backed by a SharedArrayBuffer, or a worker that cannot start, is hashed on this thread.
 */
export async function sha256Off(data: Buffer): Promise<Buffer> {
  if (!(data.buffer instanceof SharedArrayBuffer)) return createHash('sha256').update(data).digest();
  if (!shared || shared.dead) {
    try {
      shared = new HashWorker();
    } catch {
      return createHash('sha256').update(data).digest();
    }
  }
  // A worker that died (it should not) costs speed, not the restore.
  return shared.digest(data).catch(() => createHash('sha256').update(data).digest());
}
