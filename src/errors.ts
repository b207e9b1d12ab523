/**
 * One error hierarchy for all of vprotect. Each class carries a stable `code` (part of the
 * --json contract) and the exit status the CLI maps it to (DESIGN.md §7). Everything below
 * src/cli throws these; only src/cli/exit.ts turns them into a process exit code.
 */

export const ExitCode = {
  ok: 0,
  internal: 1,
  partial: 3,
  usage: 64,
  dataCorrupt: 65,
  unavailable: 69,
  destination: 73,
  locked: 75,
  auth: 77,
  config: 78,
  interrupted: 130,
  terminated: 143,
} as const;
export type ExitCode = (typeof ExitCode)[keyof typeof ExitCode];

export interface ErrorDetails {
  /** What the user can do about it, one sentence. */
  hint?: string;
  cause?: unknown;
  /** Extra machine-readable context for --json (never secrets). */
  data?: Record<string, unknown>;
}

export class VprotectError extends Error {
  readonly code: string = 'internal';
  readonly exitCode: ExitCode = ExitCode.internal;
  readonly hint: string | undefined;
  readonly data: Record<string, unknown> | undefined;

  constructor(message: string, details: ErrorDetails = {}) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.name = new.target.name;
    this.hint = details.hint;
    this.data = details.data;
  }
}

export class InternalError extends VprotectError {}

export class UsageError extends VprotectError {
  override readonly code = 'usage';
  override readonly exitCode = ExitCode.usage;
}

/** A problem in the inventory or another configuration file; `problems` lists each one. */
export class ConfigError extends VprotectError {
  override readonly code = 'config';
  override readonly exitCode = ExitCode.config;
  readonly problems: readonly ConfigProblem[];

  constructor(message: string, problems: readonly ConfigProblem[] = [], details: ErrorDetails = {}) {
    super(message, details);
    this.problems = problems;
  }
}

export interface ConfigProblem {
  file: string;
  /** 1-based; 0 when the problem has no position (for example an unreadable file). */
  line: number;
  column: number;
  /** Path in the document, e.g. `policies[1].retention.keepDaily`; '' for the whole file. */
  path: string;
  message: string;
}

export class DataCorruptError extends VprotectError {
  override readonly code = 'data-corrupt';
  override readonly exitCode = ExitCode.dataCorrupt;
}

/** A service or host we depend on is unreachable or refuses to work (Keystone down, SSH refused). */
export class UnavailableError extends VprotectError {
  override readonly code = 'unavailable';
  override readonly exitCode = ExitCode.unavailable;
}

/** The backup destination cannot be used: not mounted, not writable, full, not a repository. */
export class DestinationError extends VprotectError {
  override readonly code = 'destination';
  override readonly exitCode = ExitCode.destination;
}

/** Someone else holds the lock; try again later. */
export class LockedError extends VprotectError {
  override readonly code = 'locked';
  override readonly exitCode = ExitCode.locked;
}

export class AuthError extends VprotectError {
  override readonly code = 'auth';
  override readonly exitCode = ExitCode.auth;
}

/** Some VMs of a run failed while others succeeded. */
export class PartialFailureError extends VprotectError {
  override readonly code = 'partial';
  override readonly exitCode = ExitCode.partial;
}

export class InterruptedError extends VprotectError {
  override readonly code = 'interrupted';
  override readonly exitCode: ExitCode;
  readonly signal: 'SIGINT' | 'SIGTERM';

  constructor(signal: 'SIGINT' | 'SIGTERM' = 'SIGINT') {
    super(`interrupted by ${signal}`);
    this.signal = signal;
    this.exitCode = signal === 'SIGTERM' ? ExitCode.terminated : ExitCode.interrupted;
  }
}

/** Throws an InterruptedError when the run's signal has fired; call between steps. */
export function throwIfAborted(signal: AbortSignal | undefined): void {
  if (!signal?.aborted) return;
  const reason: unknown = signal.reason;
  if (reason instanceof VprotectError) throw reason;
  throw new InterruptedError();
}

export function errorMessage(err: unknown): string {
  if (err instanceof Error) return err.message;
  return String(err);
}
