/**
 * One lock per VM, as a directory (docs/FORMAT.md §8): works on NFS, where advisory locks are
 * unreliable. The owner file is written into a private temporary directory that is then renamed
 * to the lock's name, so the lock never exists without its owner (rename fails with
 * ENOTEMPTY/EEXIST when another process holds it).
 */
import { randomBytes } from 'node:crypto';
import { existsSync, readlinkSync } from 'node:fs';
import { mkdir, readFile, rename, rm, stat } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { LockedError } from '../errors.js';
import { VERSION } from '../version.js';
import { fsyncDir, writeFileDurable } from './durable.js';
import { layout, OWNER_FILE } from './layout.js';

export interface LockOwner {
  host: string;
  pid: number;
  command: string;
  startedAt: string;
  version?: string;
}

export interface LockInfo {
  vmId: string;
  owner: LockOwner | undefined;
  /** Same host and the pid no longer runs. */
  stale: boolean;
}

/** Injectable for tests: "is this pid alive on this host?" */
export interface LockEnv {
  host: string;
  pid: number;
  isAlive(pid: number): boolean;
}

/**
 * This process on this host, through /proc (Linux): library code does not touch `process`.
 * A pid whose /proc entry exists is alive.
 */
export function localLockEnv(): LockEnv {
  return {
    host: hostname(),
    pid: Number(readlinkSync('/proc/self')),
    isAlive: (p) => existsSync(`/proc/${p}`),
  };
}

export class VmLock {
  private released = false;
  constructor(
    readonly root: string,
    readonly vmId: string,
    readonly owner: LockOwner,
  ) {}

  get path(): string {
    return layout.lockDir(this.root, this.vmId);
  }

  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    await removeLockDir(this.root, this.vmId);
  }
}

async function removeLockDir(root: string, vmId: string): Promise<void> {
  // Rename aside first so a half-removed lock is never mistaken for a held one.
  const aside = join(layout.locksDir(root), `${vmId}.lock.${randomBytes(4).toString('hex')}.old`);
  try {
    await rename(layout.lockDir(root, vmId), aside);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  await rm(aside, { recursive: true, force: true });
  await fsyncDir(layout.locksDir(root)).catch(() => {});
}

export async function readLock(root: string, vmId: string, env: LockEnv): Promise<LockInfo | undefined> {
  const dir = layout.lockDir(root, vmId);
  try {
    await stat(dir);
  } catch {
    return undefined;
  }
  let owner: LockOwner | undefined;
  try {
    owner = JSON.parse(await readFile(join(dir, OWNER_FILE), 'utf8')) as LockOwner;
  } catch {
    owner = undefined;
  }
  const stale = owner !== undefined && owner.host === env.host && owner.pid !== env.pid && !env.isAlive(owner.pid);
  return { vmId, owner, stale };
}

export function describeOwner(o: LockOwner | undefined): string {
  return o ? `${o.command} (pid ${o.pid} on ${o.host}, since ${o.startedAt})` : 'an unknown process (no owner file)';
}

export async function acquireLock(root: string, vmId: string, command: string, env: LockEnv): Promise<VmLock> {
  const locks = layout.locksDir(root);
  await mkdir(locks, { recursive: true });
  const owner: LockOwner = { host: env.host, pid: env.pid, command, startedAt: new Date().toISOString(), version: VERSION };
  for (let attempt = 0; attempt < 3; attempt++) {
    const tmp = join(locks, `${vmId}.lock.${randomBytes(4).toString('hex')}.tmp`);
    await mkdir(tmp);
    await writeFileDurable(join(tmp, OWNER_FILE), `${JSON.stringify(owner)}\n`);
    try {
      await rename(tmp, layout.lockDir(root, vmId));
      await fsyncDir(locks);
      return new VmLock(root, vmId, owner);
    } catch (err) {
      await rm(tmp, { recursive: true, force: true });
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'ENOTEMPTY' && code !== 'EEXIST' && code !== 'EISDIR') throw err;
    }
    const info = await readLock(root, vmId, env);
    if (info?.stale) {
      await removeLockDir(root, vmId);
      continue;
    }
    if (!info) continue; // released in between
    throw new LockedError(`VM ${vmId} is locked by ${describeOwner(info.owner)}`, {
      hint: `wait for it to finish; if that process is gone, run \`vprotect unlock ${vmId}\``,
      data: { vmId, owner: info.owner },
    });
  }
  throw new LockedError(`could not take the lock of VM ${vmId} (it changed hands repeatedly)`, { hint: 'try again' });
}

/** `vprotect unlock`: removes the lock whatever holds it; refuses a live holder on this host unless forced. */
export async function breakLock(root: string, vmId: string, env: LockEnv, force: boolean): Promise<LockInfo | undefined> {
  const info = await readLock(root, vmId, env);
  if (!info) return undefined;
  if (info.owner && info.owner.host === env.host && !info.stale && !force) {
    throw new LockedError(`VM ${vmId} is locked by ${describeOwner(info.owner)}, which is still running`, { hint: 'stop it, or use --force', data: { vmId, owner: info.owner } });
  }
  await removeLockDir(root, vmId);
  return info;
}
