import { mkdir, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { LockedError } from '../../../src/errors.js';
import { acquireLock, breakLock, readLock, type LockEnv } from '../../../src/repository/lock.js';
import { tempDir } from './helpers.js';

let dir: { path: string; cleanup: () => Promise<void> };
beforeEach(async () => {
  dir = await tempDir();
});
afterEach(async () => {
  await dir.cleanup();
});
const env = (pid: number, alive: number[] = [pid], host = 'h1'): LockEnv => ({ host, pid, isAlive: (p) => alive.includes(p) });

describe('VM locks (mkdir/rename based, NFS-safe)', () => {
  it('a second holder gets LockedError naming the first; release frees it', async () => {
    const a = await acquireLock(dir.path, 'vm-1', 'backup', env(100, [100, 200]));
    const err = await acquireLock(dir.path, 'vm-1', 'merge', env(200, [100, 200])).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(LockedError);
    expect((err as LockedError).message).toMatch(/backup \(pid 100 on h1/);
    expect((err as LockedError).exitCode).toBe(75);
    await a.release();
    await (await acquireLock(dir.path, 'vm-1', 'merge', env(200))).release();
    expect(await readdir(join(dir.path, 'locks'))).toEqual([]);
  });

  it('many concurrent takers: exactly one wins', async () => {
    const results = await Promise.allSettled(Array.from({ length: 20 }, (_, i) => acquireLock(dir.path, 'vm-1', 'backup', env(1000 + i, Array.from({ length: 20 }, (_, j) => 1000 + j)))));
    expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
  });

  it('a lock of a dead process on this host is stale and taken over; another host\'s only by unlock', async () => {
    await acquireLock(dir.path, 'vm-1', 'backup', env(300));
    expect((await readLock(dir.path, 'vm-1', env(301)))!.stale).toBe(true);
    await (await acquireLock(dir.path, 'vm-1', 'backup', env(301))).release();

    await acquireLock(dir.path, 'vm-2', 'backup', env(5, [5], 'other-host'));
    await expect(acquireLock(dir.path, 'vm-2', 'backup', env(6, [6]))).rejects.toThrow(/on other-host/);
    expect((await breakLock(dir.path, 'vm-2', env(6, [6]), false))!.owner!.host).toBe('other-host');
    await (await acquireLock(dir.path, 'vm-2', 'backup', env(6))).release();
  });

  it('a lock directory without owner file (foreign leftover) blocks until unlock', async () => {
    await mkdir(join(dir.path, 'locks', 'vm-3.lock'), { recursive: true });
    await writeFile(join(dir.path, 'locks', 'vm-3.lock', 'junk'), '');
    await expect(acquireLock(dir.path, 'vm-3', 'backup', env(7))).rejects.toThrow(/unknown process/);
    await breakLock(dir.path, 'vm-3', env(7), false);
    await (await acquireLock(dir.path, 'vm-3', 'backup', env(7))).release();
  });
});
