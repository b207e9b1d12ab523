/**
 * The `rbd` command with one cluster's arguments (client id, ceph.conf, keyring, monitors),
 * through a CommandExec (backup node or hypervisor). One method per rbd operation the strategy
 * uses, each with a timeout: librados waits for ever when a PG is inactive (lab pitfall 2).
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConfigError, UsageError } from '../../src/errors.js';
import type { CephClusterConfig, Inventory } from '../../src/inventory/types.js';
import { CommandFailedError } from '../../src/transport/command.js';
import { Semaphore } from '../../src/transport/semaphore.js';
import { loggedExec, type CommandExec, type StreamingExec } from './exec.js';
import type { Logger } from '../../src/log.js';
import type { ToolRun } from '../../src/repository/tool-diff.js';
import { parseChildren, parseImageInfo, parseListing, parseSnapList, type RbdChild, type RbdImageInfo, type RbdListing, type RbdSnapshot } from './rbd-json.js';

/** Metadata operations (info, snap ls/create/rm): generous, but never for ever. */
export const DEFAULT_TIMEOUT_MS = 120_000;

/**
 * rbd commands (other than streams) run at once per cluster binding: the session runs the calls
 * of many disks in parallel, and each rbd start costs a core for ~0.1 s.
 */
const PARALLEL_COMMANDS = 8;

/** Where a cluster's files are as seen by the machine that runs rbd. */
export interface ClusterAccess {
  /** The inventory's name for the cluster (for messages and anchors). */
  name: string;
  user: string;
  confPath?: string;
  keyringPath?: string;
  monitors?: string[];
}

/** Pool and image names as rbd spells them; they never start with '-' (no option injection). */
const NAME_RE = /^[A-Za-z0-9_.][A-Za-z0-9_.+=:-]{0,254}$/;

export function checkName(kind: string, name: string): string {
  if (!NAME_RE.test(name)) throw new UsageError(`${JSON.stringify(name)} is not a valid rbd ${kind} name`);
  return name;
}

export function imageSpec(pool: string, image: string, snap?: string): string {
  return `${checkName('pool', pool)}/${checkName('image', image)}${snap === undefined ? '' : `@${checkName('snapshot', snap)}`}`;
}

/** How a caller of chooseCluster is named in its messages (the strategy, libvirt-ssh's RBD disks, …). */
export interface ClusterChoiceWords {
  /** Put before every message ("vm1: "). */
  prefix?: string;
  /** The option that names a cluster ("strategyOptions.cluster"). */
  option: string;
  /** Why a cluster is needed, for the message when the inventory has none. */
  need: string;
  /** The hint when the inventory has none or several. */
  hint?: string;
}

const STRATEGY_WORDS: ClusterChoiceWords = { option: 'strategyOptions.cluster', need: 'the ceph-rbd strategy reads RBD images with rbd' };

/** The cluster a run uses: the one named (options, the disk's), else the only one of the inventory. */
export function chooseCluster(inventory: Inventory, wanted: string | undefined, words: ClusterChoiceWords = STRATEGY_WORDS): { name: string; config: CephClusterConfig } {
  const names = Object.keys(inventory.cephClusters ?? {});
  const prefix = words.prefix ?? '';
  const listed = names.join(', ') || 'none';
  if (wanted !== undefined) {
    const config = inventory.cephClusters?.[wanted];
    if (!config) throw new ConfigError(`${prefix}ceph cluster "${wanted}" is not in the inventory's cephClusters (${listed})`, [], { hint: `name one of them with ${words.option}, or add the cluster to cephClusters` });
    return { name: wanted, config };
  }
  if (names.length === 1) return { name: names[0]!, config: inventory.cephClusters[names[0]!]! };
  throw new ConfigError(
    names.length === 0 ? `${prefix}${words.need}, but the inventory has no cephClusters entry` : `${prefix}several ceph clusters in the inventory (${listed}): name one with ${words.option}`,
    [],
    words.hint ? { hint: words.hint } : {},
  );
}

export class Rbd {
  private readonly slots = new Semaphore(PARALLEL_COMMANDS);

  private constructor(
    readonly exec: CommandExec,
    readonly access: ClusterAccess,
    private readonly cleanupFiles: () => Promise<void>,
    private readonly timeoutMs: number,
  ) {}

  /** rbd runs on this machine, so it can write the repository's files itself (tool-diff.ts). */
  get local(): boolean {
    return this.exec.local === true;
  }

