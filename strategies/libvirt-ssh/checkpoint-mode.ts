/**
 * Checkpoint mode: libvirt checkpoints (persistent qcow2 dirty bitmaps) and a pull-mode backup
 * job. The job freezes a point-in-time view of every disk it covers (copy-before-write into a
 * scratch file) and serves it over NBD: an export per disk named after its target, with the
 * dirty bitmap `backup-<target>` for incremental disks. The new checkpoint is created by the
 * same backup-begin, atomically with the view.
 *
 * Checkpoint metadata lives in libvirt only, the bitmaps in the qcow2 files. Between backups
 * vprotect keeps the bitmap but NOT the metadata: libvirt refuses to undefine a domain that has
 * checkpoints ("cannot delete inactive domain with 1 checkpoints") unless the caller passes
 * VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA, and Nova does not — its delete, hard reboot, resize
 * and migration would fail. So every run redefines the previous checkpoint from the XML its
 * anchor keeps (`checkpoint-dumpxml --no-domain`) before the backup job, and once the point is
 * durable deletes the previous checkpoint (with its bitmap) and the new one's metadata only.
 */
import { attr, child, children, el, parseXml, removeChildren, serializeXml, textOf } from './xml.js';
import type { Hypervisor } from './hypervisor.js';

export type NbdServer = { transport: 'unix'; socket: string } | { transport: 'tcp'; host: string; port: number };

export interface JobDisk {
  target: string;
  /** full: the whole disk; incremental: dirty since the job's <incremental> checkpoint. */
  mode: 'full' | 'incremental';
  scratch: string;
  /** Whether the new checkpoint tracks this disk (qcow2 only). */
  bitmap: boolean;
}

export function checkpointXml(name: string, disks: { target: string; bitmap: boolean }[], description: string): string {
  return serializeXml(
    el('domaincheckpoint', {}, el('name', {}, name), el('description', {}, description), el('disks', {}, ...disks.map((d) => el('disk', { name: d.target, checkpoint: d.bitmap ? 'bitmap' : 'no' })))),
  );
}

/**
 * The pull backup job. Disks of the domain not listed get backup='no'; each listed disk says
 * its own backupmode, so a lost checkpoint on one disk costs a full of that disk only.
 */
export function backupJobXml(opts: { incremental?: string; server: NbdServer; disks: JobDisk[]; otherDisks: string[] }): string {
  const server = opts.server.transport === 'unix' ? el('server', { transport: 'unix', socket: opts.server.socket }) : el('server', { transport: 'tcp', name: opts.server.host, port: String(opts.server.port) });
  return serializeXml(
    el(
      'domainbackup',
      { mode: 'pull' },
      ...(opts.incremental ? [el('incremental', {}, opts.incremental)] : []),
      server,
      el(
        'disks',
        {},
        ...opts.disks.map((d) =>
          el(
            'disk',
            { name: d.target, backup: 'yes', type: 'file', backupmode: d.mode, ...(d.mode === 'incremental' && opts.incremental ? { incremental: opts.incremental } : {}) },
            el('scratch', { file: d.scratch }),
          ),
        ),
        ...opts.otherDisks.map((t) => el('disk', { name: t, backup: 'no' })),
      ),
    ),
  );
}

/** The dirty-bitmap export name libvirt gives an incremental disk of a pull job. */
export function jobBitmapName(target: string): string {
  return `backup-${target}`;
}

/** A saved checkpoint XML without its <parent>: libvirt refuses a redefine whose parent it does not know. */
export function checkpointForRedefine(xml: string): string {
  const root = parseXml(xml, 'checkpoint XML');
  removeChildren(root, (c) => c.name === 'parent' || c.name === 'domain');
  return serializeXml(root);
}

export function checkpointName(xml: string): string | undefined {
  return textOf(child(parseXml(xml, 'checkpoint XML'), 'name'))?.trim();
}

/** Which disks a checkpoint tracks with a bitmap. */
export function checkpointDisks(xml: string): string[] {
  return children(child(parseXml(xml, 'checkpoint XML'), 'disks'), 'disk')
    .filter((d) => attr(d, 'checkpoint') === 'bitmap')
    .map((d) => attr(d, 'name')!);
}

export async function dumpCheckpoint(hv: Hypervisor, domain: string, name: string): Promise<string> {
  return hv.virsh(['checkpoint-dumpxml', domain, name, '--no-domain'], { signal: null });
}

/**
 * Deletes a checkpoint: with its bitmaps, or with `metadataOnly` libvirt's record of it only (the
 * bitmaps stay in the images for the next run to redefine it). An absent one is fine.
 */
export async function deleteCheckpoint(hv: Hypervisor, domain: string, name: string, opts: { metadataOnly?: boolean } = {}): Promise<void> {
  await deleteCheckpoints(hv, domain, [{ name, metadataOnly: opts.metadataOnly ?? false }]);
}

/** checkpoint-delete's words for an absent checkpoint. */
const NO_CHECKPOINT = /not found|no domain checkpoint/i;

/**
 * Deletes several checkpoints in order, in one round trip (`deleteCheckpoint` each); absent
 * ones are fine, any other failure is libvirt's own error (the first one).
 */
export async function deleteCheckpoints(hv: Hypervisor, domain: string, list: readonly { name: string; metadataOnly: boolean }[]): Promise<void> {
  const commands = list.map((d) => ['checkpoint-delete', domain, d.name, ...(d.metadataOnly ? ['--metadata'] : [])]);
  const results = await hv.virshEach(commands, { signal: null });
  results.forEach((r, i) => {
    if (r.code === 0 || NO_CHECKPOINT.test(r.stderr)) return;
    throw hv.virshError(commands[i]!, r);
  });
}
