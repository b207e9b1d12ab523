/**
 * The per-disk decisions of a libvirt-ssh backup, as pure functions of what was observed on the
 * hypervisor and in the repository: which disks, which incremental mechanism (checkpoint or
 * kept overlay), full or incremental, and the reason in words for the report.
 */
import { ConfigError } from '../../src/errors.js';
import type { BackupLevel } from '../../src/inventory/types.js';
import type { DomainDisk, DomainInfo } from './domain-xml.js';
import { OVERLAY_MARK } from './snapshot-mode.js';

export type Mode = 'checkpoint' | 'snapshot';

export interface LibvirtSshOptions {
  mode: 'auto' | Mode;
  transport: 'ssh' | 'netcat';
  /**
   * How data moves over the ssh transport (README "Data channels"): auto = the one-way stream
   * (a python3 helper on the hypervisor) for fulls, and for incrementals once 32 MiB are asked
   * for, falling back to NBD when the stream cannot start (no interpreter, ssh or the helper
   * failing before the stream began); stream = the stream from the first read, required: a
   * stream that cannot start fails the disk; nbd = NBD through a forwarded socket only.
   */
  dataChannel: 'auto' | 'stream' | 'nbd';
  /** Interpreter of the stream helper on the hypervisor (python3; e.g. /usr/libexec/platform-python). */
  python: string;
  atomic: boolean;
  excludeDisks: string[];
  parallelDisks: number;
  /** Where per-run scratch files, sockets and the run journal live on the hypervisor. */
  workDir: string;
  /** How RBD network disks are read (handed to the ceph-rbd strategy's session). */
  rbd: RbdOptions;
}

export interface RbdOptions {
  /** hypervisor: rbd runs there over the run's SSH connection; backup-node: here, with an inventory cluster. */
  runOn: 'hypervisor' | 'backup-node';
  /** An inventory cephClusters entry (required for backup-node when the inventory has several). */
  cluster?: string;
  /** ceph.conf / keyring paths on the hypervisor (default: rbd's own, /etc/ceph/…) when no cluster is named. */
  conf?: string;
  keyring?: string;
}

export const DEFAULT_WORK_DIR = '/var/tmp/vprotect';

const MODES = ['auto', 'checkpoint', 'snapshot'];

/** The policy's strategyOptions, checked: a typo must not silently change how a VM is backed up. */
export function parseOptions(o: Record<string, unknown>): LibvirtSshOptions {
  const bad = (what: string, want: string, value: unknown): never => {
    throw new ConfigError(`libvirt-ssh: strategyOptions.${what} must be ${want}, not ${JSON.stringify(value)}`);
  };
  const mode = o['mode'] ?? 'auto';
  if (typeof mode !== 'string' || !MODES.includes(mode)) bad('mode', MODES.join(' | '), mode);
  const transport = o['transport'] ?? 'ssh';
  if (transport !== 'ssh' && transport !== 'netcat') bad('transport', 'ssh | netcat', transport);
  const dataChannel = o['dataChannel'] ?? 'auto';
  if (dataChannel !== 'auto' && dataChannel !== 'stream' && dataChannel !== 'nbd') bad('dataChannel', 'auto | stream | nbd', dataChannel);
  const python = o['python'] ?? 'python3';
  if (typeof python !== 'string' || !/^[A-Za-z0-9_./+-]+$/.test(python)) bad('python', 'a command name or absolute path', python);
  const rbdIn = o['rbd'] ?? {};
  if (typeof rbdIn !== 'object' || rbdIn === null || Array.isArray(rbdIn)) bad('rbd', 'a mapping {runOn, cluster, conf, keyring}', rbdIn);
  const r = rbdIn as Record<string, unknown>;
  const runOn = r['runOn'] ?? 'hypervisor';
  if (runOn !== 'hypervisor' && runOn !== 'backup-node') bad('rbd.runOn', 'hypervisor | backup-node', runOn);
  for (const k of ['cluster', 'conf', 'keyring']) if (r[k] !== undefined && (typeof r[k] !== 'string' || r[k] === '')) bad(`rbd.${k}`, 'a non-empty string', r[k]);
  if (runOn === 'backup-node' && (r['conf'] !== undefined || r['keyring'] !== undefined)) {
    throw new ConfigError('libvirt-ssh: strategyOptions.rbd.conf/keyring are paths on the hypervisor; with rbd.runOn backup-node the inventory\'s cephClusters entry says where they are', [], { hint: 'remove rbd.conf/keyring, or set rbd.runOn: hypervisor' });
  }
  return {
    mode: mode as LibvirtSshOptions['mode'],
    transport: transport as LibvirtSshOptions['transport'],
    dataChannel: dataChannel as LibvirtSshOptions['dataChannel'],
    python: python as string,
    atomic: (o['atomic'] as boolean | undefined) ?? true,
    excludeDisks: (o['excludeDisks'] as string[] | undefined) ?? [],
    parallelDisks: (o['parallelDisks'] as number | undefined) ?? 1,
    workDir: (o['workDir'] as string | undefined) ?? DEFAULT_WORK_DIR,
    rbd: {
      runOn: runOn as RbdOptions['runOn'],
      ...(typeof r['cluster'] === 'string' ? { cluster: r['cluster'] } : {}),
      ...(typeof r['conf'] === 'string' ? { conf: r['conf'] } : {}),
      ...(typeof r['keyring'] === 'string' ? { keyring: r['keyring'] } : {}),
    },
  };
}

