import { describe, expect, it } from 'vitest';
import { BufferPool } from '../../../src/util/buffer-pool.js';

describe('BufferPool', () => {
  it('hands a given-back buffer out again instead of allocating', () => {
    const pool = new BufferPool(1 << 20, 2);
    const a = pool.take();
    expect(a.length).toBe(1 << 20);
    pool.give(a);
    expect(pool.take()).toBe(a);
    expect(pool.allocated).toBe(1);
  });

  it('keeps at most maxFree idle buffers', () => {
    const pool = new BufferPool(4096, 1);
    const [a, b] = [pool.take(), pool.take()];
    pool.give(a);
    pool.give(b); // dropped: one is kept
    expect(pool.take()).toBe(a);
    pool.take();
    expect(pool.allocated).toBe(3);
  });

  it('refuses views, foreign buffers and double gives', () => {
    const pool = new BufferPool(1024);
    const a = pool.take();
    expect(() => pool.give(a.subarray(0, 100))).toThrow(/did not hand out/);
    expect(() => pool.give(Buffer.allocUnsafe(1024))).toThrow(/did not hand out/); // a slice of Node's shared pool
    pool.give(a);
    expect(() => pool.give(a)).toThrow(/twice/);
  });

  it('can back its buffers with SharedArrayBuffers (for worker threads) and still takes them back', () => {
    const pool = new BufferPool(8192, 1, true);
    const a = pool.take();
    expect(a.buffer).toBeInstanceOf(SharedArrayBuffer);
    pool.give(a);
    expect(pool.take()).toBe(a);
  });

  it('refuses a bad size', () => {
    expect(() => new BufferPool(0)).toThrow(RangeError);
    expect(() => new BufferPool(4096, -1)).toThrow(RangeError);
  });
});
