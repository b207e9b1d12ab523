/**
 * Per-test libvirt domains for the libvirt-ssh tests, on the lab's libvirtd (never the lab's
 * sample domains): small disks with the lab's kind of content (a `cli; hlt` boot sector, so a
 * running TCG guest costs no CPU, plus random data), guest writes with the HMP qemu-io trick,
 * the disk's content "now" for comparisons, and a backup/restore harness around the engine.
 */
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'vitest';
import { backupVm, type BackupVmResult } from '../../../src/engine/backup-vm.js';
import type { BackupLevel, HypervisorConfig, Inventory, PolicyConfig } from '../../../src/inventory/types.js';
import { silentLogger, type Logger } from '../../../src/log.js';

const t0 = Date.now();
export const debugLogger: Logger = {
  debug: (m, f) => console.log(`${((Date.now() - t0) / 1000).toFixed(2)} DEBUG ${m} ${f ? JSON.stringify(f).slice(0, 300) : ''}`),
  info: (m) => console.log(`${((Date.now() - t0) / 1000).toFixed(2)} INFO ${m}`),
  warn: (m) => console.log(`WARN ${m}`),
  error: (m) => console.log(`ERROR ${m}`),
};
const defaultLogger = process.env['VP_TEST_DEBUG'] ? debugLogger : silentLogger;
import { openDiskReader } from '../../../src/repository/chain-reader.js';
import { openRepository, type Repository } from '../../../src/repository/repository.js';
import { restoreToRawFile } from '../../../src/repository/restore.js';
import type { Strategy } from '../../../src/strategy/contract.js';
import strategy from '../../../strategies/libvirt-ssh/index.js';
import { requireLab, type Lab } from '../../helpers/lab.js';
import { rng } from '../repository/helpers.js';

export const MiB = 1024 * 1024;
export const KiB = 1024;

export function sh(cmd: string, args: string[], input?: string): string {
  return execFileSync(cmd, args, { encoding: 'utf8', ...(input !== undefined ? { input } : {}), stdio: ['pipe', 'pipe', 'pipe'] });
}

export function virsh(...args: string[]): string {
  return sh('virsh', ['-q', '-c', 'qemu:///system', ...args]);
}

export function tryVirsh(...args: string[]): string | undefined {
  try {
    return virsh(...args);
  } catch {
    return undefined;
  }
}

export interface LabEnv {
  lab: Lab;
  hv: HypervisorConfig;
  vms: string;
  workDir: string;
  scratch: string;
}

export function labEnv(): LabEnv {
  const lab = requireLab('hypervisor');
  const s = lab.ssh!;
  const scratch = mkdtempSync(join(tmpdir(), 'vp-lvs-'));
  return {
    lab,
    hv: {
      name: 'hv1',
      address: s.host,
      port: s.port,
      user: s.user,
      keyFile: s.keyFile,
      hostKey: { knownHostsFile: s.knownHostsFile },
      vmUser: lab.libvirt?.qemuUser ?? 'libvirt-qemu',
      libvirtUri: lab.libvirt?.uri ?? 'qemu:///system',
      netcat: { ports: '10870-10889', address: '127.0.0.1' },
    },
    vms: lab.vmsDir!,
    // The tests' own work dir, so that their journals never meet another suite's.
    workDir: join(lab.vmsDir!, '.vprotect-test'),
    scratch,
  };
}

export interface DiskSpec {
  target: string;
  format: 'qcow2' | 'raw';
  /** qcow2 on a raw backing file, like a Nova instance disk on instances/_base. */
  backing?: boolean;
  size?: number;
}

export interface TestDomain {
  name: string;
  disks: (DiskSpec & { path: string; base?: string })[];
  xml: string;
}

const BOOT_SECTOR = Buffer.concat([Buffer.from([0xfa, 0xf4]), Buffer.alloc(508), Buffer.from([0x55, 0xaa])]);

/**
 * `extraDisksXml`: more <disk> elements after the file disks (an RBD network disk), so they
 * come after them in the guest's virtio-disk numbering.
 */
