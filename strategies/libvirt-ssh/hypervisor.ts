/**
 * The commands vprotect runs on a hypervisor, over the run's one SSH connection: virsh (with
 * the inventory's libvirt URI), qemu-img/qemu-nbd, and small file operations. Every call is
 * one SSH exec with quoted argv; none of them is ever issued per extent.
 */
import { UnavailableError, VprotectError } from '../../src/errors.js';
import type { HypervisorConfig } from '../../src/inventory/types.js';
import type { Logger } from '../../src/log.js';
import { CommandFailedError } from '../../src/transport/command.js';
import { shellQuote } from '../../src/transport/quote.js';
import type { ExecResult, SshConnection } from '../../src/transport/ssh.js';

/** A libvirt/virsh failure with libvirt's own message ("error: …") as the message. */
export class VirshError extends UnavailableError {
  constructor(
    message: string,
    readonly stderr: string,
  ) {
    super(message);
  }
}

/** virsh commands that change nothing (may be repeated after a lost exit status). */
const QUERIES = new Set(['domstate', 'dumpxml', 'list', 'checkpoint-list', 'checkpoint-dumpxml', 'domjobinfo', 'backup-dumpxml', 'domblklist', 'domblkinfo', 'domuuid', 'blockjob']);

export class Hypervisor {
  constructor(
    readonly conn: SshConnection,
    readonly config: HypervisorConfig,
    private readonly log?: Logger,
    private readonly signal?: AbortSignal,
  ) {}

  get name(): string {
    return this.config.name;
  }

  /** The user qemu runs as (owner of scratch files and sockets qemu creates). */
  get vmUser(): string {
    return this.config.vmUser ?? 'libvirt-qemu';
  }

  /** Runs argv; a non-zero exit is a CommandFailedError with stderr. */
  async run(argv: string[], opts: { stdin?: string | Buffer; timeoutMs?: number; signal?: AbortSignal | null } = {}): Promise<ExecResult> {
    const signal = opts.signal === null ? undefined : (opts.signal ?? this.signal);
    const started = Date.now();
    try {
      return await this.conn.run(argv, { ...(opts.stdin !== undefined ? { stdin: opts.stdin } : {}), ...(opts.timeoutMs ? { timeoutMs: opts.timeoutMs } : {}), ...(signal ? { signal } : {}) });
    } finally {
      this.log?.debug('hypervisor run', { host: this.name, argv: argv.slice(0, 4), ms: Date.now() - started });
    }
  }

  /** Runs argv and returns its result whatever the exit status. */
  async exec(argv: string[], opts: { stdin?: string | Buffer; timeoutMs?: number; signal?: AbortSignal | null } = {}): Promise<ExecResult> {
    const signal = opts.signal === null ? undefined : (opts.signal ?? this.signal);
    const started = Date.now();
    const r = await this.conn.exec(argv, { ...(opts.stdin !== undefined ? { stdin: opts.stdin } : {}), ...(opts.timeoutMs ? { timeoutMs: opts.timeoutMs } : {}), ...(signal ? { signal } : {}) });
    // Round trips are the fixed cost of a small incremental: each one is logged with its time.
    this.log?.debug('hypervisor exec', { host: this.name, argv: argv.slice(0, 4), ms: Date.now() - started, code: r.code });
    return r;
  }

  /** The argv of `virsh ARGS` against the inventory's libvirt URI (for command batches). */
  virshArgv(args: string[]): string[] {
    return ['virsh', '-q', ...(this.config.libvirtUri ? ['-c', this.config.libvirtUri] : []), ...args];
  }

  /**
   * virsh ARGS; failures become VirshError with libvirt's message. `signal: null` runs it
   * even when the run was interrupted (cleanup must still reach the hypervisor).
   */
  async virsh(args: string[], opts: { stdin?: string; timeoutMs?: number; signal?: AbortSignal | null } = {}): Promise<string> {
    const argv = this.virshArgv(args);
    let r = await this.exec(argv, { timeoutMs: opts.timeoutMs ?? 120_000, ...opts });
    // Seen under load: the channel closed with neither exit status nor signal. Queries are safe to ask again.
    if (r.code === undefined && r.signal === undefined && QUERIES.has(args[0]!)) r = await this.exec(argv, { timeoutMs: opts.timeoutMs ?? 120_000, ...opts });
    if (r.code !== 0) throw this.virshError(args, r);
    return r.stdout;
  }

