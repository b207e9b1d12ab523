/**
 * Read pacing: a source whose channel asks for OpenSSH's pacing is read with its request size and
 * bytes in flight by default; explicit reader options still win; no pacing keeps the
 * local-socket defaults. The source records every request and the most bytes outstanding.
 */
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import type { Extent } from '../../../src/repository/extents.js';
import { FULL_READ_CONTEXTS, readFull, OPENSSH_PACING, type NbdSource, type ReadPacing } from '../../../src/transport/nbd/index.js';

const MiB = 1024 * 1024;

function source(data: Buffer, pacing?: ReadPacing) {
  let outstanding = 0;
  const stats = { maxOutstanding: 0, sizes: new Set<number>() };
  const src: NbdSource = {
    description: 'test',
    ...(pacing ? { pacing } : {}),
    info: {
      name: '',
      size: data.length,
      flags: 0,
      readOnly: true,
      canMultiConn: false,
      minBlock: 1,
      preferredBlock: 4096,
      maxBlock: 32 * MiB,
      contexts: new Map(FULL_READ_CONTEXTS.map((c, i) => [c, i + 1])),
    },
    async read(offset, length) {
      outstanding += length;
      stats.maxOutstanding = Math.max(stats.maxOutstanding, outstanding);
      stats.sizes.add(length);
      await new Promise((r) => setTimeout(r, 1));
      outstanding -= length;
      return Buffer.from(data.subarray(offset, offset + length));
    },
    async blockStatus(offset, length) {
      // All data, nothing zero: every byte has to be read.
      return new Map(FULL_READ_CONTEXTS.map((c) => [c, [{ offset, length, flags: 0 }]]));
    },
  };
  return { src, stats };
}

async function readAll(src: NbdSource, options = {}): Promise<Buffer> {
  const parts: Extent[] = [];
  for await (const e of readFull(src, { zeroBlockSize: 0, ...options })) parts.push(e);
  return Buffer.concat(parts.map((e) => e.data ?? Buffer.alloc(e.length)));
}

describe('read pacing', () => {
  const data = randomBytes(24 * MiB);

  it('OpenSSH pacing: 256 KiB requests, at most 1 MiB outstanding, same bytes', async () => {
    const { src, stats } = source(data, OPENSSH_PACING);
    expect((await readAll(src)).equals(data)).toBe(true);
    expect(Math.max(...stats.sizes)).toBe(256 * 1024);
    expect(stats.maxOutstanding).toBeLessThanOrEqual(1 * MiB);
    expect(stats.maxOutstanding).toBeGreaterThan(256 * 1024); // pipelined, not one at a time
  });

  it('explicit reader options win over the pacing', async () => {
    const { src, stats } = source(data, OPENSSH_PACING);
    expect((await readAll(src, { maxRequestBytes: 512 * 1024, maxBytesInFlight: 8 * MiB })).equals(data)).toBe(true);
    expect(Math.max(...stats.sizes)).toBe(512 * 1024);
    expect(stats.maxOutstanding).toBeGreaterThan(1 * MiB);
    expect(stats.maxOutstanding).toBeLessThanOrEqual(8 * MiB);
  });

  it('without pacing, local-socket defaults (512 KiB requests, far more in flight)', async () => {
    const { src, stats } = source(data);
    expect((await readAll(src)).equals(data)).toBe(true);
    expect(Math.max(...stats.sizes)).toBe(512 * 1024);
    expect(stats.maxOutstanding).toBeGreaterThan(4 * MiB);
  });
});
