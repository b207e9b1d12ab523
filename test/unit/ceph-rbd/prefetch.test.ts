import { describe, expect, it } from 'vitest';
import { prefetch } from '../../../strategies/ceph-rbd/prefetch.js';

const tick = () => new Promise((r) => setTimeout(r, 5));

describe('prefetch (read-ahead between rbd and the parser)', () => {
  it('passes every chunk in order', async () => {
    const chunks = Array.from({ length: 50 }, (_, i) => Buffer.alloc(10 + i, i));
    const got: Buffer[] = [];
    for await (const c of prefetch((async function* () { yield* chunks; })(), 100)) got.push(c);
    expect(got).toEqual(chunks);
  });

  it('reads ahead while the consumer is busy, but never more than the bound (plus one chunk)', async () => {
    let produced = 0;
    const source = (async function* () {
      for (let i = 0; i < 100; i++) {
        produced++;
        yield Buffer.alloc(10);
      }
    })();
    const it = prefetch(source, 35)[Symbol.asyncIterator]();
    await it.next();
    await tick();
    // 1 handed out + up to 4 queued (35 bytes → the 4th chunk crosses the bound) + 1 pending read.
    expect(produced).toBeGreaterThanOrEqual(4);
    expect(produced).toBeLessThanOrEqual(6);
    await it.return(undefined);
  });

  it('hands out what came before a failure, then the failure', async () => {
    const source = (async function* () {
      yield Buffer.from('a');
      yield Buffer.from('b');
      throw new Error('rbd died');
    })();
    const got: string[] = [];
    await expect(
      (async () => {
        for await (const c of prefetch(source, 1 << 20)) got.push(c.toString());
      })(),
    ).rejects.toThrow('rbd died');
    expect(got).toEqual(['a', 'b']);
  });

  it('stops the source when the consumer stops early', async () => {
    let finalized = false;
    const source = (async function* () {
      try {
        for (;;) yield Buffer.alloc(1);
      } finally {
        finalized = true;
      }
    })();
    for await (const _ of prefetch(source, 4)) break;
    await tick();
    expect(finalized).toBe(true);
  });
});
