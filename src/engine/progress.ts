/**
 * Counts the bytes of a disk's extents as they pass to the writer and reports progress events,
 * at most every `intervalMs`, so a 1 TiB disk does not flood a --json consumer.
 */
import type { EventSink } from '../log.js';
import type { Extent } from '../repository/extents.js';

export interface ProgressReport {
  events: EventSink;
  id: string;
  label: string;
  total: number;
  intervalMs?: number;
  now?: () => number;
}

/** Progress of one disk: `at(done)` as bytes pass (throttled), `end()` once it is complete. */
export function progressOf(report: ProgressReport): { at(done: number): void; end(): void } {
  const now = report.now ?? Date.now;
  const interval = report.intervalMs ?? 500;
  let last = now();
  report.events({ type: 'progress', id: report.id, label: report.label, done: 0, total: report.total });
  return {
    at(done) {
      const t = now();
      if (t - last < interval) return;
      last = t;
      report.events({ type: 'progress', id: report.id, label: report.label, done, total: report.total });
    },
    end() {
      report.events({ type: 'progress', id: report.id, label: report.label, done: report.total, total: report.total });
      report.events({ type: 'progress-end', id: report.id });
    },
  };
}

export async function* withProgress(extents: AsyncIterable<Extent>, report: ProgressReport): AsyncGenerator<Extent> {
  const progress = progressOf(report);
  for await (const e of extents) {
    yield e;
    progress.at(e.offset + e.length);
  }
  progress.end();
}
