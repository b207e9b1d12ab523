/**
 * The commands vprotect runs on a hypervisor, over the run's one SSH connection: virsh (with
 * the inventory's libvirt URI), qemu-img/qemu-nbd, and small file operations, as quoted argv.
 * After `keepProcesses()` (a backup session, cleanup) virsh commands go to ONE persistent virsh
 * and other commands to ONE persistent shell (persistent.ts); otherwise, and when a persistent
 * process cannot be started, each call is its own SSH exec. None is ever issued per extent.
 */
import { UnavailableError, VprotectError, errorMessage } from '../../src/errors.js';
import type { HypervisorConfig } from '../../src/inventory/types.js';
import type { Logger } from '../../src/log.js';
import { CommandFailedError } from '../../src/transport/command.js';
import { commandFailedError } from '../../src/transport/ssh/connection.js';
import type { ExecResult, SshConnection } from '../../src/transport/ssh.js';
import { inlineCommand, newBoundary, splitVirshMulti, virshMultiArgv, type StepResult } from './batch.js';
import { PersistentShell, PersistentVirsh, ProcessLostError, ProcessStartError, virshCanCarry } from './persistent.js';

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

/** backup-dumpxml's words for "no backup job" (libvirt versions differ). */
const NO_BACKUP_JOB = /no domain backup job|does not have a backup job|no active backup|job id not found|not running|domain is not running/i;
/** domjobabort's words for "nothing to abort". */
const NO_JOB = /no job is active|not running|no active job/i;

/** The default time limit of a request to the persistent shell (what a command batch had). */
export const SHELL_TIMEOUT_MS = 300_000;

type CallOptions = { timeoutMs?: number; signal?: AbortSignal | null };

export class Hypervisor {
  private kept: { virsh: PersistentVirsh; shell: PersistentShell } | undefined;

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

  /**
   * From now on virsh commands go to one persistent virsh, other commands (without stdin) to one
   * persistent shell, both started on first use; `closeProcesses()` ends them.
   */
  keepProcesses(): void {
    this.kept ??= { virsh: new PersistentVirsh(this.conn, this.virshArgv([]), this.log), shell: new PersistentShell(this.conn, this.log) };
  }

  /** Ends the persistent processes (EOF on stdin; killed if they do not exit promptly). */
  async closeProcesses(): Promise<void> {
    const kept = this.kept;
    this.kept = undefined;
    if (kept) await Promise.all([kept.virsh.close(), kept.shell.close()]);
  }

  private signalOf(opts: CallOptions): AbortSignal | undefined {
    return opts.signal === null ? undefined : (opts.signal ?? this.signal);
  }

  /** Runs argv; a non-zero exit is a CommandFailedError with stderr. */
  async run(argv: string[], opts: { stdin?: string | Buffer } & CallOptions = {}): Promise<ExecResult> {
    const r = await this.exec(argv, opts);
    if (r.code !== 0) throw commandFailedError(argv, this.name, r);
    return r;
  }

  /** Runs argv and returns its result whatever the exit status. */
  async exec(argv: string[], opts: { stdin?: string | Buffer } & CallOptions = {}): Promise<ExecResult> {
    const started = Date.now();
    if (this.kept && opts.stdin === undefined) {
      const r = await this.shellScript(inlineCommand(argv), opts, argv);
      if (r) return r;
    }
    const signal = this.signalOf(opts);
    const r = await this.conn.exec(argv, { ...(opts.stdin !== undefined ? { stdin: opts.stdin } : {}), ...(opts.timeoutMs ? { timeoutMs: opts.timeoutMs } : {}), ...(signal ? { signal } : {}) });
    // Round trips are the fixed cost of a small incremental: each one is logged with its time.
    this.log?.debug('hypervisor exec', { host: this.name, argv: argv.slice(0, 4), ms: Date.now() - started, code: r.code });
    return r;
  }

