import { describe, expect, it } from 'vitest';
import { DestinationError, UsageError } from '../../../src/errors.js';
import { parseMountInfo, prepareDestination, selectDestination } from '../../../src/repository/destination.js';

const line = (mp: string, fs: string, src: string) => `36 35 0:42 / ${mp} rw,relatime shared:1 - ${fs} ${src} rw,vers=4.2`;
const nfs = { type: 'nfs' as const, server: 'nas1', export: '/backup', mountPoint: '/mnt/vprotect' };

describe('destinations', () => {
  it('parses mountinfo, octal escapes included', () => {
    expect(parseMountInfo(`${line('/mnt/with\\040space', 'nfs4', 'nas1:/backup')}\n`)).toEqual([{ mountPoint: '/mnt/with space', fsType: 'nfs4', source: 'nas1:/backup' }]);
  });

  it('accepts the mounted NFS export', async () => {
    expect(await prepareDestination({ config: nfs }, { mountTable: async () => line('/tmp', 'nfs4', 'nas1:/backup').replace('/tmp', '/mnt/vprotect') })).toBe('/mnt/vprotect');
  });

  it('refuses an unmounted mount point, a local file system there, or another export', async () => {
    await expect(prepareDestination({ name: 'nas', config: nfs }, { mountTable: async () => '' })).rejects.toThrow(/not mounted.*set allowMount|not mounted/);
    await expect(prepareDestination({ config: nfs }, { mountTable: async () => line('/mnt/vprotect', 'ext4', '/dev/vda1') })).rejects.toThrow(DestinationError);
    await expect(prepareDestination({ config: nfs }, { mountTable: async () => line('/mnt/vprotect', 'nfs', 'nas2:/backup') })).rejects.toThrow(/nas2:\/backup mounted, not nas1:\/backup/);
  });

  it('mounts with allowMount through the command runner (argv, no shell), then checks again', async () => {
    let mounted = false;
    const calls: (readonly string[])[] = [];
    const root = await prepareDestination(
      { config: { ...nfs, mountPoint: '/tmp/vprotect-test-mnt', allowMount: true, mountOptions: 'vers=4.2,hard' } },
      {
        mountTable: async () => (mounted ? line('/tmp/vprotect-test-mnt', 'nfs4', 'nas1:/backup') : ''),
        run: async (argv) => {
          calls.push(argv);
          mounted = true;
          return { argv, exitCode: 0, stdout: '', stderr: '' };
        },
      },
    );
    expect(root).toBe('/tmp/vprotect-test-mnt');
    expect(calls).toEqual([['mount', '-t', 'nfs', '-o', 'vers=4.2,hard', 'nas1:/backup', '/tmp/vprotect-test-mnt']]);
  });

  it('selects by name, by path, or the only destination', () => {
    const inv = { destinations: { nas: nfs, local: { type: 'local' as const, path: '/srv/b' } } };
    expect(selectDestination(inv, 'nas', '/')).toEqual({ name: 'nas', config: nfs });
    expect(selectDestination(inv, './repo', '/home/x').config).toEqual({ type: 'local', path: '/home/x/repo' });
    expect(() => selectDestination(inv, undefined, '/')).toThrow(UsageError);
    expect(() => selectDestination(inv, 'nope', '/')).toThrow(/no destination named/);
    expect(selectDestination({ destinations: { only: nfs } }, undefined, '/').name).toBe('only');
  });
});
