/**
 * From a destination in the inventory (or a plain path) to a repository directory that can be
 * used: a local path as is; an NFS destination only when its mount point really is that NFS
 * export (checked in the mount table), mounted by vprotect when the inventory allows it.
 * Never writes into an unmounted mount point: that would fill the local disk silently.
 */
import { mkdir, readFile } from 'node:fs/promises';
import { isAbsolute, resolve } from 'node:path';
import { DestinationError, UsageError } from '../errors.js';
import type { DestinationConfig, Inventory } from '../inventory/types.js';
import { silentLogger, type Logger } from '../log.js';
import { runCommand, type CommandOptions, type CommandResult } from '../transport/command.js';

export interface MountEntry {
  mountPoint: string;
  fsType: string;
  source: string;
}

/** /proc/self/mountinfo: "id parent maj:min root mountpoint opts [optional...] - fstype source superopts". */
export function parseMountInfo(text: string): MountEntry[] {
  const unescape = (s: string) => s.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8)));
  const out: MountEntry[] = [];
  for (const line of text.split('\n')) {
    const fields = line.split(' ');
    const dash = fields.indexOf('-');
    if (dash < 6 || fields.length < dash + 3) continue;
    out.push({ mountPoint: unescape(fields[4]!), fsType: fields[dash + 1]!, source: unescape(fields[dash + 2]!) });
  }
  return out;
}

export interface DestinationDeps {
  /** The mount table's text; /proc/self/mountinfo by default. */
  mountTable?: () => Promise<string>;
  run?: (argv: readonly string[], opts?: CommandOptions) => Promise<CommandResult>;
  log?: Logger;
  signal?: AbortSignal;
  /** Check only: an NFS export that would be mounted is reported, not mounted. */
  dryRun?: boolean;
}

export interface SelectedDestination {
  /** The inventory name, when it came from the inventory. */
  name?: string;
  config: DestinationConfig;
}

/** True when the argument should be taken as a path rather than an inventory name. */
export function looksLikePath(arg: string): boolean {
  return arg.includes('/') || arg === '.' || arg === '..';
}

/**
 * `-d <name|path>`: an inventory destination by name, else a directory path; without `-d`, the
 * inventory's only destination.
 */
export function selectDestination(inv: Pick<Inventory, 'destinations'> | undefined, arg: string | undefined, cwd: string): SelectedDestination {
  const names = Object.keys(inv?.destinations ?? {});
  if (arg !== undefined) {
    const named = inv?.destinations[arg];
    if (named && !looksLikePath(arg)) return { name: arg, config: named };
    if (!looksLikePath(arg) && names.length > 0) {
      throw new UsageError(`no destination named "${arg}" in the inventory`, { hint: `destinations: ${names.join(', ')}; or give a path (./${arg})` });
    }
    return { config: { type: 'local', path: isAbsolute(arg) ? arg : resolve(cwd, arg) } };
  }
  if (names.length === 1) return { name: names[0]!, config: inv!.destinations[names[0]!]! };
  throw new UsageError(names.length === 0 ? 'no destination: the inventory defines none' : `choose a destination with -d (${names.join(', ')})`, {
    hint: 'use -d <destination name> or -d <path of a repository>',
  });
}

const trimSlash = (s: string) => (s.length > 1 ? s.replace(/\/+$/, '') : s);

/** Makes the destination usable and returns the repository's root directory. */
export async function prepareDestination(dest: SelectedDestination, deps: DestinationDeps = {}): Promise<string> {
  const { config } = dest;
  if (config.type === 'local') return config.path;
  const log = deps.log ?? silentLogger;
  const label = dest.name ? `destination ${dest.name}` : 'the NFS destination';
  const wanted = `${config.server}:${trimSlash(config.export)}`;
  const mountPoint = trimSlash(resolve(config.mountPoint));
  const table = deps.mountTable ?? (() => readFile('/proc/self/mountinfo', 'utf8'));
  const find = async () => parseMountInfo(await table()).filter((m) => trimSlash(m.mountPoint) === mountPoint).at(-1);

  let mounted = await find();
  if (!mounted || !mounted.fsType.startsWith('nfs')) {
    if (mounted) {
      throw new DestinationError(`${label}: ${mountPoint} is a ${mounted.fsType} file system (${mounted.source}), not the NFS export ${wanted}`, {
        hint: `unmount it and mount the export: mount -t nfs ${wanted} ${mountPoint}`,
      });
    }
    if (!config.allowMount) {
      throw new DestinationError(`${label}: ${mountPoint} is not mounted (expected NFS ${wanted})`, {
        hint: `mount it (mount -t nfs${config.mountOptions ? ` -o ${config.mountOptions}` : ''} ${wanted} ${mountPoint}) or set allowMount: true in the inventory`,
      });
    }
    const argv = ['mount', '-t', 'nfs', ...(config.mountOptions ? ['-o', config.mountOptions] : []), wanted, mountPoint];
    if (deps.dryRun) {
      log.info(`would mount ${wanted} on ${mountPoint}: ${argv.join(' ')}`);
      return mountPoint;
    }
    await mkdir(mountPoint, { recursive: true });
    log.info(`mounting ${wanted} on ${mountPoint}`);
    try {
      await (deps.run ?? runCommand)(argv, { timeoutMs: 120_000, signal: deps.signal, log });
    } catch (err) {
      throw new DestinationError(`${label}: mounting ${wanted} on ${mountPoint} failed: ${(err as Error).message}`, {
        cause: err,
        hint: 'check that this host may mount the export (server exports, firewall) and that vprotect runs as root',
      });
    }
    mounted = await find();
    if (!mounted || !mounted.fsType.startsWith('nfs')) throw new DestinationError(`${label}: ${mountPoint} is still not an NFS mount after mount succeeded`);
  }
  if (trimSlash(mounted.source) !== wanted) {
    throw new DestinationError(`${label}: ${mountPoint} has ${mounted.source} mounted, not ${wanted}`, { hint: `unmount it, or correct server/export in the inventory` });
  }
  return mountPoint;
}
