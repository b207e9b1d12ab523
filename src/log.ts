/**
 * The logging and progress interface that library code (everything outside src/cli) receives.
 * The CLI provides the implementation; tests can pass `silentLogger` or a recording one.
 */

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';

export interface Logger {
  debug(message: string, fields?: Record<string, unknown>): void;
  info(message: string, fields?: Record<string, unknown>): void;
  warn(message: string, fields?: Record<string, unknown>): void;
  error(message: string, fields?: Record<string, unknown>): void;
}

/** A progress/event stream for long runs (backup, restore): JSON lines or progress bars. */
export interface ProgressEvent {
  type: string;
  [key: string]: unknown;
}
export type EventSink = (event: ProgressEvent) => void;

export const silentLogger: Logger = {
  debug() {},
  info() {},
  warn() {},
  error() {},
};

export const ignoreEvents: EventSink = () => {};

/** What every command and library entry point gets: where to log, where to report, when to stop. */
export interface RunContext {
  log: Logger;
  events: EventSink;
  signal: AbortSignal;
  dryRun: boolean;
}
