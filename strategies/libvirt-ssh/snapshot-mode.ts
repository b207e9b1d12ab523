/**
 * Snapshot mode (vProtect's "last snapshot kept on the hypervisor"), for raw files, block
 * devices and qcow2 alike. Between backups each disk runs on an external qcow2 overlay that the
 * previous backup created; that overlay therefore holds exactly what the guest wrote since.
 *
 *   backup N:  base ← kept(N-1) ← new(N)       snapshot: new overlay, kept(N-1) is frozen
 *              read kept(N-1): allocation depth 1 = changed (incremental), or flattened (full)
 *   commit:    blockcommit kept(N-1) into base; base ← new(N) until backup N+1
 *   abort:     blockcommit --active new(N) into kept(N-1) and pivot: as if nothing happened
 *
 * The first backup freezes the disk's own file (nothing to commit). `--base` is ALWAYS given
 * explicitly: a blockcommit without it would merge the whole chain, Nova's shared _base image
 * included.
 */
import type { Hypervisor } from './hypervisor.js';
import type { OverlayRecord } from './journal.js';
import type { DomainDisk } from './domain-xml.js';

/** Suffix of the overlays vprotect creates: `<disk file>.vprotect-<runId>`. */
export const OVERLAY_MARK = '.vprotect-run-';

/** The new overlay's path: next to the disk's original file, named after the run. */
export function overlayPath(activePath: string, runId: string): string {
  const i = activePath.indexOf(OVERLAY_MARK);
  const original = i < 0 ? activePath : activePath.slice(0, i);
  return `${original}.vprotect-${runId}`;
}

export function isVprotectOverlay(path: string | undefined): boolean {
  return path !== undefined && path.includes(OVERLAY_MARK);
}

/** The overlay record for a disk about to be snapshotted. */
export function overlayRecord(disk: DomainDisk, runId: string): OverlayRecord {
  const frozen = disk.path!;
  const rec: OverlayRecord = { target: disk.target, frozen, overlay: overlayPath(frozen, runId) };
  // The disk already runs on a kept overlay: after this backup, that overlay is merged into its backing file.
  if (isVprotectOverlay(frozen) && disk.backing[0]?.path) rec.commitInto = disk.backing[0].path;
  return rec;
}

/** libvirt's --diskspec splits on commas; a comma inside a path is doubled. */
function diskspecPath(p: string): string {
  return p.replace(/,/g, ',,');
}

/** `virsh snapshot-create-as` arguments: an external disk-only snapshot of `overlays`, atomic, no metadata. */
export function snapshotArgs(domain: string, runId: string, overlays: OverlayRecord[], otherTargets: string[], quiesce: boolean): string[] {
  return [
    'snapshot-create-as',
    domain,
    '--name',
    `vprotect-${runId}`,
    '--disk-only',
    '--atomic',
    '--no-metadata',
    ...(quiesce ? ['--quiesce'] : []),
    ...overlays.flatMap((o) => ['--diskspec', `${o.target},snapshot=external,file=${diskspecPath(o.overlay)}`]),
    ...otherTargets.flatMap((t) => ['--diskspec', `${t},snapshot=no`]),
  ];
}

/** The active file of each disk target, from the live XML. */
export async function activeFiles(hv: Hypervisor, domain: string): Promise<Map<string, string>> {
  const out = await hv.virsh(['domblklist', domain, '--details'], { signal: null });
  const m = new Map<string, string>();
  for (const line of out.split('\n')) {
    const f = line.trim().split(/\s+/);
    if (f.length >= 4) m.set(f[2]!, f.slice(3).join(' '));
  }
  return m;
}

/** Merges the previous kept overlay (now frozen) into its backing file and removes it. */
export async function commitFrozenOverlay(hv: Hypervisor, domain: string, rec: OverlayRecord): Promise<void> {
  if (!rec.commitInto) return;
  const active = await activeFiles(hv, domain);
  if (active.get(rec.target) === rec.frozen) throw new Error(`${rec.target}: ${rec.frozen} is still the active file; refusing to commit it as a frozen layer`);
  // Already committed by an earlier attempt (a killed commit): the file is no longer in the chain.
  const xml = await hv.dumpXml(domain);
  if (xml.includes(`'${rec.frozen}'`) || xml.includes(`"${rec.frozen}"`)) {
    await hv.virsh(['blockcommit', domain, rec.target, '--top', rec.frozen, '--base', rec.commitInto, '--wait'], { signal: null, timeoutMs: 3_600_000 });
  }
  await hv.remove(rec.frozen);
}

/**
 * Undoes this run's snapshot of one disk: merges the new overlay back into the file it was
 * created on and pivots the domain back to that file, then removes the overlay. Safe to run
 * again (a disk whose active file is no longer the overlay only gets the file removed).
 */
export async function rollbackOverlay(hv: Hypervisor, domain: string, rec: OverlayRecord, running: boolean): Promise<void> {
  const active = (await activeFiles(hv, domain)).get(rec.target);
  if (active === rec.overlay) {
    if (!running) throw new Error(`${rec.target} runs on ${rec.overlay} but the domain is not running: blockcommit needs a running domain (start it, then run vprotect cleanup)`);
    await waitNoBlockJob(hv, domain, rec.target);
    await hv.virsh(['blockcommit', domain, rec.target, '--active', '--pivot', '--top', rec.overlay, '--base', rec.frozen, '--wait'], { signal: null, timeoutMs: 3_600_000 });
  }
  await hv.remove(rec.overlay);
}

/** A block job (e.g. a commit that a killed run left running) must finish before the next one. */
async function waitNoBlockJob(hv: Hypervisor, domain: string, target: string): Promise<void> {
  for (let i = 0; i < 600; i++) {
    const out = await hv.virsh(['blockjob', domain, target, '--info'], { signal: null }).catch(() => '');
    if (!/Block (Commit|Copy|Pull|Active Commit)/i.test(out)) return;
    if (/\[100 %\]/.test(out)) {
      await hv.virsh(['blockjob', domain, target, '--pivot'], { signal: null }).catch(() => hv.virsh(['blockjob', domain, target, '--abort'], { signal: null }));
    }
    await new Promise((r) => setTimeout(r, 500));
  }
}