  /**
   * Binds a cluster to where rbd runs. Inline conf/keyring from the inventory are written to a
   * private temporary directory on that machine (mode 0700) and removed by dispose().
   */
  static async open(runner: CommandExec, name: string, cluster: CephClusterConfig, opts: { timeoutMs?: number; remote?: boolean; log?: Logger } = {}): Promise<Rbd> {
    // With a logger, every command (rbd, and mktemp/tee/rm for inline files) is in the debug log.
    const exec = opts.log ? loggedExec(runner, opts.log) : runner;
    const access: ClusterAccess = { name, user: cluster.user, ...(cluster.monitors ? { monitors: cluster.monitors } : {}) };
    const inline: { file: string; content: string }[] = [];
    if (cluster.conf) 'path' in cluster.conf ? (access.confPath = cluster.conf.path) : inline.push({ file: 'ceph.conf', content: cluster.conf.inline });
    if (cluster.keyring) 'path' in cluster.keyring ? (access.keyringPath = cluster.keyring.path) : inline.push({ file: 'keyring', content: cluster.keyring.inline });
    let cleanupFiles = async () => {};
    if (inline.length) {
      if (opts.remote) {
        const dir = (await exec.run(['mktemp', '-d', '/tmp/vprotect-ceph.XXXXXX'], { timeoutMs: 30_000 })).stdout.trim();
        for (const f of inline) {
          // `tee` writes its stdin to the file given as an argument: no shell, no quoting.
          await exec.run(['tee', `${dir}/${f.file}`], { input: oneBuffer(f.content), timeoutMs: 30_000 });
        }
        cleanupFiles = async () => void (await exec.run(['rm', '-rf', '--', dir], { timeoutMs: 30_000 }).catch(() => {}));
        setPaths(access, dir, inline);
      } else {
        const dir = await mkdtemp(join(tmpdir(), `vprotect-ceph-${randomBytes(3).toString('hex')}-`));
        for (const f of inline) await writeFile(join(dir, f.file), f.content, { mode: 0o600 });
        cleanupFiles = () => rm(dir, { recursive: true, force: true });
        setPaths(access, dir, inline);
      }
    }
    return new Rbd(exec, access, cleanupFiles, opts.timeoutMs ?? DEFAULT_TIMEOUT_MS);
  }

  async dispose(): Promise<void> {
    await this.cleanupFiles();
  }

  /** "cluster lab (client.volumes) on the backup node". */
  describe(): string {
    return `ceph cluster ${this.access.name} (client.${this.access.user}) on ${this.exec.where}`;
  }

  /** rbd's global arguments for this cluster. */
  clusterArgs(): string[] {
    const a = this.access;
    return ['--id', a.user, ...(a.confPath ? ['--conf', a.confPath] : []), ...(a.keyringPath ? ['--keyring', a.keyringPath] : []), ...(a.monitors?.length ? ['-m', a.monitors.join(',')] : [])];
  }

  argv(args: readonly string[]): string[] {
    return ['rbd', ...this.clusterArgs(), ...args];
  }

  /** The `rbd:pool/image[@snap]:id=…:conf=…` filename qemu tools take. */
  qemuFilename(pool: string, image: string, snap?: string): string {
    const esc = (s: string) => s.replace(/[:@\\]/g, (c) => `\\${c}`);
    const a = this.access;
    const opts = [`id=${esc(a.user)}`, ...(a.confPath ? [`conf=${esc(a.confPath)}`] : []), ...(a.keyringPath ? [`keyring=${esc(a.keyringPath)}`] : [])];
    if (a.monitors?.length) opts.push(`mon_host=${esc(a.monitors.join(';'))}`);
    return `rbd:${imageSpec(pool, image, snap)}:${opts.join(':')}`;
  }

  async run(args: readonly string[], opts: { timeoutMs?: number; signal?: AbortSignal; input?: AsyncIterable<Buffer> } = {}): Promise<string> {
    const r = await this.slots.use(
      () => this.exec.run(this.argv(args), { timeoutMs: opts.timeoutMs ?? this.timeoutMs, ...(opts.signal ? { signal: opts.signal } : {}), ...(opts.input ? { input: opts.input } : {}) }),
      opts.signal,
    );
    return r.stdout;
  }

  /**
   * Runs `rbd <args>` without a timeout until it exits or is killed: a command that writes a
   * file itself (`export-diff … <file>`), whose progress the caller watches.
   */
  start(args: readonly string[], signal?: AbortSignal): ToolRun {
    const stop = new AbortController();
    const done = this.exec.run(this.argv(args), { signal: signal ? AbortSignal.any([signal, stop.signal]) : stop.signal }).then(() => undefined);
    done.catch(() => {});
    return { done, kill: () => stop.abort() };
  }

  stream(args: readonly string[], signal?: AbortSignal): Promise<StreamingExec> {
    return this.exec.stream(this.argv(args), signal ? { signal } : {});
  }

