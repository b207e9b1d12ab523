/**
 * A vprotect repository on a local or NFS-mounted directory (docs/FORMAT.md): opening and
 * creating it, finding VMs, chains and points, locks, cleanup of interrupted writes, and
 * starting a new point. Everything is read from the directory itself; there is no database.
 */
import { randomUUID } from 'node:crypto';
import { mkdir, readdir, readFile, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { DataCorruptError, DestinationError, UsageError } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import { fsyncDir, PARTIAL_SUFFIX, writeFileDurable } from './durable.js';
import { isPointId, newPointId, pointIdTime, SAFE_NAME_RE } from './ids.js';
import { layout, MANIFEST, REPO_FILE } from './layout.js';
import { acquireLock, localLockEnv, type LockEnv, type VmLock } from './lock.js';
import { DEFAULT_BLOCK_SIZE, FORMAT_VERSION, parseManifest, parseMergeJournal, parseRepoConfig, toJson, type MergeJournal, type PointManifest, type RepoConfig } from './manifest.js';
import { PointWriter, type BeginPointOptions } from './point-writer.js';

export interface OpenOptions {
  /** Create the repository when the directory holds none (the directory itself is created too). */
  create?: boolean;
  /** Block size of a new repository (default 4 MiB); ignored for an existing one. */
  blockSize?: number;
  lockEnv?: LockEnv;
  log?: Logger;
}

/** A complete point: its manifest was found. */
export interface PointInfo {
  vmId: string;
  chainId: string;
  pointId: string;
  dir: string;
  manifest: PointManifest;
}

export interface ChainInfo {
  vmId: string;
  chainId: string;
  dir: string;
  /** Complete points from the full to the newest, following parent links. */
  points: PointInfo[];
  /** Complete points whose parent is missing (a damaged chain). */
  orphans: PointInfo[];
  /** Point directories without a manifest: interrupted writes, removed by the next locked run. */
  incomplete: string[];
  /** Points whose manifest cannot be read or is damaged. */
  damaged: { pointId: string; file: string; problem: string }[];
  /** Set while a merge is unfinished (docs/FORMAT.md §7). */
  merge?: MergeJournal;
}

export interface VmRecord {
  vmId: string;
  vmName?: string;
  project?: string;
  cloud?: string;
  updatedAt?: string;
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

async function listDir(path: string): Promise<string[]> {
  try {
    return (await readdir(path)).sort();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
}

export async function openRepository(root: string, opts: OpenOptions = {}): Promise<Repository> {
  const file = layout.repoFile(root);
  let text: string | undefined;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== 'ENOENT') throw new DestinationError(`cannot read ${file}: ${(err as Error).message}`, { cause: err });
  }
  if (text === undefined) {
    if (!opts.create) {
      throw new DestinationError(`${root} is not a vprotect repository (no ${REPO_FILE})`, { hint: 'check the destination path, or let the first backup create the repository' });
    }
    const blockSize = opts.blockSize ?? DEFAULT_BLOCK_SIZE;
    if (blockSize < 65536 || (blockSize & (blockSize - 1)) !== 0) throw new UsageError(`block size ${blockSize} must be a power of two of at least 64 KiB`);
    const config: RepoConfig = { format: FORMAT_VERSION, kind: 'vprotect-repository', id: randomUUID(), blockSize, createdAt: new Date().toISOString() };
    try {
      await mkdir(root, { recursive: true });
      await writeFileDurable(file, toJson(config));
    } catch (err) {
      throw new DestinationError(`cannot create a repository in ${root}: ${(err as Error).message}`, { cause: err });
    }
    text = toJson(config);
  }
  return new Repository(root, parseRepoConfig(text, file), opts.lockEnv ?? localLockEnv(), opts.log ?? silentLogger);
}

export class Repository {
  constructor(
    readonly root: string,
    readonly config: RepoConfig,
    readonly lockEnv: LockEnv,
    readonly log: Logger,
  ) {}

  get blockSize(): number {
    return this.config.blockSize;
  }

  async listVmIds(): Promise<string[]> {
    return (await listDir(layout.vmsDir(this.root))).filter((n) => SAFE_NAME_RE.test(n));
  }

  async readVm(vmId: string): Promise<VmRecord> {
    try {
      return JSON.parse(await readFile(layout.vmFile(this.root, vmId), 'utf8')) as VmRecord;
    } catch {
      return { vmId };
    }
  }

  /** The VM ids whose id or last known name is `idOrName`. */
  async resolveVm(idOrName: string): Promise<string[]> {
    const ids = await this.listVmIds();
    if (ids.includes(idOrName)) return [idOrName];
    const out: string[] = [];
    for (const id of ids) if ((await this.readVm(id)).vmName === idOrName) out.push(id);
    return out;
  }

  async readPoint(vmId: string, chainId: string, pointId: string): Promise<PointInfo | undefined> {
    const dir = layout.pointDir(this.root, vmId, chainId, pointId);
    const file = join(dir, MANIFEST);
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
    const manifest = parseManifest(text, file);
    if (manifest.pointId !== pointId || manifest.chainId !== chainId || manifest.vmId !== vmId) {
      throw new DataCorruptError(`${file}: names point ${manifest.pointId} of chain ${manifest.chainId} of VM ${manifest.vmId}, but lies elsewhere`, { data: { file } });
    }
    return { vmId, chainId, pointId, dir, manifest };
  }

  async listChains(vmId: string): Promise<ChainInfo[]> {
    const chains: ChainInfo[] = [];
    for (const chainId of await listDir(layout.chainsDir(this.root, vmId))) {
      if (!isPointId(chainId)) continue;
      const dir = layout.chainDir(this.root, vmId, chainId);
      const found: PointInfo[] = [];
      const incomplete: string[] = [];
      const damaged: ChainInfo['damaged'] = [];
      for (const pointId of await listDir(dir)) {
        if (!isPointId(pointId)) continue;
        try {
          const p = await this.readPoint(vmId, chainId, pointId);
          if (p) found.push(p);
          else incomplete.push(pointId);
        } catch (err) {
          if (!(err instanceof DataCorruptError)) throw err;
          damaged.push({ pointId, file: join(dir, pointId, MANIFEST), problem: err.message });
        }
      }
      let merge: MergeJournal | undefined;
      const journal = layout.mergeJournal(this.root, vmId, chainId);
      if (await exists(journal)) merge = parseMergeJournal(await readFile(journal, 'utf8'), journal);
      chains.push({ vmId, chainId, dir, ...orderChain(found), incomplete, damaged, ...(merge ? { merge } : {}) });
    }
    // Oldest first. Ids have one-second resolution (two chains of the same second sort by their
    // random suffix), so order by when the full point started, to the millisecond.
    const started = (c: ChainInfo) => c.points[0]?.manifest.startedAt ?? pointIdTime(c.chainId)?.toISOString() ?? '';
    return chains.sort((a, b) => started(a).localeCompare(started(b)) || a.chainId.localeCompare(b.chainId));
  }

  /** A point by id, searched in one VM or in all. */
  async findPoint(pointId: string, vmId?: string): Promise<PointInfo> {
    for (const vm of vmId ? [vmId] : await this.listVmIds()) {
      for (const chainId of await listDir(layout.chainsDir(this.root, vm))) {
        if (!isPointId(chainId)) continue;
        const p = await this.readPoint(vm, chainId, pointId).catch((err: unknown) => {
          if (err instanceof DataCorruptError) throw err;
          return undefined;
        });
        if (p) return p;
      }
    }
    throw new UsageError(`no complete point ${pointId} in ${this.root}`, { hint: 'see `vprotect list` for the points there are' });
  }

  /** The chain of `point`: its full point first, `point` last. */
  async chainOf(point: PointInfo): Promise<PointInfo[]> {
    const chains = await this.listChains(point.vmId);
    const chain = chains.find((c) => c.chainId === point.chainId);
    const idx = chain?.points.findIndex((p) => p.pointId === point.pointId) ?? -1;
    if (!chain || idx < 0) {
      throw new DataCorruptError(`point ${point.pointId} is not connected to the full point of chain ${point.chainId} (a point it depends on is missing)`, { data: { point: point.pointId } });
    }
    return chain.points.slice(0, idx + 1);
  }

  /** The newest complete, intact point of a VM: what a strategy compares its source anchor with. */
  async lastCompletePoint(vmId: string): Promise<PointInfo | undefined> {
    let best: PointInfo | undefined;
    for (const chain of await this.listChains(vmId)) {
      if (chain.merge) continue;
      const last = chain.points.at(-1);
      if (last && (!best || last.manifest.finishedAt > best.manifest.finishedAt)) best = last;
    }
    return best;
  }

  async lock(vmId: string, command: string): Promise<VmLock> {
    if (!SAFE_NAME_RE.test(vmId)) throw new UsageError(`"${vmId}" cannot be a VM id`);
    return acquireLock(this.root, vmId, command, this.lockEnv);
  }

  async withLock<T>(vmId: string, command: string, fn: (lock: VmLock) => Promise<T>): Promise<T> {
    const lock = await this.lock(vmId, command);
    try {
      return await fn(lock);
    } finally {
      await lock.release();
    }
  }

  /**
   * Removes what interrupted runs left (point directories without a manifest, `*.partial`
   * files, empty chains) and finishes interrupted merges. Call with the VM's lock held.
   */
  async cleanup(vmId: string, _lock: VmLock): Promise<{ removed: string[]; mergesFinished: string[] }> {
    const removed: string[] = [];
    const mergesFinished: string[] = [];
    for (const chain of await this.listChains(vmId)) {
      if (chain.merge) {
        const { finishMerge } = await import('./merge.js');
        await finishMerge(this, chain, {});
        mergesFinished.push(chain.chainId);
      }
    }
    for (const chain of await this.listChains(vmId)) {
      for (const pointId of chain.incomplete) {
        const dir = join(chain.dir, pointId);
        this.log.info(`removing interrupted point ${pointId} of VM ${vmId}`);
        await rm(dir, { recursive: true, force: true });
        removed.push(dir);
      }
      for (const p of chain.points) {
        for (const sub of ['', 'disks', 'metadata']) {
          for (const name of await listDir(join(p.dir, sub))) {
            if (name.endsWith(PARTIAL_SUFFIX) || name.endsWith('.merged')) {
              await rm(join(p.dir, sub, name), { force: true });
              removed.push(join(p.dir, sub, name));
            }
          }
        }
      }
      if (chain.points.length === 0 && chain.orphans.length === 0 && chain.damaged.length === 0 && !chain.merge) {
        await rm(chain.dir, { recursive: true, force: true });
        removed.push(chain.dir);
      }
      if (chain.incomplete.length) await fsyncDir(chain.dir).catch(() => {});
    }
    return { removed, mergesFinished };
  }

  /**
   * Starts writing a point. Takes the VM's lock unless `opts.lock` is given (the backup engine
   * may hold it for the whole run), and cleans up what earlier runs left.
   */
  async beginPoint(opts: BeginPointOptions): Promise<PointWriter> {
    if (!SAFE_NAME_RE.test(opts.vmId)) throw new UsageError(`"${opts.vmId}" cannot be a VM id`);
    const lock = opts.lock ?? (await this.lock(opts.vmId, opts.command ?? 'backup'));
    try {
      await this.cleanup(opts.vmId, lock);
      let parent: PointInfo | undefined;
      if (opts.level === 'incremental') {
        if (!opts.parentPointId) throw new UsageError('an incremental point needs parentPointId');
        parent = await this.findPoint(opts.parentPointId, opts.vmId);
        await this.chainOf(parent);
      } else if (opts.parentPointId) {
        throw new UsageError('a full point has no parent');
      }
      if (opts.pointId !== undefined && !isPointId(opts.pointId)) throw new UsageError(`"${opts.pointId}" is not a point id`);
      let pointId = opts.pointId ?? newPointId(opts.now ?? new Date());
      const chainId = parent ? parent.chainId : pointId;
      let dir = layout.pointDir(this.root, opts.vmId, chainId, pointId);
      if (opts.pointId !== undefined && (await exists(dir))) throw new UsageError(`point ${opts.pointId} of VM ${opts.vmId} exists already`);
      while (await exists(dir)) {
        pointId = newPointId(opts.now ?? new Date());
        dir = layout.pointDir(this.root, opts.vmId, parent ? chainId : pointId, pointId);
      }
      const finalChain = parent ? chainId : pointId;
      await mkdir(join(dir, 'disks'), { recursive: true });
      await mkdir(join(dir, 'metadata'), { recursive: true });
      await fsyncDir(layout.chainDir(this.root, opts.vmId, finalChain));
      await fsyncDir(layout.chainsDir(this.root, opts.vmId));
      return new PointWriter(this, { ...opts, pointId, chainId: finalChain, dir, parent, lock, ownsLock: !opts.lock });
    } catch (err) {
      if (!opts.lock) await lock.release();
      throw err;
    }
  }
}

/** Orders complete points of one chain by their parent links, starting at the full point. */
export function orderChain(points: PointInfo[]): { points: PointInfo[]; orphans: PointInfo[] } {
  const byParent = new Map<string | null, PointInfo[]>();
  for (const p of points) {
    const k = p.manifest.parentId;
    byParent.set(k, [...(byParent.get(k) ?? []), p]);
  }
  const ordered: PointInfo[] = [];
  // The full point (parentId null); after a merge it may not carry the chain id.
  let next = byParent.get(null)?.sort((a, b) => (a.pointId < b.pointId ? -1 : 1))[0];
  while (next) {
    ordered.push(next);
    next = byParent.get(next.pointId)?.sort((a, b) => (a.pointId < b.pointId ? -1 : 1))[0];
  }
  const inChain = new Set(ordered);
  return { points: ordered, orphans: points.filter((p) => !inChain.has(p)) };
}
