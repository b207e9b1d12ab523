/**
 * The framing of the one-way data stream (helper.ts writes it, FrameReader checks it).
 *
 * vprotect → helper (stdin), 16 bytes per request, big-endian:
 *   u32 type (1 READ, 2 END: no more requests) · u32 length · u64 offset
 * helper → vprotect (stdout), a 24-byte header per frame, big-endian:
 *   u32 magic 0x56505331 ("VPS1") · u32 type · u64 a · u64 b
 *   HELLO  a = export size, b = 0                  (once, after the NBD handshake)
 *   DATA   a = offset, b = length, then the bytes  (exactly the requests, in request order)
 *   END    a = data bytes sent, b = data frames    (after the END request; then exit 0)
 *   ERROR  a = 0, b = message length, then UTF-8   (then exit 2)
 *
 * Every frame is checked against what was asked: a DATA frame must be the oldest outstanding
 * request (offset and length), END must come with nothing outstanding and the right totals.
 * Anything else is a protocol violation and nothing more from the stream is used; a request's
 * bytes are handed out only once its whole frame has arrived, so a short stream never yields a
 * partial or wrong range.
 */
import { DataCorruptError, UnavailableError, type ErrorDetails } from '../../errors.js';

export const FRAME_MAGIC = 0x56505331;
export const FRAME_HEADER_BYTES = 24;
export const REQUEST_BYTES = 16;
export const FrameType = { hello: 1, data: 2, end: 3, error: 4 } as const;
export const RequestType = { read: 1, end: 2 } as const;
/** Longest error message accepted (the helper cuts at 4 KiB). */
const MAX_MESSAGE = 64 * 1024;

export function encodeRequest(type: number, offset: number, length: number, into = Buffer.alloc(REQUEST_BYTES), at = 0): Buffer {
  into.writeUInt32BE(type, at);
  into.writeUInt32BE(length, at + 4);
  into.writeBigUInt64BE(BigInt(offset), at + 8);
  return into;
}

/** A frame header (the helper's side; tests use it to script streams). */
export function encodeFrameHeader(type: number, a: number, b: number, magic = FRAME_MAGIC): Buffer {
  const h = Buffer.alloc(FRAME_HEADER_BYTES);
  h.writeUInt32BE(magic, 0);
  h.writeUInt32BE(type, 4);
  h.writeBigUInt64BE(BigInt(a), 8);
  h.writeBigUInt64BE(BigInt(b), 16);
  return h;
}

/**
 * The stream cannot be used here, and plain NBD can: the interpreter is missing, or the helper
 * or ssh failed before the stream began (before the hello, so nothing from it was used).
 * `reason` says which; the caller falls back (dataChannel auto) or fails (dataChannel stream).
 */
export class StreamUnavailableError extends UnavailableError {
  constructor(
    message: string,
    readonly reason: 'no-interpreter' | 'start-failed',
    details: ErrorDetails = {},
  ) {
    super(message, details);
  }
}

/** The stream broke its framing: nothing more from it can be trusted. */
export class StreamProtocolError extends DataCorruptError {
  constructor(where: string, message: string, details: ErrorDetails = {}) {
    super(`data stream from ${where}: ${message}`, {
      hint: 'the remote stream helper sent something that does not match what was asked; no data from it after that point was used',
      ...details,
    });
  }
}

interface Pending {
  offset: number;
  length: number;
  into: Buffer | undefined;
  resolve(data: Buffer): void;
  reject(err: Error): void;
}

type State =
  | { at: 'header'; filled: number }
  | { at: 'data'; req: Pending; dest: Buffer; filled: number }
  | { at: 'message'; dest: Buffer; filled: number }
  | { at: 'closed' };

function deferred<T>(): { promise: Promise<T>; resolve(v: T): void; reject(e: Error): void } {
  let resolve!: (v: T) => void;
  let reject!: (e: Error) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  promise.catch(() => {}); // observed by whoever awaits it; never an unhandled rejection
  return { promise, resolve, reject };
}

/**
 * Parses the helper's stdout and matches it with the requests. Bytes go straight where they
 * belong: `target()` is the buffer the next bytes should land in (a socket's `onread.buffer`
 * asks it before every read, so data is read directly into the request's destination), and
 * `advance(n)` says n bytes landed there. `feed()` does the same for streams that hand out
 * their own chunks (ssh2), with one copy.
 */
