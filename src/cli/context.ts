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
  stdout: NodeJS.WriteStream;
  stderr: NodeJS.WriteStream;
  signal: AbortSignal;
}

export async function createContext(cmd: Command, io: ProcessIo): Promise<CliContext> {
  const g = cmd.optsWithGlobals<GlobalOptions>();
  if (g.quiet && g.verbose) throw new UsageError('--quiet and --verbose cannot be used together');
  const color = g.color !== false && !io.env['NO_COLOR'] && io.stderr.isTTY === true;
  const json = g.json === true;
  const out = new Output({ json, quiet: g.quiet === true, color: color && io.stdout.isTTY === true, stdout: (t) => void io.stdout.write(t) });

  // Bars only for a person watching: a TTY on stderr, not in CI, not in --json or --quiet mode.
  const tty = io.stderr.isTTY === true && !io.env['CI'] && !json && !g.quiet;
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
