import { describe, expect, it } from 'vitest';
import { parseChildren, parseDiffExtents, parseImageInfo, parseListing, parseSnapList, type RbdImageInfo, type RbdSnapshot } from '../../../strategies/ceph-rbd/rbd-json.js';
import { classifyForCleanup, decideLevel, isVprotectSnapshot, parseAnchor, planRotation, pointIdOf, snapshotName, type RbdAnchor } from '../../../strategies/ceph-rbd/snapshots.js';

// Real output of Ceph Pacific in the lab (lab notes, and `rbd snap ls --all`).
const SNAP_LS = `[{"id":4,"name":"s1","size":67108864,"protected":"false","timestamp":"Tue Nov 24 20:53:09 2026"},{"id":8,"name":"s2","size":67108864,"protected":"true","timestamp":"Tue Nov 24 22:54:53 2026","namespace":{"type":"user"}},{"id":9,"name":"3f7f2e42-6759-42fb-9d1c-2d69c3d82124","size":67108864,"protected":"false","timestamp":"Tue Nov 24 22:54:56 2026","namespace":{"type":"trash","original_name":"s3"}}]`;
const INFO = `{"name":"vp-verify-src","id":"1097bd435f1f","size":67108864,"objects":16,"order":22,"object_size":4194304,"snapshot_count":2,"block_name_prefix":"rbd_data.1097bd435f1f","format":2,"features":["layering","exclusive-lock","object-map","fast-diff","deep-flatten"],"op_features":[],"flags":[],"create_timestamp":"Tue Nov 24 20:53:08 2026"}`;
const LS_L = `[{"image":"vpx-clone","id":"116a90cc6596","size":67108864,"parent":{"pool":"volumes","pool_namespace":"","image":"vpx-test","snapshot":"s2"},"format":2},{"image":"vpx-test","id":"114cd9dba0f","size":67108864,"format":2},{"image":"vpx-test","id":"114cd9dba0f","snapshot":"s2","snapshot_id":8,"size":67108864,"format":2,"protected":"true"}]`;

const P1 = '20261124T210000Z-aaaa';
const P2 = '20261124T220000Z-bbbb';
const P3 = '20261124T230000Z-cccc';

function snap(id: number, name: string, over: Partial<RbdSnapshot> = {}): RbdSnapshot {
  return { id, name, size: 64 << 20, protected: false, timestamp: '', namespace: 'user', ...over };
}

describe('rbd JSON parsing', () => {
  it('snap ls, with the trash namespace and string booleans', () => {
    const s = parseSnapList(SNAP_LS);
    expect(s.map((x) => [x.id, x.name, x.protected, x.namespace])).toEqual([
      [4, 's1', false, 'user'],
      [8, 's2', true, 'user'],
      [9, '3f7f2e42-6759-42fb-9d1c-2d69c3d82124', false, 'trash'],
    ]);
  });

  it('info', () => {
    expect(parseImageInfo(INFO)).toEqual({ name: 'vp-verify-src', id: '1097bd435f1f', size: 67108864, objectSize: 4194304, features: ['layering', 'exclusive-lock', 'object-map', 'fast-diff', 'deep-flatten'], opFeatures: [] });
    expect(parseImageInfo(INFO.replace('"op_features":[]', '"op_features":["clone-parent"]')).opFeatures).toEqual(['clone-parent']);
    expect(parseImageInfo(INFO.replace('"op_features":[],', '')).opFeatures).toBeUndefined();
  });

  it('ls -l: images, snapshots, clone parents', () => {
    const rows = parseListing(LS_L);
    expect(rows[0]!.parent).toEqual({ pool: 'volumes', image: 'vpx-test', snapshot: 's2' });
    expect(rows[2]!.snapshot).toEqual({ name: 's2', id: 8, protected: true });
  });

  it('children and diff extents', () => {
    expect(parseChildren('[{"pool":"volumes","pool_namespace":"","image":"vpx-clone"}]')).toEqual([{ pool: 'volumes', namespace: '', image: 'vpx-clone' }]);
    expect(parseDiffExtents('[{"offset":0,"length":1048576,"exists":"true"},{"offset":8388608,"length":65536,"exists":"false"}]')).toEqual([
      { offset: 0, length: 1048576, exists: true },
      { offset: 8388608, length: 65536, exists: false },
    ]);
  });

  it('refuses what it does not understand, naming the command', () => {
    expect(() => parseSnapList('rbd: error', 'rbd snap ls volumes/x')).toThrow(/unexpected output of rbd snap ls volumes\/x: not JSON/);
    expect(() => parseSnapList('{"id":1}')).toThrow(/not a JSON array/);
    expect(() => parseSnapList('[{"id":"4","name":"s","size":1}]')).toThrow(/"id" is not a whole number/);
    expect(() => parseSnapList('[{"id":4,"name":"s","size":1,"protected":"maybe"}]')).toThrow(/"protected" is "maybe"/);
    expect(() => parseImageInfo('{"name":"x","size":1}')).toThrow(/"id" is not a string/);
    expect(() => parseDiffExtents('[{"offset":10,"length":1,"exists":"true"},{"offset":0,"length":1,"exists":"true"}]')).toThrow(/out of order/);
  });
});

describe('snapshot names', () => {
  it('vprotect-<point-id> only', () => {
    expect(snapshotName(P1)).toBe(`vprotect-${P1}`);
    expect(pointIdOf(`vprotect-${P1}`)).toBe(P1);
    expect(pointIdOf('vprotect-test')).toBeUndefined();
    expect(pointIdOf(`backup-${P1}`)).toBeUndefined();
    expect(isVprotectSnapshot({ name: `vprotect-${P1}`, namespace: 'user' })).toBe(true);
    expect(isVprotectSnapshot({ name: `vprotect-${P1}`, namespace: 'trash' })).toBe(false);
    expect(isVprotectSnapshot({ name: 'vprotect-by-hand', namespace: 'user' })).toBe(false);
  });
});

