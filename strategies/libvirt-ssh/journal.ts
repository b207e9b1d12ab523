/**
 * The run journal on the hypervisor: `<workDir>/<runId>/journal.json`, written BEFORE each
 * change a run makes (checkpoint, backup job, overlays, qemu-nbd servers), so that whatever
 * kills the run — Ctrl-C, a lost connection, kill -9 of vprotect — the next run of the same
 * domain, or `vprotect cleanup`, knows exactly what to undo or finish. The run directory also
 * holds the job's scratch files and NBD sockets; removing it removes them.
 */
import { UnavailableError } from '../../src/errors.js';
import { localLockEnv } from '../../src/repository/lock.js';
import { writeFileStep, type Step } from './batch.js';
import type { Hypervisor } from './hypervisor.js';

export interface OverlayRecord {
  target: string;
  /** The file the domain ran on before this run's snapshot (frozen by it). */
  frozen: string;
  /** The new overlay this run created on top of `frozen` (active after the snapshot). */
  overlay: string;
  /** The frozen file's backing file when `frozen` is an overlay kept by the previous run (to be committed into it). */
  commitInto?: string;
}

export interface Journal {
  kind: 'vprotect-libvirt-ssh-run';
  runId: string;
  domain: string;
  domainUuid: string;
  dir: string;
  owner: { host: string; pid: number; startedAt: string };
  /** Checkpoint this run creates (with the backup job), and the previous one to drop on commit. */
  checkpoint?: { name: string; previous?: string };
  /**
   * Checkpoints whose libvirt metadata this run (re)defined from the repository (written BEFORE
   * the redefine): their metadata must not outlive the run, or Nova cannot undefine the domain.
   */
  redefined?: string[];
  /** A backup job was (being) started. */
  job?: boolean;
  overlays?: OverlayRecord[];
  /** qemu-nbd pid files in the run dir. */
  nbdPidFiles?: string[];
  /** snapshot → the anchors exist; committing → the point is durable, the old anchors are being dropped. */
  phase: 'prepare' | 'snapshot' | 'committing';
}

export const JOURNAL = 'journal.json';

export function newJournal(runId: string, domain: string, domainUuid: string, dir: string): Journal {
  return {
    kind: 'vprotect-libvirt-ssh-run',
    runId,
    domain,
    domainUuid,
    dir,
    owner: { host: localLockEnv().host, pid: localLockEnv().pid, startedAt: new Date().toISOString() },
    phase: 'prepare',
  };
}

/** The journal's atomic write (temporary file + rename), as a step of a command batch. */
export function journalStep(j: Journal): Step {
  return writeFileStep(`${j.dir}/${JOURNAL}`, `${JSON.stringify(j, null, 2)}\n`, '0644');
}

export async function writeJournal(hv: Hypervisor, j: Journal): Promise<void> {
  const r = await hv.exec(journalStep(j).argv, { signal: null });
  if (r.code !== 0) throw new UnavailableError(`could not write the run journal ${j.dir}/${JOURNAL} on ${hv.name}: ${r.stderr.trim() || `exit status ${r.code ?? r.signal}`}`);
}

export interface ListedJournal {
  dir: string;
  journal: Journal | undefined;
}

/** The command listing every run directory under workDir with its journal on one line. */
export function listJournalsArgv(workDir: string): string[] {
  return ['sh', '-c', 'for d in "$1"/run-*; do [ -d "$d" ] || continue; printf "%s\\n" "$d"; cat "$d/journal.json" 2>/dev/null | tr -d "\\n"; printf "\\n"; done', 'sh', workDir];
}

/** Every run directory under workDir with its journal (undefined when unreadable: a run killed while creating it). */
export async function listJournals(hv: Hypervisor, workDir: string): Promise<ListedJournal[]> {
  return parseJournalListing((await hv.exec(listJournalsArgv(workDir), { signal: null })).stdout);
}

export function parseJournalListing(stdout: string): ListedJournal[] {
  const lines = stdout.split('\n');
  const out: { dir: string; journal: Journal | undefined }[] = [];
  for (let i = 0; i + 1 < lines.length; i += 2) {
    const dir = lines[i]!;
    let journal: Journal | undefined;
    try {
      const j = JSON.parse(lines[i + 1]!) as Journal;
      if (j.kind === 'vprotect-libvirt-ssh-run') journal = j;
    } catch {
      journal = undefined;
    }
    out.push({ dir, journal });
  }
  return out;
}

/** Whether the run that wrote the journal may still be alive (same backup node, pid running). */
export function ownerMayBeAlive(j: Journal): boolean {
  const me = localLockEnv();
  if (j.owner.host !== me.host) return true; // another backup node: cannot tell; its VM lock protects it
  if (j.owner.pid === me.pid) return false;
  return me.isAlive(j.owner.pid);
}

/** A run id, time-sortable: run-20261124T221500Z-3f9a. */
export function newRunId(now = new Date()): string {
  const ts = now.toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z');
  return `run-${ts}-${Math.floor(Math.random() * 0x10000).toString(16).padStart(4, '0')}`;
}
