/**
 * qemu-nbd on the hypervisor, serving a frozen image read-only: the kept overlay of snapshot
 * mode (with `-A`, so the reader sees which clusters the overlay itself holds), or a disk of a
 * domain that is not running. It daemonizes (--fork returns once the socket listens) and is
 * stopped through its pid file, which lives in the run directory the journal records.
 */
import type { Hypervisor } from './hypervisor.js';
import type { NbdServer } from './checkpoint-mode.js';

export interface QemuNbdRequest {
  file: string;
  format: 'qcow2' | 'raw';
  exportName: string;
  server: NbdServer;
  pidFile: string;
  /** Expose qemu:allocation-depth (snapshot-mode incrementals). */
  allocationDepth: boolean;
}

export function qemuNbdArgv(r: QemuNbdRequest): string[] {
  return [
    'qemu-nbd',
    '--read-only',
    '--persistent',
    '--shared=8',
    '--fork',
    `--pid-file=${r.pidFile}`,
    ...(r.server.transport === 'unix' ? [`--socket=${r.server.socket}`] : [`--bind=${r.server.host}`, `--port=${r.server.port}`]),
    `--export-name=${r.exportName}`,
    `--format=${r.format}`,
    ...(r.allocationDepth ? ['--allocation-depth'] : []),
    r.file,
  ];
}

/** The log of a qemu-nbd: next to its pid file in the run directory. */
export function qemuNbdLog(r: Pick<QemuNbdRequest, 'pidFile'>): string {
  return `${r.pidFile.replace(/\.pid$/, '')}.log`;
}

/**
 * The daemon keeps the stdout/stderr it was started with: the persistent shell's, where its
 * later warnings would land in another command's reply. Its output goes to a log file instead;
 * when the start fails, the log is printed on stderr (the error quotes qemu-nbd's own words).
 */
export function startQemuNbdArgv(r: QemuNbdRequest): string[] {
  return ['sh', '-c', 'l=$1; shift; "$@" >"$l" 2>&1 </dev/null && exit 0; s=$?; cat "$l" >&2; exit $s', 'sh', qemuNbdLog(r), ...qemuNbdArgv(r)];
}

export async function startQemuNbd(hv: Hypervisor, r: QemuNbdRequest): Promise<void> {
  await hv.run(startQemuNbdArgv(r), { timeoutMs: 60_000 });
}

/** Stops a qemu-nbd started by startQemuNbd; a missing pid file or process is fine. */
export async function stopQemuNbd(hv: Hypervisor, pidFile: string): Promise<void> {
  await hv.exec(stopQemuNbdArgv(pidFile), { signal: null });
}

export function stopQemuNbdArgv(pidFile: string): string[] {
  // Only a qemu-nbd is signalled: a stale pid file must never kill a recycled pid.
  return ['sh', '-c', 'p=$(cat "$1" 2>/dev/null) || exit 0; [ -n "$p" ] || exit 0; grep -qs qemu-nbd "/proc/$p/cmdline" || exit 0; kill "$p"; for i in 1 2 3 4 5 6 7 8 9 10; do [ -d "/proc/$p" ] || exit 0; sleep 0.2; done; kill -9 "$p"', 'sh', pidFile];
}