export class FrameReader {
  private readonly pending: Pending[] = [];
  private head = 0;
  private state: State = { at: 'header', filled: 0 };
  private readonly header = Buffer.alloc(FRAME_HEADER_BYTES);
  /** Where bytes go once the stream is closed or failed (they are ignored). */
  private readonly sink = Buffer.alloc(64 * 1024);
  private endAsked = false;
  private failure: Error | undefined;
  private frames = 0;
  private bytes = 0;
  private readonly helloD = deferred<number>();
  private readonly endD = deferred<{ frames: number; bytes: number }>();
  private helloSeen = false;
  /** Called once, when the reader fails: the carrier stops reading (see socketPair). */
  onFailure: ((err: Error) => void) | undefined;
  /** Called after each answered read (the sender refills the helper's queue, remote-stream.ts). */
  onAnswered: (() => void) | undefined;

  constructor(
    /** For messages: "ssh hv1 → unix:/run/x.sock (stream)". */
    readonly description: string,
  ) {}

  /** Resolves with the export size the helper announced. */
  get hello(): Promise<number> {
    return this.helloD.promise;
  }

  /** Resolves when the trailer arrived and matched. */
  get ended(): Promise<{ frames: number; bytes: number }> {
    return this.endD.promise;
  }

  get failed(): Error | undefined {
    return this.failure;
  }

  /** Requests asked and not yet answered. */
  get outstanding(): number {
    return this.pending.length - this.head;
  }

  /** Registers the next request (requests are answered in this order); resolves with its bytes. */
  expect(offset: number, length: number, into?: Buffer): Promise<Buffer> {
    if (this.failure) return Promise.reject(this.failure);
    if (this.endAsked) return Promise.reject(new Error('FrameReader: request after the end'));
    if (into && into.length < length) throw new RangeError(`destination of ${into.length} bytes for a ${length}-byte read`);
    const d = deferred<Buffer>();
    this.pending.push({ offset, length, into, resolve: d.resolve, reject: d.reject });
    return d.promise;
  }

  /** No more requests: the next frame after the outstanding ones must be END. */
  expectEnd(): void {
    this.endAsked = true;
  }

  /** Where the next bytes go. Never empty. */
  target = (): Buffer => {
    const s = this.state;
    switch (s.at) {
      case 'header':
        return this.header.subarray(s.filled);
      case 'data':
      case 'message':
        return s.dest.subarray(s.filled);
      case 'closed':
        return this.sink;
    }
  };

  /** `n` bytes landed at the start of the last `target()`. */
  advance = (n: number): void => {
    const s = this.state;
    if (s.at === 'closed') {
      if (n > 0 && !this.failure) this.fail(new StreamProtocolError(this.description, `${n} byte(s) after the end of the stream`));
      return;
    }
    s.filled += n;
    if (s.at === 'header') {
      if (s.filled === FRAME_HEADER_BYTES) this.onHeader();
    } else if (s.filled === s.dest.length) {
      if (s.at === 'data') this.onData(s.req, s.dest);
      else this.onMessage(s.dest);
    }
  };

  /** Bytes handed over by a stream that owns its buffers (copied to where they belong). */
  feed(chunk: Buffer): void {
    let p = 0;
    while (p < chunk.length) {
      const t = this.target();
      const n = Math.min(t.length, chunk.length - p);
      chunk.copy(t, 0, p, p + n);
      p += n;
      this.advance(n);
    }
  }

  /**
   * The stream ended (no more bytes). Before the trailer this is a failure: `why` says what
   * the process reported (exit status, stderr), else a generic "ended early".
   */
  close(why?: Error): void {
    if (this.state.at === 'closed' && !this.failure) return;
    if (this.failure) return;
    const inFrame = this.state.at !== 'header' || (this.state.at === 'header' && this.state.filled > 0);
    const what = `the stream ended ${inFrame ? 'in the middle of a frame' : 'early'}${this.outstanding ? ` with ${this.outstanding} read(s) outstanding` : ''}`;
    this.fail(why ? new UnavailableError(`data stream from ${this.description}: ${what}: ${why.message}`, { cause: why }) : new StreamProtocolError(this.description, what));
  }

