/** Builds what every command action gets from the global options and the process. */
import type { Command } from 'commander';
import { UsageError } from '../errors.js';
import type { Inventory } from '../inventory/types.js';
import type { Environment } from '../inventory/secrets.js';
import type { EventSink, Logger, RunContext } from '../log.js';
import { createStderrLogger } from './logger.js';
import { eventSink, Output } from './output.js';
import { createProgressRenderer, type ProgressRenderer } from './progress.js';

export interface GlobalOptions {
  inventory?: string;
  json?: boolean;
  quiet?: boolean;
  verbose?: boolean;
  color?: boolean;
  dryRun?: boolean;
}

export interface CliContext extends RunContext {
  out: Output;
  env: Environment;
  /** The inventory path from -c, VPROTECT_INVENTORY or ./vprotect.yaml. */
  inventoryPath: string;
  loadInventory(opts?: { offline?: boolean }): Promise<Inventory>;
  close(): void;
}

export interface ProcessIo {
  env: Environment;
  /** Writes text results to stdout (kept lazy: see data-stdout.ts for why stdout is not touched early). */
  writeStdout: (text: string) => void;
  stdoutIsTty: boolean;
  stderr: NodeJS.WritableStream;
  stderrIsTty: boolean;
  signal: AbortSignal;
}

export async function createContext(cmd: Command, io: ProcessIo): Promise<CliContext> {
  const g = cmd.optsWithGlobals<GlobalOptions>();
  if (g.quiet && g.verbose) throw new UsageError('--quiet and --verbose cannot be used together');
  const color = g.color !== false && !io.env['NO_COLOR'] && io.stderrIsTty;
  const json = g.json === true;
  const out = new Output({ json, quiet: g.quiet === true, color: color && io.stdoutIsTty, stdout: io.writeStdout });

  // Bars only for a person watching: a TTY on stderr, not in CI, not in --json or --quiet mode.
  const tty = io.stderrIsTty && !io.env['CI'] && !json && !g.quiet;
  let log: Logger | undefined;
  const renderer: ProgressRenderer = await createProgressRenderer({ tty, log: () => log!, stream: io.stderr });
  log = createStderrLogger({ write: (t) => renderer.writeLog(t), level: g.verbose ? 'debug' : g.quiet ? 'warn' : 'info', color });
  const events: EventSink = eventSink(out, renderer.sink);

  const inventoryPath = g.inventory ?? io.env['VPROTECT_INVENTORY'] ?? 'vprotect.yaml';
  let loaded: Promise<Inventory> | undefined;
  return {
    out,
    log,
    events,
    signal: io.signal,
    dryRun: g.dryRun === true,
    env: io.env,
    inventoryPath,
    loadInventory: (opts = {}) => {
      loaded ??= import('../inventory/load.js').then((m) => m.loadInventory(inventoryPath, { env: io.env, offline: opts.offline === true }));
      return loaded;
    },
    close: () => renderer.stop(),
  };
}
