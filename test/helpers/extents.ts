/** Checks on extents read from a source, shared by the transport tests. */
import { expect } from 'vitest';
import type { Extent } from '../../src/repository/extents.js';

export async function collectExtents(it: AsyncIterable<Extent>): Promise<Extent[]> {
  const out: Extent[] = [];
  for await (const e of it) out.push(e);
  return out;
}

/** The extents cover `reference` exactly, in order, with no gap: data equal, zero extents zero there. */
export function expectSameAsReference(extents: Extent[], reference: Buffer): void {
  let end = 0;
  for (const e of extents) {
    expect(e.offset).toBe(end);
    const want = reference.subarray(e.offset, e.offset + e.length);
    if (e.data) expect(e.data.equals(want)).toBe(true);
    else expect(want.equals(Buffer.alloc(e.length))).toBe(true);
    end += e.length;
  }
  expect(end).toBe(reference.length);
}

/** Deterministic bytes that are never zero (so a run is data all along), different per seed. */
export function patternBytes(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = 1 + ((i * 131 + seed * 7919) % 255);
  return b;
}

/** Whether files in `dir` can be opened with O_DIRECT (tmpfs before Linux 6.6 cannot). */
export async function acceptsODirect(dir: string): Promise<boolean> {
  const { constants, open, rm } = await import('node:fs/promises');
  const path = `${dir}/.odirect-probe`;
  try {
    await (await open(path, constants.O_WRONLY | constants.O_CREAT | constants.O_DIRECT)).close();
    return true;
  } catch {
    return false;
  } finally {
    await rm(path, { force: true });
  }
}