/** What the previous point stored for a disk (manifest sourceAnchor), as this strategy writes it. */
export type DiskAnchor =
  | { strategy: 'libvirt-ssh'; mode: 'checkpoint'; domainUuid: string; checkpoint: string; checkpointXml: string; path: string }
  | { strategy: 'libvirt-ssh'; mode: 'snapshot'; domainUuid: string; overlay: string; path: string }
  | { strategy: 'libvirt-ssh'; mode: 'none'; domainUuid: string; reason: string; path?: string };

export function asAnchor(v: unknown): DiskAnchor | undefined {
  if (!v || typeof v !== 'object') return undefined;
  const a = v as Record<string, unknown>;
  if (a['strategy'] !== 'libvirt-ssh' || typeof a['domainUuid'] !== 'string') return undefined;
  if (a['mode'] === 'checkpoint' && typeof a['checkpoint'] === 'string' && typeof a['checkpointXml'] === 'string') return a as DiskAnchor;
  if (a['mode'] === 'snapshot' && typeof a['overlay'] === 'string') return a as DiskAnchor;
  if (a['mode'] === 'none') return a as DiskAnchor;
  return undefined;
}

/** A disk left out of the backup, and why (CD-ROMs, excluded by policy). */
export interface SkippedDisk {
  target: string;
  reason: string;
}

/** A disk this strategy cannot read, which makes the backup fail unless the policy excludes it. */
export interface RefusedDisk {
  target: string;
  reason: string;
  hint: string;
}

export interface SelectedDisks {
  /** File and block disks: read by this strategy (checkpoint or kept overlay). */
  disks: DomainDisk[];
  /** RBD network disks: handed to the ceph-rbd session (RBD snapshots, export-diff). */
  rbd: DomainDisk[];
  skipped: SkippedDisk[];
  refused: RefusedDisk[];
}

/** Which disks of the domain are backed up. */
export function selectDisks(domain: DomainInfo, options: Pick<LibvirtSshOptions, 'excludeDisks'>): SelectedDisks {
  const out: SelectedDisks = { disks: [], rbd: [], skipped: [], refused: [] };
  for (const d of domain.disks) {
    if (options.excludeDisks.includes(d.target)) out.skipped.push({ target: d.target, reason: 'excluded by the policy (excludeDisks)' });
    else if (d.device === 'cdrom' || d.device === 'floppy') out.skipped.push({ target: d.target, reason: `${d.device}: removable media are not backed up` });
    else if (d.type === 'network' && d.rbd) {
      // A disk on an RBD snapshot (read-only clone source) is not the VM's data to rotate snapshots on.
      if (d.rbd.snapshot) out.refused.push({ target: d.target, reason: `RBD disk ${d.rbd.pool}/${d.rbd.image}@${d.rbd.snapshot} is a snapshot, not an image`, hint: `add ${d.target} to the policy's excludeDisks` });
      else out.rbd.push(d);
    } else if (d.type === 'network') {
      out.refused.push({ target: d.target, reason: `network disk (${d.protocol ?? 'unknown'} protocol) is not supported`, hint: `add ${d.target} to the policy's excludeDisks` });
    } else if ((d.type === 'file' || d.type === 'block') && d.path) {
      if (d.format !== undefined && d.format !== 'qcow2' && d.format !== 'raw') {
        out.refused.push({ target: d.target, reason: `disk format ${d.format} is not supported (qcow2 and raw are)`, hint: `add ${d.target} to the policy's excludeDisks` });
      } else out.disks.push(d);
    } else {
      out.refused.push({ target: d.target, reason: `disk of type ${d.type} without a source is not supported`, hint: `add ${d.target} to the policy's excludeDisks` });
    }
  }
  return out;
}

