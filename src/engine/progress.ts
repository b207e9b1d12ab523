/**
 * Counts the bytes of a disk's extents as they pass to the writer and reports progress events,
 * at most every `intervalMs`, so a 1 TiB disk does not flood a --json consumer.
 */
import type { EventSink } from '../log.js';
import type { Extent } from '../repository/extents.js';

export async function* withProgress(
  extents: AsyncIterable<Extent>,
  report: { events: EventSink; id: string; label: string; total: number; intervalMs?: number; now?: () => number },
): AsyncGenerator<Extent> {
  const now = report.now ?? Date.now;
  const interval = report.intervalMs ?? 500;
  let last = now();
  let done = 0;
  report.events({ type: 'progress', id: report.id, label: report.label, done: 0, total: report.total });
  for await (const e of extents) {
    yield e;
    done = e.offset + e.length;
    const t = now();
    if (t - last >= interval) {
      last = t;
      report.events({ type: 'progress', id: report.id, label: report.label, done, total: report.total });
    }
  }
  report.events({ type: 'progress', id: report.id, label: report.label, done: report.total, total: report.total });
  report.events({ type: 'progress-end', id: report.id });
}