export function createDomain(env: LabEnv, name: string, disks: DiskSpec[], opts: { agentChannel?: boolean; start?: boolean; extraDisksXml?: string } = {}): TestDomain {
  destroyDomain(env, name);
  const out: TestDomain['disks'] = [];
  for (const [i, d] of disks.entries()) {
    const size = d.size ?? 64 * MiB;
    const path = join(env.vms, `${name}.${d.target}.${d.format}`);
    const raw = d.backing ? join(env.vms, `${name}.${d.target}.base.raw`) : d.format === 'raw' ? path : `${path}.raw`;
    sh('truncate', ['-s', String(size), raw]);
    if (i === 0) writeFileSync(join(env.scratch, 'boot'), BOOT_SECTOR), sh('dd', [`if=${join(env.scratch, 'boot')}`, `of=${raw}`, 'conv=notrunc', 'status=none']);
    // 4 MiB of random data at 1 MiB, and 1 MiB of 'Z' at 32 MiB.
    const rnd = join(env.scratch, 'rnd');
    writeFileSync(rnd, randomBytes(4 * MiB));
    sh('dd', [`if=${rnd}`, `of=${raw}`, 'bs=1M', 'seek=1', 'conv=notrunc', 'status=none']);
    writeFileSync(rnd, Buffer.alloc(MiB, 0x5a));
    sh('dd', [`if=${rnd}`, `of=${raw}`, 'bs=1M', 'seek=32', 'conv=notrunc', 'status=none']);
    let base: string | undefined;
    if (d.backing) {
      base = raw;
      sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'compat=1.1', '-F', 'raw', '-b', raw, path, String(size)]);
      sh('qemu-io', ['-f', 'qcow2', '-c', `write -P 0x42 ${40 * MiB} ${MiB}`, path]);
    } else if (d.format === 'qcow2') {
      sh('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', '-o', 'compat=1.1', raw, path]);
      rmSync(raw);
    }
    sh('chmod', ['0666', path, ...(base ? [base] : [])]);
    out.push({ ...d, path, ...(base ? { base } : {}) });
  }
  const diskXml = out
    .map(
      (d) => `<disk type='file' device='disk'><driver name='qemu' type='${d.format}' discard='unmap'/><source file='${d.path}'/>${
        d.base ? `<backingStore type='file'><format type='raw'/><source file='${d.base}'/></backingStore>` : ''
      }<target dev='${d.target}' bus='virtio'/></disk>`,
    )
    .join('') + (opts.extraDisksXml ?? '');
  const xml = `<domain type='qemu'><name>${name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os><on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot><on_crash>destroy</on_crash>
<devices><emulator>/usr/bin/qemu-system-x86_64</emulator>${diskXml}<serial type='file'><source path='${join(env.vms, `${name}.serial.log`)}'/><target port='0'/></serial>
${opts.agentChannel ? "<channel type='unix'><source mode='bind'/><target type='virtio' name='org.qemu.guest_agent.0'/></channel>" : ''}
<video><model type='none'/></video><memballoon model='none'/></devices></domain>`;
  const file = join(env.scratch, `${name}.xml`);
  writeFileSync(file, xml);
  virsh('define', file);
  if (opts.start !== false) virsh('start', name);
  return { name, disks: out, xml };
}

/** Removes a test domain, its checkpoints and every file named after it in the vms dir. */
export function destroyDomain(env: LabEnv, name: string): void {
  tryVirsh('destroy', name);
  tryVirsh('undefine', name, '--checkpoints-metadata', '--snapshots-metadata', '--nvram');
  sh('sh', ['-c', 'rm -f "$1"/"$2".*', 'sh', env.vms, name]);
}

/** The HMP command that makes qemu itself write to a disk (dirties bitmaps and overlays like a real guest). */
function hmpQemuIo(domain: string, diskIndex: number, command: string): string {
  return `qemu-monitor-command ${domain} --hmp 'qemu-io -d /machine/peripheral/virtio-disk${diskIndex}/virtio-backend "${command}"'`;
}

export function guestIo(domain: string, diskIndex: number, command: string): void {
  virsh('qemu-monitor-command', domain, '--hmp', `qemu-io -d /machine/peripheral/virtio-disk${diskIndex}/virtio-backend "${command}"`);
}

/** Guest writes (one virsh process for all of them), then a flush so that a reader of the image file sees them. */
export function guestWrites(domain: string, diskIndex: number, commands: string[]): void {
  const script = [...commands, 'flush'].map((c) => hmpQemuIo(domain, diskIndex, c)).join('\n');
  sh('virsh', ['-q', '-c', 'qemu:///system'], `${script}\n`);
}

/** `count` distinct writes of `size` bytes at random size-aligned offsets in [from, to). */
export function scatteredWrites(count: number, size: number, seed: number, from: number, to: number): string[] {
  const rand = rng(seed);
  const slots = Math.floor((to - from) / size);
  const used = new Set<number>();
  const out: string[] = [];
  while (out.length < count) {
    const slot = Math.floor(rand() * slots);
    if (used.has(slot)) continue;
    used.add(slot);
    out.push(`write -P 0x${(0x41 + (out.length % 26)).toString(16)} ${from + slot * size} ${size}`);
  }
  return out;
}

/** The active file of a disk now (after snapshots it is an overlay). */
export function activeFile(domain: string, target: string): string {
  for (const line of virsh('domblklist', domain).split('\n')) {
    const f = line.trim().split(/\s+/);
    if (f[0] === target) return f[1]!;
  }
  throw new Error(`${domain} has no disk ${target}`);
}

/** sha256 of the disk's guest-visible content now (read with -U from the image chain). */
export function diskDigest(env: LabEnv, domain: string, target: string): string {
  const out = join(env.scratch, `ref-${domain}-${target}.raw`);
  sh('qemu-img', ['convert', '-U', '-O', 'raw', activeFile(domain, target), out]);
  const digest = createHash('sha256').update(readFileSync(out)).digest('hex');
  rmSync(out, { force: true });
  return digest;
}