  /** Fails every outstanding request (and hello/end) with `err`; later bytes are ignored. */
  fail(err: Error): void {
    if (this.failure) return;
    this.failure = err;
    this.state = { at: 'closed' };
    for (let i = this.head; i < this.pending.length; i++) this.pending[i]!.reject(err);
    this.pending.length = 0;
    this.head = 0;
    this.helloD.reject(err);
    this.endD.reject(err);
    this.onFailure?.(err);
  }

  private onHeader(): void {
    const h = this.header;
    const magic = h.readUInt32BE(0);
    const type = h.readUInt32BE(4);
    const a = h.readBigUInt64BE(8);
    const b = h.readBigUInt64BE(16);
    // Before the hello nothing from the stream has been used, and what arrives there may not be
    // the helper's at all (a login script that prints on a non-interactive ssh): the stream did
    // not start, and plain NBD can still carry the data.
    if (magic !== FRAME_MAGIC) {
      const what = `bad frame magic 0x${magic.toString(16).padStart(8, '0')}`;
      if (!this.helloSeen) return this.fail(notStarted(this.description, `${what} before the hello (output that is not the helper's, e.g. a login script's): ${JSON.stringify(h.toString('latin1').replace(/[^\x20-\x7e]/g, '.'))}`));
      return this.fail(new StreamProtocolError(this.description, `${what} (garbled stream)`));
    }
    if (!this.helloSeen && type !== FrameType.hello && type !== FrameType.error) {
      return this.fail(notStarted(this.description, `frame type ${type} before the hello`));
    }
    switch (type) {
      case FrameType.hello:
        if (this.helloSeen) return this.fail(new StreamProtocolError(this.description, 'a second hello'));
        this.helloSeen = true;
        this.state = { at: 'header', filled: 0 };
        this.helloD.resolve(Number(a));
        return;
      case FrameType.data: {
        const req = this.pending[this.head];
        const offset = Number(a);
        const length = Number(b);
        if (!req) return this.fail(new StreamProtocolError(this.description, `data ${offset}+${length} that was not asked for`));
        if (req.offset !== offset || req.length !== length) {
          return this.fail(new StreamProtocolError(this.description, `data ${offset}+${length} where ${req.offset}+${req.length} was expected (out of order or wrong range)`));
        }
        const dest = req.into ? req.into.subarray(0, length) : Buffer.allocUnsafe(length);
        this.state = { at: 'data', req, dest, filled: 0 };
        return;
      }
      case FrameType.end: {
        if (!this.endAsked) return this.fail(new StreamProtocolError(this.description, 'end of stream before vprotect asked for it'));
        if (this.outstanding) return this.fail(new StreamProtocolError(this.description, `end of stream with ${this.outstanding} read(s) unanswered`));
        if (Number(a) !== this.bytes || Number(b) !== this.frames) {
          return this.fail(new StreamProtocolError(this.description, `trailer says ${b} frame(s) of ${a} bytes, ${this.frames} of ${this.bytes} arrived`));
        }
        this.state = { at: 'closed' };
        this.endD.resolve({ frames: this.frames, bytes: this.bytes });
        return;
      }
      case FrameType.error: {
        const length = Number(b);
        if (length > MAX_MESSAGE) return this.fail(new StreamProtocolError(this.description, `error record of ${length} bytes (garbled stream)`));
        if (length === 0) return this.onMessage(Buffer.alloc(0));
        this.state = { at: 'message', dest: Buffer.alloc(length), filled: 0 };
        return;
      }
      default:
        return this.fail(new StreamProtocolError(this.description, `unknown frame type ${type} (garbled stream)`));
    }
  }

  private onData(req: Pending, dest: Buffer): void {
    this.head++;
    if (this.head > 1024 && this.head * 2 > this.pending.length) {
      this.pending.splice(0, this.head);
      this.head = 0;
    }
    this.frames++;
    this.bytes += dest.length;
    this.state = { at: 'header', filled: 0 };
    req.resolve(dest);
    this.onAnswered?.();
  }

  private onMessage(dest: Buffer): void {
    const text = dest.toString('utf8').trim() || 'no message';
    this.fail(new UnavailableError(`data stream from ${this.description} failed: ${text}`, { data: { reason: 'helper-error' } }));
  }
}

function notStarted(description: string, message: string): StreamUnavailableError {
  return new StreamUnavailableError(`data stream from ${description}: ${message}`, 'start-failed');
}
