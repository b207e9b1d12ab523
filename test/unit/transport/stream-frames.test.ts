/**
 * The data stream's framing as vprotect checks it (FrameReader): every frame against what was
 * asked, in order; truncated, garbled, out-of-order and error streams fail clearly and never
 * hand out a byte that was not asked for.
 */
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { DataCorruptError, UnavailableError } from '../../../src/errors.js';
import { rejectionOf } from '../../helpers/errors.js';
import { encodeFrameHeader, FrameReader, FrameType, StreamProtocolError, StreamUnavailableError } from '../../../src/transport/stream/frames.js';

const hello = (size: number) => encodeFrameHeader(FrameType.hello, size, 0);
const data = (offset: number, bytes: Buffer) => Buffer.concat([encodeFrameHeader(FrameType.data, offset, bytes.length), bytes]);
const end = (bytes: number, frames: number) => encodeFrameHeader(FrameType.end, bytes, frames);
const error = (message: string) => Buffer.concat([encodeFrameHeader(FrameType.error, 0, Buffer.byteLength(message)), Buffer.from(message)]);

/** Delivers `stream` in pieces of `piece` bytes through target()/advance(), as a socket's onread does. */
function deliver(reader: FrameReader, stream: Buffer, piece: number): void {
  let p = 0;
  while (p < stream.length) {
    const t = reader.target();
    if (t.length === 0) throw new Error('target() returned an empty buffer');
    const n = Math.min(t.length, piece, stream.length - p);
    stream.copy(t, 0, p, p + n);
    p += n;
    reader.advance(n);
  }
}