export interface Harness {
  repo: Repository;
  backup(level: BackupLevel, opts?: { options?: Record<string, unknown>; policy?: Partial<PolicyConfig>; inventory?: Partial<Inventory>; strategy?: Strategy; signal?: AbortSignal; log?: Logger }): Promise<BackupVmResult>;
  /** Restores a disk of a point and returns its sha256. */
  restoredDigest(pointId: string, key: string): Promise<string>;
}

export async function harness(env: LabEnv, domain: string, baseOptions: Record<string, unknown> = {}): Promise<Harness> {
  const root = join(env.scratch, `repo-${domain}`);
  const repo = await openRepository(root, { create: true });
  const inventory: Inventory = { file: join(env.scratch, 'inventory.yaml'), version: 1, clouds: {}, hypervisors: [env.hv], cephClusters: {}, destinations: {}, proxies: [], policies: [] };
  return {
    repo,
    async backup(level, opts = {}) {
      const options = { workDir: env.workDir, ...baseOptions, ...(opts.options ?? {}) };
      const policy: PolicyConfig = { name: 'test', strategy: 'libvirt-ssh', destination: root, strategyOptions: options, ...(opts.policy ?? {}) };
      return backupVm({
        repo,
        strategy: opts.strategy ?? strategy,
        target: { vmId: domain, vmName: domain, hypervisor: env.hv, domain },
        level,
        command: 'test',
        ctx: { log: opts.log ?? defaultLogger, events: () => {}, signal: opts.signal ?? new AbortController().signal, dryRun: false, inventory: { ...inventory, ...(opts.inventory ?? {}) }, policy, options, env: {} },
      });
    },
    async restoredDigest(pointId, key) {
      const point = await repo.findPoint(pointId);
      const reader = await openDiskReader(repo, point, key);
      const file = join(env.scratch, `restore-${pointId}-${key}.raw`);
      try {
        await restoreToRawFile(reader, file, {});
      } finally {
        await reader.close();
      }
      const digest = createHash('sha256').update(readFileSync(file)).digest('hex');
      rmSync(file, { force: true });
      return digest;
    },
  };
}

/** What is left of vprotect on the hypervisor for a domain: jobs, checkpoints, run dirs. */
export function hypervisorState(env: LabEnv, domain: string): { job: boolean; checkpoints: string[]; runDirs: string[]; files: string[] } {
  const info = virsh('domjobinfo', domain);
  const job = !/Job type:\s+None/.test(info);
  if (job) console.log(`domjobinfo ${domain}: ${info}`);
  const checkpoints = (tryVirsh('checkpoint-list', domain, '--name') ?? '').split('\n').map((s) => s.trim()).filter(Boolean);
  const runDirs = sh('sh', ['-c', 'cd "$1" 2>/dev/null || exit 0; for d in run-*; do [ -d "$d" ] && grep -qsF "\"domain\": \"$2\"" "$d/journal.json" && echo "$d"; done; true', 'sh', env.workDir, domain]).split('\n').filter(Boolean);
  const files = sh('sh', ['-c', 'ls "$1" | grep -F "$2." || true', 'sh', env.vms, domain]).split('\n').filter(Boolean);
  return { job, checkpoints, runDirs, files };
}

/** The dirty bitmaps qemu holds for an image file of a running domain (persistent ones are written to the qcow2 on close). */
export function liveBitmaps(domain: string, file: string): string[] {
  const nodes = JSON.parse(virsh('qemu-monitor-command', domain, JSON.stringify({ execute: 'query-named-block-nodes', arguments: { flat: true } }))).return as { file: string; drv: string; 'dirty-bitmaps'?: { name: string }[] }[];
  const names = nodes.filter((n) => n.file === file && n.drv === 'qcow2').flatMap((n) => (n['dirty-bitmaps'] ?? []).map((b) => b.name));
  return [...new Set(names)].sort();
}

/**
 * What checkpoint mode must leave between backups: NO libvirt checkpoint metadata (Nova
 * undefines domains without VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA, which libvirt refuses
 * while a checkpoint is defined), and in each checkpoint-mode disk exactly one bitmap: the
 * checkpoint of the repository's last complete point.
 */
export async function expectOnlyNewestBitmap(h: Harness, domain: string, what = ''): Promise<void> {
  expect((tryVirsh('checkpoint-list', domain, '--name') ?? '').trim(), `no checkpoint metadata ${what}`).toBe('');
  const last = await h.repo.lastCompletePoint(domain);
  for (const d of last?.manifest.disks ?? []) {
    const a = d.sourceAnchor as { mode?: string; checkpoint?: string } | null;
    if (a?.mode !== 'checkpoint') continue;
    expect(liveBitmaps(domain, activeFile(domain, d.key)), `${domain} ${d.key}: only the newest point's bitmap ${what}`).toEqual([a.checkpoint]);
  }
}
