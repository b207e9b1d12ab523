/** SSH failures that need no real sshd: each must be a clear error of the right class, fast. */
import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { ConfigError, UnavailableError } from '../../../src/errors.js';
import { fingerprintPolicy, SshConnection, type SshTarget } from '../../../src/transport/ssh.js';

const servers: net.Server[] = [];
afterEach(async () => {
  for (const s of servers.splice(0)) await new Promise((r) => s.close(r));
});

async function fakeServer(onConnection: (sock: net.Socket) => void): Promise<number> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((sock) => {
    sockets.add(sock);
    sock.on('error', () => {});
    onConnection(sock);
  });
  servers.push(server);
  server.on('close', () => sockets.forEach((s) => s.destroy()));
  const origClose = server.close.bind(server);
  server.close = ((cb?: (err?: Error) => void) => {
    sockets.forEach((s) => s.destroy());
    return origClose(cb);
  }) as typeof server.close;
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return (server.address() as net.AddressInfo).port;
}

function target(port: number, extra: Partial<SshTarget> = {}): SshTarget {
  return {
    name: 'hv-test',
    host: '127.0.0.1',
    port,
    username: 'root',
    password: 'x',
    hostKey: fingerprintPolicy('SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s', 'hypervisor hv-test'),
    ...extra,
  };
}

describe('SSH connection errors', () => {
  it('a server that never speaks SSH times out', async () => {
    const port = await fakeServer(() => {});
    const t0 = Date.now();
    const err = await SshConnection.connect(target(port), { connectTimeoutMs: 1000 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UnavailableError);
    expect((err as Error).message).toMatch(/root@127\.0\.0\.1:\d+ \(hv-test\): SSH handshake did not finish within 1000 ms/);
    expect(Date.now() - t0).toBeLessThan(5000);
  });

  it('a server that is not SSH fails the handshake', async () => {
    const port = await fakeServer((s) => s.end('HTTP/1.1 400 Bad Request\r\n\r\n'));
    const err = await SshConnection.connect(target(port), { connectTimeoutMs: 5000 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UnavailableError);
    expect((err as Error).message).toMatch(/hv-test\): (SSH handshake failed|the server closed the connection during the SSH handshake)/);
  });

  it('a closed port is refused', async () => {
    const port = await fakeServer(() => {});
    await new Promise((r) => servers.pop()!.close(r));
    const err = await SshConnection.connect(target(port)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UnavailableError);
    expect((err as Error).message).toMatch(/connection refused/);
  });

  it('no credentials at all is a configuration error, before any connection', async () => {
    const err = await SshConnection.connect(target(1, { password: undefined })).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as Error).message).toMatch(/no SSH credentials/);
  });

  it('an abort stops a connection attempt', async () => {
    const port = await fakeServer(() => {});
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 100);
    await expect(SshConnection.connect(target(port), { signal: ac.signal, connectTimeoutMs: 10_000 })).rejects.toThrow(/interrupted/);
  });
});