describe('full or incremental (anchor matching)', () => {
  const info: RbdImageInfo = { name: 'img', id: 'abc123', size: 64 << 20, objectSize: 4 << 20, features: [] };
  const anchor: RbdAnchor = { kind: 'rbd-snapshot', cluster: 'lab', fsid: 'f-1', pool: 'volumes', image: 'img', imageId: 'abc123', snapName: `vprotect-${P1}`, snapId: 7, size: 64 << 20 };
  const base = {
    requested: 'auto' as const,
    previous: { pointId: P1, size: 64 << 20, sourceAnchor: anchor as unknown },
    cluster: 'lab',
    fsid: 'f-1',
    pool: 'volumes',
    image: 'img',
    info,
    snapshots: [snap(5, 'cinder-snap'), snap(7, `vprotect-${P1}`)],
  };

  it('incremental when the snapshot, image id, snapshot id and size all match', () => {
    const d = decideLevel(base);
    expect(d.level).toBe('incremental');
    expect(d.level === 'incremental' && d.from.name).toBe(`vprotect-${P1}`);
  });

  it.each([
    ['a full was asked', { requested: 'full' as const }, /full backup was asked/],
    ['no previous point', { previous: undefined }, /no previous point/],
    ['another strategy', { previous: { pointId: P1, size: 64 << 20, sourceAnchor: { kind: 'libvirt-checkpoint', name: 'x' } } }, /no RBD snapshot anchor/],
    ['a recreated image with the same name', { info: { ...info, id: 'def456' } }, /re-created \(id def456, was abc123\)/],
    ['the snapshot is gone', { snapshots: [snap(5, 'cinder-snap')] }, /no longer on the image/],
    ['a snapshot re-created under the same name', { snapshots: [snap(9, `vprotect-${P1}`)] }, /re-created \(id 9, was 7\)/],
    ['the snapshot is in the trash namespace', { snapshots: [snap(7, `vprotect-${P1}`, { namespace: 'trash' })] }, /no longer on the image/],
    ['a resized image', { info: { ...info, size: 80 << 20 } }, /resized from 67108864 to 83886080/],
    ['another cluster (fsid)', { fsid: 'f-2' }, /another ceph cluster/],
    ['another image name', { image: 'other' }, /was taken from volumes\/img/],
  ])('full when %s', (_what, over, reason) => {
    const d = decideLevel({ ...base, ...over });
    expect(d.level).toBe('full');
    expect(d.reason).toMatch(reason);
  });

  it('parseAnchor rejects incomplete records', () => {
    expect(parseAnchor(anchor)).toEqual(anchor);
    expect(parseAnchor({ ...anchor, snapId: '7' })).toBeUndefined();
    expect(parseAnchor(null)).toBeUndefined();
    expect(parseAnchor({ value: null })).toBeUndefined();
  });
});

describe('rotation after a durable point', () => {
  it('removes older vprotect snapshots (previous anchor, killed runs), keeps newer ones and never touches others', () => {
    const snaps = [snap(3, 'cinder-snap'), snap(4, `vprotect-${P1}`), snap(5, 'vprotect-by-hand'), snap(6, `vprotect-${P2}`), snap(8, `vprotect-${P3}`), snap(9, 'user-after')];
    const plan = planRotation(snaps, { name: `vprotect-${P2}`, id: 6 });
    expect(plan.remove.map((s) => s.name)).toEqual([`vprotect-${P1}`]);
    expect(plan.keep.map((k) => k.snap.name)).toEqual([`vprotect-${P3}`]);
  });

  it('with only the new snapshot there is nothing to do', () => {
    expect(planRotation([snap(6, `vprotect-${P2}`)], { name: `vprotect-${P2}`, id: 6 })).toEqual({ remove: [], keep: [] });
  });
});

describe('cleanup: which vprotect snapshots are leftovers', () => {
  const snaps = [snap(1, 'cinder-snap'), snap(4, `vprotect-${P1}`), snap(6, `vprotect-${P2}`), snap(8, `vprotect-${P3}`)];
  const verdicts = (over: Partial<Parameters<typeof classifyForCleanup>[0]>) =>
    Object.fromEntries(classifyForCleanup({ imageId: 'img1', snapshots: snaps, anchors: [], runningSince: undefined, ...over }).map((v) => [v.snap.name, v.leftover]));

  it('keeps the anchor of the newest point, even when a newer snapshot (killed run) exists', () => {
    expect(verdicts({ anchors: [{ imageId: 'img1', snapName: `vprotect-${P2}` }] })).toEqual({ [`vprotect-${P1}`]: true, [`vprotect-${P2}`]: false, [`vprotect-${P3}`]: true });
  });

  it('an anchor of another image (same name, recreated) does not protect this one', () => {
    expect(verdicts({ anchors: [{ imageId: 'other', snapName: `vprotect-${P2}` }] })[`vprotect-${P2}`]).toBe(true);
  });

  it('keeps snapshots made after a running backup began', () => {
    const anchors = [{ imageId: 'img1', snapName: `vprotect-${P1}` }];
    expect(verdicts({ anchors, runningSince: new Date('2026-11-24T22:30:00Z') })).toEqual({ [`vprotect-${P1}`]: false, [`vprotect-${P2}`]: true, [`vprotect-${P3}`]: false });
  });

  it('keeps the newest when no repository knows the image (it may be another inventory\'s anchor)', () => {
    expect(verdicts({})).toEqual({ [`vprotect-${P1}`]: true, [`vprotect-${P2}`]: true, [`vprotect-${P3}`]: false });
  });
});
