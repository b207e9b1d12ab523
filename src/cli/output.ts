/**
 * Where a command's results and events go. Results on stdout (one JSON document with --json, or
 * text); events of long runs as JSON lines on stdout with --json, else as log lines or progress
 * bars on stderr (bars only on a TTY and outside CI).
 */
import { Chalk, type ChalkInstance } from 'chalk';
import type { EventSink, ProgressEvent } from '../log.js';

export interface OutputOptions {
  json: boolean;
  quiet: boolean;
  color: boolean;
  stdout: (text: string) => void;
}

export class Output {
  readonly json: boolean;
  readonly quiet: boolean;
  readonly chalk: ChalkInstance;
  private readonly stdout: (text: string) => void;

  constructor(opts: OutputOptions) {
    this.json = opts.json;
    this.quiet = opts.quiet;
    this.stdout = opts.stdout;
    this.chalk = new Chalk({ level: opts.color ? 1 : 0 });
  }

  /** The command's result: `data` as JSON with --json, else what `render` makes of it. */
  result<T>(data: T, render: (data: T, chalk: ChalkInstance) => string): void {
    if (this.json) {
      this.stdout(`${JSON.stringify(data, null, 2)}\n`);
      return;
    }
    const text = render(data, this.chalk);
    if (text) this.stdout(text.endsWith('\n') ? text : `${text}\n`);
  }

  /** A JSON line on stdout (--json event streams of long runs). */
  jsonLine(event: ProgressEvent): void {
    this.stdout(`${JSON.stringify({ time: new Date().toISOString(), ...event })}\n`);
  }
}

/** Events → JSON lines with --json; otherwise handed to the human renderer (log lines, bars). */
export function eventSink(out: Output, human: EventSink): EventSink {
  return out.json ? (e) => out.jsonLine(e) : human;
}