/** The mechanism of one disk, and why. */
export function chooseMode(disk: DomainDisk, requested: LibvirtSshOptions['mode']): { mode: Mode; reason: string } {
  const qcow2 = disk.format === 'qcow2' && disk.type === 'file';
  // The overlay kept by the previous backup holds the changes since: it stays in snapshot mode.
  if (disk.path?.includes(OVERLAY_MARK)) return { mode: 'snapshot', reason: 'runs on the overlay kept by the previous backup' };
  if (requested === 'snapshot') return { mode: 'snapshot', reason: 'mode snapshot (policy)' };
  if (requested === 'checkpoint') {
    if (!qcow2) return { mode: 'snapshot', reason: `mode checkpoint asked, but libvirt checkpoints need a qcow2 file and ${disk.target} is ${disk.format ?? 'unknown'} ${disk.type}: kept overlay instead` };
    return { mode: 'checkpoint', reason: 'mode checkpoint (policy)' };
  }
  return qcow2 ? { mode: 'checkpoint', reason: 'qcow2 disk: libvirt checkpoint' } : { mode: 'snapshot', reason: `${disk.format ?? 'raw'} ${disk.type}: kept overlay (checkpoints need qcow2)` };
}

/** What was observed for one disk at plan time. */
export interface DiskObservation {
  disk: DomainDisk;
  mode: Mode;
  modeReason: string;
  size: number;
  running: boolean;
  previous: { size: number; anchor: DiskAnchor | undefined } | undefined;
  domainUuid: string;
  /** Checkpoint names libvirt knows now (after any redefine). */
  checkpoints: string[];
  /** Set when the previous checkpoint was lost and could not be redefined. */
  redefineFailure?: string;
}

export interface DiskDecision {
  level: 'full' | 'incremental';
  reason: string;
}

/** Full or incremental for one disk, from the observation and the requested level. */
export function decideLevel(o: DiskObservation, level: BackupLevel): DiskDecision {
  const full = (why: string): DiskDecision => ({ level: 'full', reason: `${why}; ${o.modeReason}` });
  if (level === 'full') return full('full backup requested');
  if (!o.previous) return full('no previous point of this disk');
  const a = o.previous.anchor;
  if (!a) return full('the previous point has no libvirt-ssh anchor for this disk');
  if (a.domainUuid !== o.domainUuid) return full(`the domain was re-created (UUID ${a.domainUuid} → ${o.domainUuid})`);
  if (o.previous.size !== o.size) return full(`the disk size changed (${o.previous.size} → ${o.size} bytes)`);
  if (a.mode === 'none') return full(`the previous point left no anchor (${a.reason})`);
  if (!o.running) return full('the domain is not running: incrementals need a running domain');
  if (a.mode !== o.mode) return full(`the previous point used mode ${a.mode}, this one uses ${o.mode}`);
  if (a.mode === 'checkpoint') {
    if (a.path !== o.disk.path) return full(`the disk file changed (${a.path} → ${o.disk.path})`);
    if (!o.checkpoints.includes(a.checkpoint)) return full(`checkpoint ${a.checkpoint} is gone${o.redefineFailure ? ` and could not be redefined (${o.redefineFailure})` : ''}`);
    return { level: 'incremental', reason: `checkpoint ${a.checkpoint} is on the disk; ${o.modeReason}` };
  }
  if (a.overlay !== o.disk.path) return full(`the disk no longer runs on the kept overlay ${a.overlay} (now ${o.disk.path ?? '?'})`);
  return { level: 'incremental', reason: `kept overlay ${a.overlay} holds the changes; ${o.modeReason}` };
}
