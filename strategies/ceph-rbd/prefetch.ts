/**
 * Reads ahead of the consumer, up to `maxBytes`. Why: a pipe holds 64 KiB and a child's stdout
 * stream buffers 16 KiB, so while the repository writer waits on the disk (or hashes), rbd
 * blocks on a full pipe and stops reading from the OSDs — producer and consumer take turns
 * instead of working at the same time. With a few MiB in between, both run concurrently.
 * Memory is bounded by `maxBytes` plus one chunk.
 */
export async function* prefetch(source: AsyncIterable<Buffer>, maxBytes: number): AsyncGenerator<Buffer> {
  const it = source[Symbol.asyncIterator]();
  const queue: Buffer[] = [];
  let queued = 0;
  let finished = false;
  let failure: { error: unknown } | undefined;
  let stopped = false;
  let wakeConsumer: (() => void) | undefined;
  let wakeProducer: (() => void) | undefined;
  const wake = (which: 'consumer' | 'producer') => {
    const w = which === 'consumer' ? wakeConsumer : wakeProducer;
    if (which === 'consumer') wakeConsumer = undefined;
    else wakeProducer = undefined;
    w?.();
  };
  void (async () => {
    try {
      while (!stopped) {
        if (queued >= maxBytes) {
          await new Promise<void>((r) => (wakeProducer = r));
          continue;
        }
        const r = await it.next();
        if (r.done) break;
        queue.push(r.value);
        queued += r.value.length;
        wake('consumer');
      }
    } catch (error) {
      failure = { error };
    } finally {
      finished = true;
      wake('consumer');
    }
  })();
  try {
    for (;;) {
      const next = queue.shift();
      if (next) {
        queued -= next.length;
        wake('producer');
        yield next;
        continue;
      }
      if (finished) {
        if (failure) throw failure.error;
        return;
      }
      await new Promise<void>((r) => (wakeConsumer = r));
    }
  } finally {
    stopped = true;
    wake('producer');
    // Not awaited: a pending read ends when the caller stops the source (kills the process).
    if (!finished) void it.return?.()?.catch(() => {});
  }
}
