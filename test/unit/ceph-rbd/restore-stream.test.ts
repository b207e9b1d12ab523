/**
 * The rbd diff stream a restore feeds to `rbd import-diff`: what it says about the image's size
 * (import-diff resizes the image to it) and which ranges get `z` records. No Ceph: the stream is
 * parsed back with the repository's codec.
 */
import { describe, expect, it } from 'vitest';
import type { DiskReader } from '../../../src/repository/chain-reader.js';
import type { Extent } from '../../../src/repository/extents.js';
import { parseRbdDiff, type RbdDiffItem } from '../../../src/repository/rbd-diff.js';
import { UsageError } from '../../../src/errors.js';
import { diffStream } from '../../../strategies/ceph-rbd/restore.js';
import { chooseCluster } from '../../../strategies/ceph-rbd/rbd.js';
import type { Inventory } from '../../../src/inventory/types.js';

const MiB = 1 << 20;

/** A disk of 4 MiB: data at 1 MiB (64 KiB of 0x5a), the rest holes. */
function reader(): DiskReader {
  const extents: Extent[] = [
    { offset: 0, length: MiB },
    { offset: MiB, length: 64 << 10, data: Buffer.alloc(64 << 10, 0x5a) },
    { offset: MiB + (64 << 10), length: 3 * MiB - (64 << 10) },
  ];
  return {
    key: 'vda',
    size: 4 * MiB,
    async *extents() {
      yield* extents;
    },
  } as unknown as DiskReader;
}

async function items(stream: AsyncIterable<Buffer>): Promise<RbdDiffItem[]> {
  const out: RbdDiffItem[] = [];
  for await (const item of parseRbdDiff(stream)) out.push(item);
  return out;
}

describe('diffStream (restore into RBD)', () => {
  it('into a new or empty image: the size record and data records only', async () => {
    const stats = { dataBytes: 0 };
    const got = await items(diffStream(reader(), { zeros: false, stats }));
    expect(got.find((i) => i.type === 'size')).toEqual({ type: 'size', size: 4 * MiB });
    expect(got.filter((i) => i.type === 'zero')).toEqual([]);
    const data = got.filter((i): i is Extract<RbdDiffItem, { type: 'data' }> => i.type === 'data');
    expect(data.map((d) => [d.offset, d.data.length])).toEqual([[MiB, 64 << 10]]);
    expect(data[0]!.data.equals(Buffer.alloc(64 << 10, 0x5a))).toBe(true);
    expect(stats.dataBytes).toBe(64 << 10);
    expect(got.at(-1)!.type).toBe('end');
  });

  it('an empty image larger than the disk keeps its size: the stream says it, and writes no zeros', async () => {
    const got = await items(diffStream(reader(), { size: 8 * MiB, zeros: false, stats: { dataBytes: 0 } }));
    expect(got.find((i) => i.type === 'size')).toEqual({ type: 'size', size: 8 * MiB });
    expect(got.filter((i) => i.type === 'zero')).toEqual([]);
  });

  it('an overwritten image: every range without data is a z record, so nothing old survives', async () => {
    const got = await items(diffStream(reader(), { zeros: true, stats: { dataBytes: 0 } }));
    const ranges = got.filter((i) => i.type === 'zero' || i.type === 'data').map((i) => (i.type === 'zero' ? ['z', i.offset, i.length] : ['w', i.offset, (i as { data: Buffer }).data.length]));
    expect(ranges).toEqual([
      ['z', 0, MiB],
      ['w', MiB, 64 << 10],
      ['z', MiB + (64 << 10), 3 * MiB - (64 << 10)],
    ]);
  });

  it('refuses an image smaller than the disk', async () => {
    await expect(items(diffStream(reader(), { size: 2 * MiB, zeros: false, stats: { dataBytes: 0 } }))).rejects.toThrow(UsageError);
  });
});

describe('chooseCluster', () => {
  const inv = (clusters: Inventory['cephClusters']): Inventory => ({ file: '/dev/null', version: 1, clouds: {}, hypervisors: [], cephClusters: clusters, destinations: {}, proxies: [], policies: [] });
  const lab = { user: 'volumes' };

  it('the named cluster, else the only one; says which option names one', () => {
    expect(chooseCluster(inv({ lab }), undefined)).toEqual({ name: 'lab', config: lab });
    expect(chooseCluster(inv({ lab, b: lab }), 'b').name).toBe('b');
    expect(() => chooseCluster(inv({ lab }), 'nope')).toThrow(/ceph cluster "nope" is not in the inventory's cephClusters \(lab\)/);
    expect(() => chooseCluster(inv({}), undefined)).toThrow(/the ceph-rbd strategy reads RBD images with rbd, but the inventory has no cephClusters entry/);
    expect(() => chooseCluster(inv({ lab, b: lab }), undefined)).toThrow(/several ceph clusters in the inventory \(lab, b\): name one with strategyOptions.cluster/);
  });

  it('in the words of its caller', () => {
    const words = { prefix: 'vm1: ', option: 'strategyOptions.rbd.cluster', need: 'its RBD disks are read here', hint: 'add one' };
    expect(() => chooseCluster(inv({}), undefined, words)).toThrow(/^vm1: its RBD disks are read here, but the inventory has no cephClusters entry$/);
    try {
      chooseCluster(inv({ lab, b: lab }), undefined, words);
    } catch (err) {
      expect((err as Error).message).toBe('vm1: several ceph clusters in the inventory (lab, b): name one with strategyOptions.rbd.cluster');
      expect((err as { hint?: string }).hint).toBe('add one');
      return;
    }
    throw new Error('chooseCluster did not refuse two clusters without a name');
  });
});