describe('FrameReader', () => {
  const a = randomBytes(100_000);
  const b = randomBytes(65_536);
  const good = Buffer.concat([hello(1 << 20), data(0, a), data(200_000, b), end(a.length + b.length, 2)]);

  it.each([1, 23, 4096, 1 << 20])('matches frames to requests, delivered in pieces of %i bytes, into the given buffers', async (piece) => {
    const r = new FrameReader('test');
    const into = Buffer.alloc(128 * 1024, 0xee);
    const pa = r.expect(0, a.length, into);
    const pb = r.expect(200_000, b.length);
    r.expectEnd();
    deliver(r, good, piece);
    expect(await r.hello).toBe(1 << 20);
    const got = await pa;
    expect(got.equals(a)).toBe(true);
    expect(got.buffer).toBe(into.buffer); // read straight into the caller's buffer
    expect((await pb).equals(b)).toBe(true);
    expect(await r.ended).toEqual({ frames: 2, bytes: a.length + b.length });
  });

  it('feed() (chunks owned by the carrier) gives the same result', async () => {
    const r = new FrameReader('test');
    const pa = r.expect(0, a.length);
    const pb = r.expect(200_000, b.length);
    r.expectEnd();
    for (let p = 0; p < good.length; p += 32 * 1024) r.feed(good.subarray(p, p + 32 * 1024));
    expect((await pa).equals(a)).toBe(true);
    expect((await pb).equals(b)).toBe(true);
    await r.ended;
  });

  it('onAnswered runs once per answered read, after its promise is settled (the sender refills the helper from it)', async () => {
    const r = new FrameReader('test');
    const outstandingSeen: number[] = [];
    r.onAnswered = () => outstandingSeen.push(r.outstanding);
    const pa = r.expect(0, a.length);
    const pb = r.expect(200_000, b.length);
    r.expectEnd();
    deliver(r, good, 4096);
    await Promise.all([pa, pb, r.ended]);
    expect(outstandingSeen).toEqual([1, 0]);
  });

  it('a stream truncated inside a data frame fails that read and the ones after it; nothing partial is handed out', async () => {
    const r = new FrameReader('ssh hv1 → unix:/x (stream)');
    const pa = r.expect(0, a.length);
    const pb = r.expect(200_000, b.length);
    deliver(r, Buffer.concat([hello(1 << 20), data(0, a)]).subarray(0, 24 + 24 + 5000), 4096);
    r.close(new Error('the helper exited with status 2: vprotect-stream: the NBD server closed the connection in a reply'));
    const err = await rejectionOf(pa);
    expect(err).toBeInstanceOf(UnavailableError);
    expect(err.message).toBe(
      'data stream from ssh hv1 → unix:/x (stream): the stream ended in the middle of a frame with 2 read(s) outstanding: the helper exited with status 2: vprotect-stream: the NBD server closed the connection in a reply',
    );
    await expect(pb).rejects.toBe(err);
    await expect(r.ended).rejects.toBe(err);
  });

  it('a stream that ends between frames before the trailer is an error too', async () => {
    const r = new FrameReader('test');
    const pa = r.expect(0, a.length);
    const pb = r.expect(200_000, b.length);
    deliver(r, Buffer.concat([hello(1 << 20), data(0, a)]), 1 << 20);
    expect((await pa).equals(a)).toBe(true);
    r.close();
    await expect(pb).rejects.toThrow(new StreamProtocolError('test', 'the stream ended early with 1 read(s) outstanding'));
  });

  it('garbled bytes (bad magic) are a protocol error and later bytes are ignored', async () => {
    const r = new FrameReader('test');
    const pa = r.expect(0, a.length);
    const garbled = Buffer.concat([hello(1 << 20), data(0, a)]);
    garbled.writeUInt32BE(0xdeadbeef, 24); // the data frame's magic
    deliver(r, garbled, 1 << 20);
    const err = await rejectionOf(pa);
    expect(err).toBeInstanceOf(DataCorruptError);
    expect(err.message).toBe('data stream from test: bad frame magic 0xdeadbeef (garbled stream)');
    expect(r.target().length).toBeGreaterThan(0); // further bytes go nowhere useful
  });

  it('a frame out of order (or of another range) is refused, not handed to the wrong request', async () => {
    const r = new FrameReader('test');
    const pa = r.expect(0, a.length);
    const pb = r.expect(200_000, b.length);
    deliver(r, Buffer.concat([hello(1 << 20), data(200_000, b)]), 1 << 20);
    await expect(pa).rejects.toThrow('data 200000+65536 where 0+100000 was expected (out of order or wrong range)');
    await expect(pb).rejects.toThrow(StreamProtocolError);
  });

  it('data nobody asked for, or before the hello, is refused', async () => {
    const r1 = new FrameReader('test');
    deliver(r1, Buffer.concat([hello(1 << 20), data(0, a)]), 1 << 20);
    await expect(r1.ended).rejects.toThrow('data 0+100000 that was not asked for');
    const r2 = new FrameReader('test');
    const p = r2.expect(0, a.length);
    deliver(r2, data(0, a), 1 << 20);
    await expect(p).rejects.toThrow('frame type 2 before the hello');
    // Nothing from the stream was used yet: the caller may fall back to NBD.
    await expect(p).rejects.toBeInstanceOf(StreamUnavailableError);
  });

  it('output before the hello that is not the helper\'s (a login script printing) means the stream did not start', async () => {
    const r = new FrameReader('test');
    deliver(r, Buffer.concat([Buffer.from('Welcome to hv1!\nLast login: yesterday\n'), hello(1 << 20)]), 7);
    const err = await rejectionOf(r.hello);
    expect(err).toBeInstanceOf(StreamUnavailableError);
    expect((err as StreamUnavailableError).reason).toBe('start-failed');
    expect(err).not.toBeInstanceOf(DataCorruptError);
    expect(err.message).toBe('data stream from test: bad frame magic 0x57656c63 before the hello (output that is not the helper\'s, e.g. a login script\'s): "Welcome to hv1!.Last log"');
  });

  it('an error record fails the outstanding reads with the helper\'s message', async () => {
    const r = new FrameReader('ssh hv1 → unix:/x (stream)');
    const pa = r.expect(0, a.length);
    deliver(r, Buffer.concat([hello(1 << 20), error('NBD READ of 100000 bytes at offset 0 failed: Input/output error')]), 10);
    const err = await rejectionOf(pa);
    expect(err).toBeInstanceOf(UnavailableError);
    expect(err).not.toBeInstanceOf(DataCorruptError);
    expect(err.message).toBe('data stream from ssh hv1 → unix:/x (stream) failed: NBD READ of 100000 bytes at offset 0 failed: Input/output error');
  });

  it('an error record before the hello rejects the hello (a helper that could not connect)', async () => {
    const r = new FrameReader('test');
    deliver(r, error('cannot connect to the NBD socket /run/x.sock: No such file or directory'), 1 << 20);
    await expect(r.hello).rejects.toThrow('failed: cannot connect to the NBD socket /run/x.sock: No such file or directory');
  });

  it('a trailer with the wrong totals, early, or with reads unanswered is refused', async () => {
    const wrong = new FrameReader('test');
    const p = wrong.expect(0, a.length);
    wrong.expectEnd();
    deliver(wrong, Buffer.concat([hello(1 << 20), data(0, a), end(a.length + 1, 1)]), 1 << 20);
    expect((await p).equals(a)).toBe(true);
    await expect(wrong.ended).rejects.toThrow('trailer says 1 frame(s) of 100001 bytes, 1 of 100000 arrived');

    const early = new FrameReader('test');
    deliver(early, Buffer.concat([hello(1 << 20), end(0, 0)]), 1 << 20);
    await expect(early.ended).rejects.toThrow('end of stream before vprotect asked for it');

    const unanswered = new FrameReader('test');
    const q = unanswered.expect(0, 10);
    unanswered.expectEnd();
    deliver(unanswered, Buffer.concat([hello(1 << 20), end(0, 0)]), 1 << 20);
    await expect(q).rejects.toThrow('end of stream with 1 read(s) unanswered');
  });

  it('bytes after the trailer are a protocol error', async () => {
    const r = new FrameReader('test');
    r.expectEnd();
    deliver(r, Buffer.concat([hello(1 << 20), end(0, 0)]), 1 << 20);
    await r.ended;
    deliver(r, Buffer.from('junk'), 10);
    expect(r.failed?.message).toBe('data stream from test: 4 byte(s) after the end of the stream');
  });
});
