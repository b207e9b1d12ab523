/**
 * POSIX shell quoting for the one place where vprotect must hand a command line to a shell:
 * an SSH exec request carries a single string that the remote user's login shell parses.
 * Every argument is quoted so that the shell sees exactly the argv we meant — no expansion,
 * no word splitting, no command substitution, whatever bytes the argument holds.
 *
 * Assumes a POSIX-compatible login shell (sh, dash, bash, ksh, zsh, busybox ash); csh/tcsh and
 * fish treat `!` and newlines inside single quotes differently and are not supported.
 */
import { UsageError } from '../errors.js';

/** Characters that never need quoting in any POSIX shell context (kept short on purpose). */
const SAFE = /^[A-Za-z0-9_./:@%+=,-]+$/;

/**
 * Quotes one argument. Inside single quotes nothing is special except `'` itself, which is
 * closed, escaped and reopened: `it's` → `'it'\''s'`.
 */
export function shellQuote(arg: string): string {
  if (arg.includes('\0')) {
    // A NUL cannot travel in argv at all: the remote execve would silently cut the argument.
    throw new UsageError(`argument contains a NUL byte and cannot be passed to a command: ${JSON.stringify(arg.slice(0, 40))}`);
  }
  if (arg !== '' && SAFE.test(arg)) return arg;
  return `'${arg.replace(/'/g, `'\\''`)}'`;
}

/** Joins argv into one command line for `sh -c`/SSH exec; argv[0] is quoted like the rest. */
export function shellJoin(argv: readonly string[]): string {
  if (argv.length === 0) throw new UsageError('cannot run an empty command');
  return argv.map(shellQuote).join(' ');
}

/** A readable rendering of argv for error messages and logs (same quoting, shortened). */
export function describeArgv(argv: readonly string[], max = 200): string {
  let text: string;
  try {
    text = shellJoin(argv);
  } catch {
    text = argv.map((a) => JSON.stringify(a)).join(' ');
  }
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}