  /**
   * A shell script (built from quoted argv only) in the persistent shell, or undefined when
   * there is none or it cannot start (nothing was sent: the caller uses an SSH exec). A shell
   * that died before answering gives no exit status, like an exec whose channel was lost.
   */
  async shellScript(script: string, opts: CallOptions = {}, argvForLog?: string[]): Promise<ExecResult | undefined> {
    if (!this.kept) return undefined;
    const started = Date.now();
    try {
      // Always a time limit: requests queue on the one shell, so a hung command would block every
      // later one, abort's cleanup included (the limit kills the shell; the next request starts one).
      const r = await this.kept.shell.script(script, { timeoutMs: opts.timeoutMs ?? SHELL_TIMEOUT_MS, signal: this.signalOf(opts) });
      this.log?.debug('hypervisor sh', { host: this.name, argv: argvForLog?.slice(0, 4) ?? ['script'], ms: Date.now() - started, code: r.code });
      return { code: r.code, signal: undefined, stdout: r.stdout, stderr: r.stderr };
    } catch (err) {
      if (err instanceof ProcessStartError) {
        this.log?.debug(`${errorMessage(err)} on ${this.name}: one exec instead`);
        return undefined;
      }
      if (err instanceof ProcessLostError) return { code: undefined, signal: undefined, stdout: '', stderr: err.message };
      throw err;
    }
  }

  /** The argv of `virsh ARGS` against the inventory's libvirt URI (for command batches). */
  virshArgv(args: string[]): string[] {
    return ['virsh', '-q', ...(this.config.libvirtUri ? ['-c', this.config.libvirtUri] : []), ...args];
  }

  /**
   * virsh ARGS; failures become VirshError with libvirt's message. `signal: null` runs it
   * even when the run was interrupted (cleanup must still reach the hypervisor).
   */
  async virsh(args: string[], opts: CallOptions = {}): Promise<string> {
    const [r] = await this.virshEach([args], opts);
    if (r!.code !== 0) throw this.virshError(args, r!);
    return r!.stdout;
  }

