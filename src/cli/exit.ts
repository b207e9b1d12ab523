/** The one place that maps errors to exit codes (README "Exit codes" documents the table). */
import { ExitCode, VprotectError } from '../errors.js';

export function exitCodeFor(err: unknown): number {
  if (err instanceof VprotectError) return err.exitCode;
  return ExitCode.internal;
}

/** The error as a JSON document for --json consumers: stable code, message, hint, details. */
export function errorDocument(err: unknown): Record<string, unknown> {
  if (err instanceof VprotectError) {
    const doc: Record<string, unknown> = { code: err.code, exitCode: err.exitCode, message: err.message };
    if (err.hint) doc['hint'] = err.hint;
    if ('problems' in err && Array.isArray(err.problems) && err.problems.length) doc['problems'] = err.problems;
    if (err.data) doc['data'] = err.data;
    return { error: doc };
  }
  return { error: { code: 'internal', exitCode: ExitCode.internal, message: err instanceof Error ? err.message : String(err) } };
}
