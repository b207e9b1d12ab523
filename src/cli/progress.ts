/**
 * Human rendering of a long run's events on stderr: progress bars (cli-progress) when stderr is
 * a TTY and CI is not set, otherwise plain log lines for the events that carry a message.
 * Event shapes: {type: 'progress', id, label, done, total} moves a bar; {type: 'progress-end', id}
 * ends it; any event with a `message` string is logged.
 */
import type { EventSink, Logger, ProgressEvent } from '../log.js';
import { bytes } from './format.js';

export interface ProgressRenderer {
  sink: EventSink;
  /** Writes a log line to stderr; above the bars while bars are shown, so the two never mix. */
  writeLog(text: string): void;
  stop(): void;
}

export async function createProgressRenderer(opts: { tty: boolean; log: () => Logger; stream: NodeJS.WritableStream }): Promise<ProgressRenderer> {
  if (!opts.tty) {
    return {
      sink: (e) => logEvent(opts.log(), e),
      writeLog: (text) => void opts.stream.write(text),
      stop() {},
    };
  }
  const { MultiBar, Presets } = (await import('cli-progress')).default;
  const multi = new MultiBar(
    {
      stream: opts.stream,
      format: ' {bar} {percentage}% | {label} | {doneHuman}/{totalHuman}',
      hideCursor: true,
      clearOnComplete: false,
      stopOnComplete: false,
      barsize: 30,
    },
    Presets.shades_classic,
  );
  const bars = new Map<string, ReturnType<typeof multi.create>>();
  return {
    sink: (e) => {
      if (e.type === 'progress' && typeof e['id'] === 'string') {
        const total = Number(e['total'] ?? 0);
        const done = Number(e['done'] ?? 0);
        const payload = { label: String(e['label'] ?? e['id']), doneHuman: bytes(done), totalHuman: bytes(total) };
        let bar = bars.get(e['id']);
        if (!bar) {
          bar = multi.create(total, done, payload);
          bars.set(e['id'], bar);
        } else {
          bar.setTotal(total);
          bar.update(done, payload);
        }
        return;
      }
      if (e.type === 'progress-end' && typeof e['id'] === 'string') {
        const bar = bars.get(e['id']);
        if (bar) {
          bar.stop();
          multi.remove(bar);
          bars.delete(e['id']);
        }
        return;
      }
      logEvent(opts.log(), e);
    },
    writeLog: (text) => {
      if (bars.size) multi.log(text);
      else opts.stream.write(text);
    },
    stop: () => multi.stop(),
  };
}

function logEvent(log: Logger, e: ProgressEvent): void {
  if (typeof e['message'] !== 'string') return;
  const level = e['level'] === 'warn' ? 'warn' : e['level'] === 'error' ? 'error' : e['level'] === 'debug' ? 'debug' : 'info';
  log[level](e['message']);
}