  /**
   * Several virsh commands, one result each (code 0, non-zero, or undefined: did not run), in
   * order; a failure does not stop the others. With kept processes: ONE round trip to the
   * persistent virsh. Otherwise (or when it cannot start): queries in one virsh process, asked
   * again one process each when virsh complained about anything (so that every error is told
   * apart); changes one process each.
   */
  async virshEach(commands: string[][], opts: CallOptions = {}): Promise<StepResult[]> {
    if (commands.length === 0) return [];
    const timeoutMs = opts.timeoutMs ?? 120_000;
    const signal = this.signalOf(opts);
    const queries = commands.every((c) => QUERIES.has(c[0]!));
    if (this.kept && virshCanCarry(commands)) {
      for (let attempt = 0; attempt < 2; attempt++) {
        const started = Date.now();
        try {
          const r = await this.kept.virsh.run(commands, { timeoutMs, signal });
          this.log?.debug('hypervisor virsh', { host: this.name, commands: commands.map((c) => c[0]), ms: Date.now() - started, codes: r.map((x) => x.code) });
          return r;
        } catch (err) {
          if (err instanceof ProcessStartError) break;
          if (!(err instanceof ProcessLostError)) throw err;
          this.log?.debug(`persistent virsh on ${this.name} lost (${errorMessage(err)})`);
          // A lost answer to queries is safe to ask again (a new process starts); changes are not.
          if (!queries || attempt === 1) throw err;
        }
      }
      this.log?.debug(`virsh on ${this.name}: one exec instead of the persistent virsh`);
    }
    const once = async (argv: string[]) => {
      let r = await this.exec(argv, { timeoutMs, signal: signal ?? null });
      // Seen under load: the channel closed with neither exit status nor signal. Queries are safe to ask again.
      if (r.code === undefined && r.signal === undefined && queries) r = await this.exec(argv, { timeoutMs, signal: signal ?? null });
      return r;
    };
    // Changes run one process each (their errors told apart); queries share one process first.
    if (commands.length > 1 && queries) {
      const boundary = newBoundary();
      const all = await once(virshMultiArgv(this, commands, boundary));
      const sections = all.code === 0 && all.stderr.trim() === '' ? splitVirshMulti(all.stdout, boundary, commands.length) : undefined;
      if (sections) return sections.map((stdout) => ({ code: 0, stdout, stderr: '' }));
    }
    const out: StepResult[] = [];
    for (const c of commands) out.push(await once(this.virshArgv(c)));
    return out;
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

  /** The running backup job's XML, or undefined when none runs. */
  async backupJobXml(domain: string): Promise<string | undefined> {
    try {
      return await this.virsh(['backup-dumpxml', domain], { signal: null });
    } catch (err) {
      if (err instanceof VirshError && NO_BACKUP_JOB.test(err.stderr)) return undefined;
      throw err;
    }
  }

  /** Ends the domain's backup job only if it is the one a run started (its XML names `ownMark`, the run directory). */
  async endOwnBackupJob(domain: string, ownMark: string): Promise<void> {
    const xml = await this.backupJobXml(domain);
    if (xml !== undefined && xml.includes(ownMark)) await this.abortJob(domain);
  }

  /**
   * Ends a backup job (`domjobabort`; absent jobs are fine) and waits until libvirt has torn it
   * down (NBD server, scratch files): domjobabort returns before that, and the next libvirt call
   * on the domain (checkpoint-delete, blockcommit) needs it gone. Under load domjobinfo was seen
   * still reporting the Backup job after backup-dumpxml had none: both are asked, in the same
   * round trip as the abort, then again at growing intervals (the first ask usually says gone).
   */
  async abortJob(domain: string): Promise<void> {
    const poll = [
      ['domjobinfo', domain],
      ['backup-dumpxml', domain],
    ];
    const [abort, ...first] = await this.virshEach([['domjobabort', domain], ...poll], { signal: null });
    if (abort!.code !== 0 && !NO_JOB.test(abort!.stderr)) throw this.virshError(['domjobabort'], abort!);
    if (backupJobGone(first)) return;
    let last = first;
    const deadline = Date.now() + 20_000;
    for (let wait = 10; Date.now() < deadline; wait = Math.min(wait * 2, 200)) {
      await new Promise((r) => setTimeout(r, wait));
      last = await this.virshEach(poll, { signal: null });
      if (backupJobGone(last)) return;
    }
    const failed = last.find((r) => r.code !== 0);
    throw new UnavailableError(`the backup job of ${domain} on ${this.name} did not end within 20 s of domjobabort${failed ? ` (last poll: ${failed.stderr.trim().slice(-300) || `exit status ${failed.code ?? 'unknown'}`})` : ''}`);
  }

  /** Creates a directory that qemu (vmUser) can create sockets and scratch files in. */
  async makeRunDir(dir: string): Promise<void> {
    await this.run(this.makeRunDirArgv(dir), { signal: null });
  }

  makeRunDirArgv(dir: string): string[] {
    // ${1%/*}: the parent without a dirname process (the run dir is an absolute path under workDir).
    return ['sh', '-c', 'mkdir -p -m 0755 "${1%/*}" && mkdir -m 0700 "$1" && chown "$2" "$1"', 'sh', dir, this.vmUser];
  }

  /** Whether a program exists on the hypervisor. */
  async has(program: string): Promise<boolean> {
    return (await this.exec(['sh', '-c', 'command -v "$1" >/dev/null', 'sh', program], { signal: null })).code === 0;
  }
}

/**
 * Whether a poll of [domjobinfo, backup-dumpxml] shows the backup job gone (exported for unit
 * tests). Only an answer counts: a query that ran and shows no Backup job, or libvirt's words for
 * "no job"; a query that failed otherwise (a lost connection, a timeout) proves nothing.
 */
export function backupJobGone([info, xml]: StepResult[]): boolean {
  const infoGone = info!.code === 0 ? !/Operation:\s+Backup/.test(info!.stdout) : NO_JOB.test(info!.stderr);
  const xmlGone = xml!.code === 0 ? !xml!.stdout.includes('<domainbackup') : NO_BACKUP_JOB.test(xml!.stderr);
  return infoGone && xmlGone;
}

/** True when the error says the command ran and failed (as opposed to a lost connection). */
export function isCommandFailure(err: unknown): boolean {
  return err instanceof CommandFailedError || err instanceof VirshError;
}

export function hypervisorError(message: string, hint?: string): VprotectError {
  return new UnavailableError(message, hint ? { hint } : {});
}