  /** The VirshError of a failed `virsh ARGS` (libvirt's own words). */
  virshError(args: string[], r: { code: number | undefined; signal?: string | undefined; stderr: string }): VirshError {
    const msg = r.stderr.split('\n').map((l) => l.trim()).filter((l) => l && l !== 'error:').map((l) => l.replace(/^error:\s*/, '')).join('; ');
    return new VirshError(`virsh ${args[0]} on ${this.name} failed: ${msg || `exit status ${r.code ?? r.signal}`}`, r.stderr);
  }

  /** Writes `content` to a file on the hypervisor (via stdin: no size limit of argv, no quoting issue). */
  async writeFile(path: string, content: string, mode = '0600'): Promise<void> {
    await this.run(['sh', '-c', 'umask 077 && cat > "$1" && chmod "$2" "$1"', 'sh', path, mode], { stdin: content, signal: null });
  }

  async readFile(path: string): Promise<string | undefined> {
    const r = await this.exec(['cat', path], { signal: null });
    return r.code === 0 ? r.stdout : undefined;
  }

  async remove(...paths: string[]): Promise<void> {
    if (paths.length) await this.run(['rm', '-rf', '--', ...paths], { signal: null });
  }

  async exists(path: string): Promise<boolean> {
    return (await this.exec(['test', '-e', path], { signal: null })).code === 0;
  }

  /** `virsh domstate`: running, paused, shut off, … (undefined when there is no such domain). */
  async domainState(domain: string): Promise<string | undefined> {
    try {
      return (await this.virsh(['domstate', domain], { signal: null })).trim();
    } catch (err) {
      if (err instanceof VirshError && /failed to get domain|Domain not found/i.test(err.stderr)) return undefined;
      throw err;
    }
  }

  async dumpXml(domain: string, inactive = false): Promise<string> {
    return this.virsh(['dumpxml', ...(inactive ? ['--inactive'] : []), domain]);
  }

  async listDomains(): Promise<string[]> {
    return (await this.virsh(['list', '--all', '--name'], { signal: null })).split('\n').map((s) => s.trim()).filter(Boolean);
  }

  async checkpointNames(domain: string): Promise<string[]> {
    return (await this.virsh(['checkpoint-list', domain, '--name'], { signal: null })).split('\n').map((s) => s.trim()).filter(Boolean);
  }

  /** The running block job of the domain, as `virsh domjobinfo` names it ("Backup", …), or undefined. */
  async activeJob(domain: string): Promise<string | undefined> {
    const out = await this.virsh(['domjobinfo', domain], { signal: null });
    if (/Job type:\s+None/.test(out)) return undefined;
    return /Operation:\s+(.+)/.exec(out)?.[1]?.trim() ?? 'unknown';
  }

  /** The running backup job's XML, or undefined when none runs. */
  async backupJobXml(domain: string): Promise<string | undefined> {
    try {
      return await this.virsh(['backup-dumpxml', domain], { signal: null });
    } catch (err) {
      if (err instanceof VirshError && /no domain backup job|does not have a backup job|no active backup|job id not found/i.test(err.stderr)) return undefined;
      if (err instanceof VirshError && /not running|domain is not running/i.test(err.stderr)) return undefined;
      throw err;
    }
  }