  async info(pool: string, image: string, signal?: AbortSignal): Promise<RbdImageInfo> {
    const spec = imageSpec(pool, image);
    return parseImageInfo(await this.run(['info', '--format', 'json', spec], { signal }).catch((e: unknown) => rethrowMissing(e, spec)), `rbd info ${spec}`);
  }

  /** The image's info, or undefined when there is no such image. */
  async infoIfExists(pool: string, image: string, signal?: AbortSignal): Promise<RbdImageInfo | undefined> {
    try {
      return await this.info(pool, image, signal);
    } catch (err) {
      if (err instanceof ImageNotFoundError) return undefined;
      throw err;
    }
  }

  async snapshots(pool: string, image: string, signal?: AbortSignal): Promise<RbdSnapshot[]> {
    const spec = imageSpec(pool, image);
    // --all also shows snapshots in the trash namespace (removed, but kept for clone v2 children).
    return parseSnapList(await this.run(['snap', 'ls', '--all', '--format', 'json', spec], { signal }).catch((e: unknown) => rethrowMissing(e, spec)), `rbd snap ls ${spec}`);
  }

  async snapCreate(pool: string, image: string, snap: string, signal?: AbortSignal): Promise<void> {
    await this.run(['snap', 'create', '--no-progress', imageSpec(pool, image, snap)], { signal });
  }

  async snapRemove(pool: string, image: string, snap: string, signal?: AbortSignal): Promise<void> {
    await this.run(['snap', 'rm', '--no-progress', imageSpec(pool, image, snap)], { signal });
  }

  async snapUnprotect(pool: string, image: string, snap: string, signal?: AbortSignal): Promise<void> {
    await this.run(['snap', 'unprotect', imageSpec(pool, image, snap)], { signal });
  }

  async children(pool: string, image: string, snap: string, signal?: AbortSignal): Promise<RbdChild[]> {
    const spec = imageSpec(pool, image, snap);
    return parseChildren(await this.run(['children', '--format', 'json', spec], { signal }), `rbd children ${spec}`);
  }

  async list(pool: string, signal?: AbortSignal): Promise<RbdListing[]> {
    return parseListing(await this.run(['ls', '-l', '--format', 'json', checkName('pool', pool)], { signal }), `rbd ls -l ${pool}`);
  }

  async create(pool: string, image: string, size: number, signal?: AbortSignal): Promise<void> {
    await this.run(['create', '--size', `${size}B`, imageSpec(pool, image)], { signal });
  }

  async resize(pool: string, image: string, size: number, signal?: AbortSignal): Promise<void> {
    await this.run(['resize', '--no-progress', '--allow-shrink', '--size', `${size}B`, imageSpec(pool, image)], { signal });
  }

  async remove(pool: string, image: string, signal?: AbortSignal): Promise<void> {
    await this.run(['rm', '--no-progress', imageSpec(pool, image)], { signal });
  }

  /**
   * The cluster's fsid, recorded in anchors so that an image of another cluster with the same
   * pool/image names is never taken for the same disk. From ceph.conf when it says, else from
   * `ceph fsid`; undefined when neither works (the image id check still applies).
   */
  async fsid(signal?: AbortSignal): Promise<string | undefined> {
    if (this.access.confPath && this.exec.where === 'the backup node') {
      const text = await readFile(this.access.confPath, 'utf8').catch(() => '');
      const m = /^\s*fsid\s*=\s*([0-9a-f-]{36})\s*$/im.exec(text);
      if (m) return m[1];
    }
    try {
      const out = (await this.exec.run(['ceph', ...this.clusterArgs(), 'fsid'], { timeoutMs: 30_000, ...(signal ? { signal } : {}) })).stdout.trim();
      return /^[0-9a-f-]{36}$/.test(out) ? out : undefined;
    } catch {
      return undefined;
    }
  }
}

function oneBuffer(s: string): AsyncIterable<Buffer> {
  return (async function* () {
    yield Buffer.from(s);
  })();
}

function setPaths(access: ClusterAccess, dir: string, inline: { file: string }[]): void {
  for (const f of inline) {
    if (f.file === 'ceph.conf') access.confPath = `${dir}/ceph.conf`;
    else access.keyringPath = `${dir}/keyring`;
  }
}

export class ImageNotFoundError extends UsageError {}

/** Turns rbd's "(2) No such file or directory" into an error that names the image. */
function rethrowMissing(err: unknown, spec: string): never {
  if (err instanceof CommandFailedError && /\(2\) No such file or directory/.test(err.stderr)) {
    throw new ImageNotFoundError(`rbd image ${spec} does not exist`, { cause: err, hint: 'check the pool and image names (rbd ls <pool>)' });
  }
  throw err;
}
