/**
 * Netcat mode: the strategy starts an NBD server on the hypervisor (over SSH) on a port it
 * picked from the inventory's range, then reads it over plain TCP. Here the lab's sshd and
 * qemu-nbd run on this machine, so "the hypervisor" is 127.0.0.1.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { HypervisorConfig } from '../../../src/inventory/types.js';
import type { Extent } from '../../../src/repository/extents.js';
import { FULL_READ_CONTEXTS, NbdSession, readFull } from '../../../src/transport/nbd/index.js';
import { SshPool } from '../../../src/transport/ssh.js';
import { listeningPorts, netcatEndpoint, PortAllocator, tcpDialer } from '../../../src/transport/tcp.js';
import { requireLab } from '../../helpers/lab.js';
import { makeQemuDisk, type QemuDisk } from './qemu-fixture.js';

let disk: QemuDisk;
let pool: SshPool;
let hv: HypervisorConfig;

beforeAll(() => {
  const ssh = requireLab('hypervisor').ssh!;
  hv = {
    name: 'hv1',
    address: ssh.host,
    port: ssh.port,
    user: ssh.user,
    keyFile: ssh.keyFile,
    hostKey: { knownHostsFile: ssh.knownHostsFile },
    netcat: { ports: '21800-21899' },
  };
  pool = new SshPool({ env: {} });
  disk = makeQemuDisk();
});

afterAll(async () => {
  await pool?.close();
  disk?.cleanup();
});

describe('netcat mode', () => {
  it('starts qemu-nbd on a free port of the range over SSH and reads it over TCP, bit-identical', async () => {
    const endpoint = netcatEndpoint(hv)!;
    const conn = await pool.connection(hv);
    const busy = await listeningPorts(conn);
    expect(busy.has(hv.port!)).toBe(true); // sshd itself: the listing works
    const ports = new PortAllocator(endpoint.ports);
    const port = ports.take(busy);
    const pidFile = join(disk.dir, 'qemu-nbd.pid');
    // Dial first: the dialer waits for the server to listen.
    const opening = NbdSession.open(tcpDialer(endpoint.address, port, { waitForListenMs: 10_000 }), { exportName: '', metaContexts: FULL_READ_CONTEXTS, connections: 2 });
    await conn.run(['qemu-nbd', '--fork', '--persistent', '--read-only', '--shared=2', '-f', 'qcow2', '-b', endpoint.address, '-p', String(port), `--pid-file=${pidFile}`, disk.top]);
    try {
      const session = await opening;
      expect(session.description).toBe(`tcp:${endpoint.address}:${port}`);
      expect(session.connectionCount).toBe(2);
      const extents: Extent[] = [];
      for await (const e of readFull(session, { maxRequestBytes: 1024 * 1024 })) extents.push(e);
      await session.close();
      let at = 0;
      for (const e of extents) {
        expect(e.offset).toBe(at);
        const want = disk.reference.subarray(e.offset, e.offset + e.length);
        if (e.data) expect(e.data.equals(want)).toBe(true);
        else expect(want.equals(Buffer.alloc(e.length))).toBe(true);
        at += e.length;
      }
      expect(at).toBe(disk.size);
    } finally {
      await conn.exec(['sh', '-c', 'kill "$(cat "$1")"', 'sh', pidFile]);
      ports.release(port);
    }
  });

  it('a port nobody listens on fails clearly after the wait', async () => {
    const t0 = Date.now();
    await expect(NbdSession.open(tcpDialer('127.0.0.1', 21899, { waitForListenMs: 300 }), { exportName: '' })).rejects.toThrow(/cannot connect to tcp:127\.0\.0\.1:21899: connection refused/);
    expect(Date.now() - t0).toBeLessThan(5000);
  });
});
