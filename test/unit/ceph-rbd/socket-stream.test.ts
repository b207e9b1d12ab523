/**
 * The local command reader (stdout through a Unix socket into reused slabs): every byte arrives
 * in order whatever the consumer's pace, slabs are reused rather than allocated per read, read-
 * ahead is bounded, failures carry the command's stderr, and stopping early stops the command.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { streamThroughSocket } from '../../../strategies/ceph-rbd/socket-stream.js';

const MiB = 1 << 20;
let dir: string;
let file: string;
let content: Buffer;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vprotect-sock-test-'));
  file = join(dir, 'data.bin');
  content = randomBytes(24 * MiB + 12345);
  await writeFile(file, content);
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const socketDirs = async () => (await readdir(tmpdir())).filter((n) => n.startsWith('vprotect-out-'));

describe('streamThroughSocket', () => {
  it('delivers every byte in order with a fast consumer; two slabs suffice', async () => {
    const before = await socketDirs();
    const p = await streamThroughSocket(['cat', file], { readAhead: 32 * MiB });
    expect(p.reusesBuffers).toBe(true);
    // The socket's directory is gone as soon as the command has its end.
    expect(await socketDirs()).toEqual(before);
    const h = createHash('sha256');
    let n = 0;
    for await (const c of p.stdout) {
      h.update(c);
      n += c.length;
    }
    await p.done;
    expect(n).toBe(content.length);
    expect(h.digest('hex')).toBe(sha(content));
    expect(p.reader.allocated).toBeLessThanOrEqual(3);
  });

  it('a slow consumer: read-ahead stays bounded, slabs are reused, bytes are exact', async () => {
    const slab = 256 * 1024;
    const readAhead = 1 * MiB;
    const p = await streamThroughSocket(['cat', file], { readAhead, slabBytes: slab });
    const h = createHash('sha256');
    let chunks = 0;
    for await (const c of p.stdout) {
      // The chunk is only valid until the next is asked for: hash it now, then dawdle.
      h.update(c);
      if (++chunks % 40 === 0) await sleep(2);
    }
    await p.done;
    expect(h.digest('hex')).toBe(sha(content));
    // 24 MiB through 256 KiB slabs: without reuse ~100 slabs; with it, what read-ahead can fill.
    expect(p.reader.allocated).toBeLessThanOrEqual(readAhead / slab + 3);
  });

  it('a chunk is refilled once the next is asked for (the contract consumers rely on)', async () => {
    const p = await streamThroughSocket(['cat', file], { readAhead: 512 * 1024, slabBytes: 128 * 1024 });
    const kept: Buffer[] = [];
    const copies: Buffer[] = [];
    for await (const c of p.stdout) {
      kept.push(c);
      copies.push(Buffer.from(c));
    }
    await p.done;
    expect(sha(Buffer.concat(copies))).toBe(sha(content));
    // Views kept past their time now show other bytes: a consumer must copy what it keeps.
    expect(sha(Buffer.concat(kept))).not.toBe(sha(content));
  });

  it('a failing command: the output it wrote, then its exit status and stderr', async () => {
    const p = await streamThroughSocket(['sh', '-c', 'head -c 5000 /dev/zero; echo "rbd: boom" >&2; exit 3'], { readAhead: MiB });
    let n = 0;
    for await (const c of p.stdout) n += c.length;
    expect(n).toBe(5000);
    await expect(p.done).rejects.toThrow(/exit status 3: rbd: boom/);
  });

  it('a command that cannot start rejects done', async () => {
    const p = await streamThroughSocket(['/nonexistent/rbd-xyz'], { readAhead: MiB });
    for await (const _ of p.stdout) void _;
    await expect(p.done).rejects.toThrow(/program not found|could not be started|ENOENT/);
  });

  it('stopping early (break) stops reading; kill() ends the command', async () => {
    const p = await streamThroughSocket(['cat', '/dev/zero'], { readAhead: MiB });
    let n = 0;
    for await (const c of p.stdout) {
      n += c.length;
      if (n > 3 * MiB) break;
    }
    p.kill();
    await expect(p.done).rejects.toThrow(/killed|SIGTERM|exit status/);
  });

  it('an abort signal kills the command', async () => {
    const ac = new AbortController();
    const p = await streamThroughSocket(['sleep', '30'], { readAhead: MiB, signal: ac.signal });
    setTimeout(() => ac.abort(), 50);
    for await (const _ of p.stdout) void _;
    await expect(p.done).rejects.toThrow();
  });
});
