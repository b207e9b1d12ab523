/**
 * The vprotect command line. This is the only module (with its siblings in src/cli) that
 * touches `process`: argv, stdout/stderr, environment, signals and the exit code.
 * Command modules are imported lazily so that `vprotect --help` loads no heavy dependency.
 */
import { isatty } from 'node:tty';
import { Command, CommanderError, Option } from 'commander';
import { InterruptedError, UsageError, VprotectError } from '../errors.js';
import { VERSION } from '../version.js';
import { commandGroups } from './commands/index.js';
import { createContext, type CliContext } from './context.js';
import { errorDocument, exitCodeFor } from './exit.js';

export type Action = (ctx: CliContext, args: unknown[], opts: Record<string, unknown>) => Promise<void>;

export async function main(argv: string[] = process.argv): Promise<void> {
  const controller = new AbortController();
  const onSignal = (signal: 'SIGINT' | 'SIGTERM') => {
    if (controller.signal.aborted) {
      // A second Ctrl-C: the user does not want to wait for cleanup.
      process.stderr.write(`vprotect: ${signal} again, exiting without cleanup\n`);
      process.exit(new InterruptedError(signal).exitCode);
    }
    process.stderr.write(`vprotect: ${signal} received, stopping and cleaning up (again to force)\n`);
    controller.abort(new InterruptedError(signal));
  };
  process.on('SIGINT', () => onSignal('SIGINT'));
  process.on('SIGTERM', () => onSignal('SIGTERM'));

  const json = argv.includes('--json');
  let ctx: CliContext | undefined;
  const program = buildProgram(async (cmd, action, args, opts) => {
    ctx = await createContext(cmd, {
      env: process.env,
      // isatty(1) instead of process.stdout.isTTY: creating process.stdout makes fd 1 a
      // synchronous libuv stream, which commands that stream data to stdout must avoid.
      writeStdout: (text) => void process.stdout.write(text),
      stdoutIsTty: isatty(1),
      stderr: process.stderr,
      stderrIsTty: isatty(2),
      signal: controller.signal,
    });
    await action(ctx, args, opts);
    if (controller.signal.aborted) throw controller.signal.reason;
  });

  try {
    await program.parseAsync(argv);
    process.exitCode = 0;
  } catch (err) {
    // After a signal, report the interruption — unless the error already does, with details
    // (restore --to-cloud says what its cleanup removed and what is left).
    const reported = err instanceof VprotectError && err.exitCode === (controller.signal.reason as VprotectError | undefined)?.exitCode;
    const error = controller.signal.aborted && !(err instanceof UsageError) && !reported ? controller.signal.reason : err;
    if (error instanceof CommanderError) {
      // Help and --version "errors" are successes; every other parse error is a usage error.
      process.exitCode = error.code === 'commander.helpDisplayed' || error.code === 'commander.version' || error.exitCode === 0 ? 0 : 64;
      if (json && process.exitCode !== 0) process.stdout.write(`${JSON.stringify({ error: { code: 'usage', exitCode: 64, message: error.message } })}\n`);
    } else {
      process.exitCode = exitCodeFor(error);
      report(error, json, argv.includes('-v') || argv.includes('--verbose'));
    }
  } finally {
    ctx?.close();
  }
  // After a signal, leave now: a write blocked on a full pipe or a hung connection must not keep
  // the process alive once cleanup has run.
  if (controller.signal.aborted) process.exit(process.exitCode);
}

function report(err: unknown, json: boolean, verbose: boolean): void {
  if (json) process.stdout.write(`${JSON.stringify(errorDocument(err))}\n`);
  const e = err as { message?: string; hint?: string; stack?: string };
  const internal = exitCodeFor(err) === 1;
  process.stderr.write(`vprotect: ${internal ? 'internal error: ' : ''}${e.message ?? String(err)}\n`);
  if (e.hint) process.stderr.write(`hint: ${e.hint}\n`);
  if ((internal || verbose) && e.stack) process.stderr.write(`${e.stack}\n`);
}

type Runner = (cmd: Command, action: Action, args: unknown[], opts: Record<string, unknown>) => Promise<void>;

export function buildProgram(run: Runner): Command {
  const program = new Command('vprotect')
    .description('Agentless backup and restore of OpenStack instances (libvirt over SSH, Ceph RBD, Cinder attach).')
    .version(VERSION, '-V, --version', 'print the version')
    .option('-c, --inventory <file>', 'inventory file (default: $VPROTECT_INVENTORY or ./vprotect.yaml)')
    .option('--json', 'machine-readable output: one JSON document, or JSON lines for long runs')
    .option('-q, --quiet', 'only warnings and errors on stderr')
    .option('-v, --verbose', 'debug logging on stderr')
    .addOption(new Option('--no-color', 'no colours (also when NO_COLOR is set or stderr is not a terminal)'))
    .option('--dry-run', 'say what would be done, change nothing')
    .showSuggestionAfterError(true)
    .exitOverride()
    .configureOutput({ outputError: (text, write) => write(`vprotect: ${text.replace(/^error: /, '')}`) });

  for (const group of commandGroups) group(program, (load) => async function (this: Command, ...params: unknown[]) {
    // commander passes (...positionalArgs, options, command)
    const cmd = params.at(-1) as Command;
    const opts = params.at(-2) as Record<string, unknown>;
    const args = params.slice(0, -2);
    const action = await load();
    await run(cmd, action, args, opts);
  });
  program.commands.forEach(function configure(c: Command): void {
    c.exitOverride().showSuggestionAfterError(true);
    c.commands.forEach(configure);
  });
  return program;
}