  /** Ends a backup job (`domjobabort`); absent jobs are fine. */
  async abortJob(domain: string): Promise<void> {
    try {
      await this.virsh(['domjobabort', domain], { signal: null });
    } catch (err) {
      if (err instanceof VirshError && /no job is active|not running|no active job/i.test(err.stderr)) return;
      throw err;
    }
    // domjobabort returns before libvirt has torn the job down (NBD server, scratch files); the
    // next libvirt call on the domain (checkpoint-delete, blockcommit) needs it gone.
    // Under load domjobinfo was seen still reporting the Backup job after backup-dumpxml had none:
    // wait for both.
    for (let i = 0; i < 100; i++) {
      if ((await this.backupJobXml(domain)) === undefined && (await this.activeJob(domain).catch(() => undefined)) !== 'Backup') return;
      await new Promise((r) => setTimeout(r, 200));
    }
    throw new UnavailableError(`the backup job of ${domain} on ${this.name} did not end within 20 s of domjobabort`);
  }

  /**
   * `abortJob` as one remote command, for command batches: ends the domain's backup job only if
   * it is the run's own (its XML names `ownMark`, the run directory), then waits for libvirt to
   * have torn it down (both domjobinfo and backup-dumpxml: seen out of step under load).
   */
  endOwnBackupJobArgv(domain: string, ownMark: string): string[] {
    const script = [
      'dom=$1; mark=$2; poll=$3; shift 3',
      'gone="no domain backup|does not have a backup job|no active backup|job id not found|not running"',
      'x=$("$@" backup-dumpxml "$dom" 2>&1) || { printf "%s\\n" "$x" | grep -qiE "$gone" && exit 0; printf "%s\\n" "$x" >&2; exit 1; }',
      'case $x in *"$mark"*) ;; *) exit 0 ;; esac',
      'e=$("$@" domjobabort "$dom" 2>&1) || { printf "%s\\n" "$e" | grep -qiE "no job is active|not running|no active job" || { printf "%s\\n" "$e" >&2; exit 1; }; }',
      'i=0',
      'while [ $i -lt 100 ]; do',
      // Both questions in one virsh process: the job is gone when neither answer shows it.
      '  o=$("$@" "$poll" 2>/dev/null)',
      '  case $o in *"Operation:"*Backup*|*"<domainbackup"*) ;; *) exit 0 ;; esac',
      '  sleep 0.2; i=$((i+1))',
      'done',
      'echo "the backup job of $dom did not end within 20 s of domjobabort" >&2; exit 1',
    ].join('\n');
    // virsh's command-string parser takes POSIX-style quoting: shellQuote.
    const poll = `domjobinfo ${shellQuote(domain)} ; backup-dumpxml ${shellQuote(domain)}`;
    return ['sh', '-c', script, 'sh', domain, ownMark, poll, ...this.virshArgv([])];
  }

  /** `virsh checkpoint-delete` as one remote command for batches; an absent checkpoint is fine. */
  deleteCheckpointArgv(domain: string, name: string, metadataOnly: boolean): string[] {
    const script = 'e=$("$@" 2>&1) && exit 0; printf "%s\\n" "$e" | grep -qiE "not found|no domain checkpoint" && exit 0; printf "%s\\n" "$e" >&2; exit 1';
    return ['sh', '-c', script, 'sh', ...this.virshArgv(['checkpoint-delete', domain, name, ...(metadataOnly ? ['--metadata'] : [])])];
  }

  /** Creates a directory that qemu (vmUser) can create sockets and scratch files in. */
  async makeRunDir(dir: string): Promise<void> {
    await this.run(this.makeRunDirArgv(dir), { signal: null });
  }

  makeRunDirArgv(dir: string): string[] {
    return ['sh', '-c', 'mkdir -p -m 0755 "$(dirname "$1")" && mkdir -m 0700 "$1" && chown "$2" "$1"', 'sh', dir, this.vmUser];
  }

  /** Whether a program exists on the hypervisor. */
  async has(program: string): Promise<boolean> {
    return (await this.exec(['sh', '-c', 'command -v "$1" >/dev/null', 'sh', program], { signal: null })).code === 0;
  }
}

/** True when the error says the command ran and failed (as opposed to a lost connection). */
export function isCommandFailure(err: unknown): boolean {
  return err instanceof CommandFailedError || err instanceof VirshError;
}

export function hypervisorError(message: string, hint?: string): VprotectError {
  return new UnavailableError(message, hint ? { hint } : {});
}
