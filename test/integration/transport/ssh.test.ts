/**
 * The SSH transport against the lab's sshd (127.0.0.1:2222): host-key pinning, auth, exec
 * quoting with hostile argv, bulk streaming, and NBD through forwarded channels — qemu-nbd
 * and a real libvirt pull-backup job — compared byte for byte.
 */
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AuthError, ConfigError, UnavailableError } from '../../../src/errors.js';
import type { HypervisorConfig } from '../../../src/inventory/types.js';
import { CommandFailedError } from '../../../src/transport/command.js';
import { FULL_READ_CONTEXTS, NbdSession, newCounters, readDirty, readFull, dirtyReadContexts } from '../../../src/transport/nbd/index.js';
import { largeChunks, SshConnection, SshPool, sshTarget } from '../../../src/transport/ssh.js';
import { collectExtents, expectSameAsReference } from '../../helpers/extents.js';
import { rejectionOf } from '../../helpers/errors.js';
import { labDomain, requireLab, type Lab, type LabSsh } from '../../helpers/lab.js';
import { makeQemuDisk, MiB, startQemuNbd, type QemuDisk, type QemuNbdServer } from './qemu-fixture.js';

let lab: Lab;
let ssh: LabSsh;
let hv: HypervisorConfig;
let scratch: string;
let pool: SshPool;
const env = {};

beforeAll(() => {
  lab = requireLab('hypervisor');
  ssh = lab.ssh!;
  hv = { name: 'hv1', address: ssh.host, port: ssh.port, user: ssh.user, keyFile: ssh.keyFile, hostKey: { knownHostsFile: ssh.knownHostsFile } };
  scratch = mkdtempSync(join(tmpdir(), 'vp-ssh-'));
  pool = new SshPool({ env, connectTimeoutMs: 10_000 });
});

afterAll(async () => {
  await pool?.close();
  if (scratch) rmSync(scratch, { recursive: true, force: true });
});

function hostFingerprint(): string {
  if (ssh.hostKeySha256) return ssh.hostKeySha256;
  const keys = execFileSync('ssh-keygen', ['-lF', `[${ssh.host}]:${ssh.port}`, '-f', ssh.knownHostsFile], { encoding: 'utf8' });
  return /SHA256:\S+/.exec(keys)![0];
}

async function connectError(config: HypervisorConfig): Promise<Error> {
  // A connection that unexpectedly succeeds is closed before the test fails on it.
  return rejectionOf(SshConnection.connect(sshTarget(config, env), { connectTimeoutMs: 10_000 }).then((conn) => conn.close()));
}

describe('SSH connection and host keys', () => {
  it('connects with known_hosts, negotiating aes128-gcm', async () => {
    const conn = await pool.connection(hv);
    expect(conn.negotiated.cipher).toBe('aes128-gcm@openssh.com');
    expect((await conn.run(['echo', 'hello'])).stdout).toBe('hello\n');
    // The pool shares one connection per host.
    expect(await pool.connection(hv)).toBe(conn);
  });

  it('connects with a pinned SHA256 fingerprint', async () => {
    const conn = await SshConnection.connect(sshTarget({ ...hv, hostKey: { fingerprint: hostFingerprint() } }, env));
    expect((await conn.run(['true'])).code).toBe(0);
    await conn.close();
  });

  it('refuses a wrong fingerprint with both fingerprints in the error', async () => {
    const wrong = `SHA256:${createHash('sha256').update('not the key').digest('base64').replace(/=+$/, '')}`;
    const err = await connectError({ ...hv, hostKey: { fingerprint: wrong } });
    expect(err).toBeInstanceOf(AuthError);
    expect(err.message).toContain(wrong);
    expect(err.message).toContain(hostFingerprint());
    expect(err.message).toMatch(/does not match the pinned fingerprint/);
  });

  it('refuses a host that is not in known_hosts', async () => {
    const kh = join(scratch, 'kh-unknown');
    writeFileSync(kh, readFileSync(ssh.knownHostsFile, 'utf8').replace(/\[127\.0\.0\.1\]:2222|127\.0\.0\.1|hv1/g, 'some-other-host'));
    const err = await connectError({ ...hv, hostKey: { knownHostsFile: kh } });
    expect(err).toBeInstanceOf(AuthError);
    expect(err.message).toMatch(/is not in .*kh-unknown/);
  });

  it('refuses a changed host key', async () => {
    const kh = join(scratch, 'kh-changed');
    const other = join(scratch, 'otherkey');
    execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', other]);
    const pub = readFileSync(`${other}.pub`, 'utf8').split(' ').slice(0, 2).join(' ');
    writeFileSync(kh, `[${ssh.host}]:${ssh.port} ${pub}\n`);
    const err = await connectError({ ...hv, hostKey: { knownHostsFile: kh } });
    expect(err).toBeInstanceOf(AuthError);
    expect(err.message).toMatch(/HOST KEY CHANGED/);
  });

  it('refuses a key the host does not authorize', async () => {
    const key = join(scratch, 'stranger');
    execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', key]);
    const err = await connectError({ ...hv, keyFile: key });
    expect(err).toBeInstanceOf(AuthError);
    expect(err.message).toMatch(/authentication as root refused \(tried publickey \(.*stranger\)\)/);
  });

  it('explains an encrypted key without passphrase, and uses it with one', async () => {
    const key = join(scratch, 'locked');
    execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', 'sesame', '-f', key]);
    const err = await connectError({ ...hv, keyFile: key });
    expect(err).toBeInstanceOf(ConfigError);
    expect(err.message).toMatch(/cannot use the private key/);
    // With the passphrase it parses, and is then refused by the host (not authorized): auth, not config.
    const err2 = await connectError({ ...hv, keyFile: key, keyPassphrase: 'sesame' });
    expect(err2).toBeInstanceOf(AuthError);
  });

  it('reports a refused port as unavailable', async () => {
    const err = await connectError({ ...hv, port: 1 });
    expect(err).toBeInstanceOf(UnavailableError);
    expect(err.message).toMatch(/connection refused/);
  });

  it('limits concurrent jobs per host', async () => {
    const limited = { ...hv, maxConcurrentJobs: 1 };
    let running = 0;
    let most = 0;
    await Promise.all(
      [1, 2, 3].map(() =>
        pool.withHost(limited, async (conn) => {
          most = Math.max(most, ++running);
          await conn.run(['sleep', '0.2']);
          running--;
        }),
      ),
    );
    expect(most).toBe(1);
  });

  it('detects a dead link by keepalives and fails the running command clearly', async () => {
    // A proxy in front of the lab's sshd that can swallow everything: a link that went silent.
    let blackhole = false;
    const sockets = new Set<net.Socket>();
    const proxy = net.createServer((client) => {
      const upstream = net.connect(ssh.port, ssh.host);
      for (const s of [client, upstream]) {
        sockets.add(s);
        s.on('error', () => {});
      }
      client.on('data', (d: Buffer) => blackhole || upstream.write(d));
      upstream.on('data', (d: Buffer) => blackhole || client.write(d));
      client.on('close', () => upstream.destroy());
      upstream.on('close', () => client.destroy());
    });
    await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', r));
    const port = (proxy.address() as net.AddressInfo).port;
    try {
      const conn = await SshConnection.connect(sshTarget({ ...hv, port, hostKey: { fingerprint: hostFingerprint() } }, env), { keepaliveIntervalMs: 200, keepaliveCountMax: 2 });
      const running = conn.exec(['sleep', '5']);
      running.catch(() => {});
      await new Promise((r) => setTimeout(r, 300));
      blackhole = true;
      const t0 = Date.now();
      await expect(running).rejects.toThrow(/lost: no answer to keepalives/);
      expect(Date.now() - t0).toBeLessThan(5000);
      expect(conn.alive).toBe(false);
      await expect(conn.exec(['true'])).rejects.toBeInstanceOf(UnavailableError);
    } finally {
      for (const s of sockets) s.destroy();
      await new Promise((r) => proxy.close(r));
    }
  });

  it('reconnects after the connection was closed', async () => {
    const first = await pool.connection(hv);
    await first.close();
    expect(first.alive).toBe(false);
    const second = await pool.connection(hv);
    expect(second).not.toBe(first);
    expect((await second.run(['echo', 'again'])).stdout).toBe('again\n');
  });
});

describe('SSH exec', () => {
  const canary = () => join(scratch, 'pwned');
  const hostile = () => [
    '',
    ' ',
    "it's",
    '"double"',
    '\\',
    `$(touch ${canary()})`,
    `\`touch ${canary()}\``,
    `; touch ${canary()}`,
    `&& touch ${canary()} ||`,
    `| touch ${canary()}`,
    `\ntouch ${canary()}\n`,
    `'; touch ${canary()}; '`,
    '$HOME ${PATH} $((6*7))',
    '*',
    '~',
    '-n',
    '!!',
    `> ${canary()}`,
    'ünïcödé ✓',
    '\t\r\u0001',
  ];

  it('passes hostile argv through the remote shell unchanged and runs none of it', async () => {
    const conn = await pool.connection(hv);
    const args = hostile();
    const r = await conn.run(['printf', '%s\\0', ...args]);
    expect(r.stdout.split('\0').slice(0, -1)).toEqual(args);
    const exists = await conn.exec(['test', '-e', canary()]);
    expect(exists.code).toBe(1);
  });

  it('returns exit status and stderr; run() turns failures into errors with stderr', async () => {
    const conn = await pool.connection(hv);
    const r = await conn.exec(['sh', '-c', 'echo out; echo "it broke" >&2; exit 3']);
    expect(r).toMatchObject({ code: 3, stdout: 'out\n', stderr: 'it broke\n' });
    const err = await conn.run(['sh', '-c', 'echo "virsh: domain not found" >&2; exit 1']).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CommandFailedError);
    expect((err as Error).message).toMatch(/on hv1 failed with exit status 1: virsh: domain not found/);
  });

  it('feeds stdin', async () => {
    const conn = await pool.connection(hv);
    const input = randomBytes(300_000).toString('base64');
    const r = await conn.run(['sha256sum'], { stdin: input });
    expect(r.stdout.split(' ')[0]).toBe(createHash('sha256').update(input).digest('hex'));
  });

  it('stops a command at its timeout or abort, remote process included', async () => {
    const conn = await pool.connection(hv);
    const t0 = Date.now();
    const marker = `${30 + Math.random()}`; // a unique argument to find the process by
    await expect(conn.exec(['sleep', marker], { timeoutMs: 500 })).rejects.toThrow(/did not finish within 500 ms/);
    expect(Date.now() - t0).toBeLessThan(5000);
    // The remote process is gone too (sshd ignores signal requests; the pid wrapper kills it).
    await new Promise((r) => setTimeout(r, 300));
    expect((await conn.exec(['pgrep', '-f', `sleep ${marker}`])).code).toBe(1);
    // An abort does the same, and the connection is still good afterwards.
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 300);
    await expect(conn.exec(['sleep', marker], { signal: ac.signal })).rejects.toThrow(/interrupted/);
    await new Promise((r) => setTimeout(r, 300));
    expect((await conn.exec(['pgrep', '-f', `sleep ${marker}`])).code).toBe(1);
    expect((await conn.run(['echo', 'ok'])).stdout).toBe('ok\n');
  });

  it('streams 64 MiB through exec, intact, in large chunks, with bounded buffering', async () => {
    const file = join(scratch, 'big.bin');
    const data = randomBytes(64 * MiB);
    writeFileSync(file, data);
    const want = createHash('sha256').update(data).digest('hex');
    const conn = await pool.connection(hv);
    const proc = await conn.execStream(['cat', file]);
    // A slow start: the reader waits; SSH's window must stop the sender, not our memory.
    await new Promise((r) => setTimeout(r, 500));
    expect(proc.stdout.readableLength).toBeLessThanOrEqual(4 * MiB);
    const hash = createHash('sha256');
    let bytes = 0;
    let chunks = 0;
    for await (const chunk of largeChunks(proc.stdout as AsyncIterable<Buffer>, 1 * MiB)) {
      hash.update(chunk);
      bytes += chunk.length;
      chunks++;
    }
    expect(bytes).toBe(64 * MiB);
    expect(chunks).toBeLessThanOrEqual(64);
    expect(hash.digest('hex')).toBe(want);
    await expect(proc.done).resolves.toMatchObject({ code: 0 });
    // The local copy, read as a check of the check.
    const local = createHash('sha256');
    for await (const c of createReadStream(file)) local.update(c as Buffer);
    expect(local.digest('hex')).toBe(want);
  });

  it('refuses runaway output in exec and points to execStream', async () => {
    const conn = await pool.connection(hv);
    await expect(conn.exec(['head', '-c', '1000000', '/dev/zero'], { maxOutputBytes: 10_000 })).rejects.toThrow(/use execStream/);
  });
});

describe.each(['auto', 'ssh2'] as const)('NBD through SSH forwarding (data channel %s)', (dataChannel) => {
  let pool: SshPool;
  let disk: QemuDisk;
  let server: QemuNbdServer;
  let tcp: { pid: number; port: number; stop(): Promise<void> } | undefined;

  beforeAll(async () => {
    requireLab('hypervisor');
    // auto: OpenSSH carries the unix-socket data (openssh.test.ts covers it in depth); ssh2: the fallback.
    pool = new SshPool({ env, connectTimeoutMs: 10_000, dataChannel });
    disk = makeQemuDisk();
    // The lab's sshd runs on this machine, so the "remote" socket path is a local one.
    server = await startQemuNbd(disk.top, join(disk.dir, 'nbd.sock'), ['-B', disk.bitmap, '--shared=4']);
  });

  afterAll(async () => {
    await pool?.close();
    await tcp?.stop();
    await server?.stop();
    disk?.cleanup();
  });

  it('reads a qemu-nbd export through a forwarded unix socket, bit-identical', async () => {
    const conn = await pool.connection(hv);
    const session = await NbdSession.open(conn.nbdDialer({ path: server.socket }), { exportName: '', metaContexts: FULL_READ_CONTEXTS });
    expect(session.description).toMatch(/^ssh hv1 → unix:/);
    expect(session.description.endsWith('(openssh)')).toBe(dataChannel === 'auto');
    const counters = newCounters();
    const extents = await collectExtents(readFull(session, { counters }));
    await session.close();
    expectSameAsReference(extents, disk.reference);
    expect(counters.readBytes).toBeLessThan(8 * MiB);
  });

  it('multi-conn over several forwarded channels of one connection, and a dirty read', async () => {
    const conn = await pool.connection(hv);
    const session = await NbdSession.open(conn.nbdDialer({ path: server.socket }), { exportName: '', metaContexts: dirtyReadContexts(disk.bitmap), connections: 3 });
    expect(session.connectionCount).toBe(3);
    expectSameAsReference(await collectExtents(readFull(session, { maxRequestBytes: 256 * 1024 })), disk.reference);
    const dirty = await collectExtents(readDirty(session, disk.bitmap));
    expect(dirty.length).toBeGreaterThan(0);
    for (const e of dirty) {
      const want = disk.reference.subarray(e.offset, e.offset + e.length);
      if (e.data) expect(e.data.equals(want)).toBe(true);
      else expect(want.equals(Buffer.alloc(e.length))).toBe(true);
    }
    await session.close();
  });

  it('reads through TCP forwarding (direct-tcpip) too', async () => {
    const port = 20000 + Math.floor(Math.random() * 20000);
    const child = (await import('node:child_process')).spawn('qemu-nbd', ['--read-only', '--persistent', '-f', 'qcow2', '-b', '127.0.0.1', '-p', String(port), disk.top], { stdio: 'ignore' });
    const exited = new Promise<void>((r) => child.once('exit', () => r()));
    tcp = { pid: child.pid!, port, stop: async () => { if (child.exitCode === null) child.kill('SIGTERM'); await exited; } };
    const conn = await pool.connection(hv);
    let session: NbdSession | undefined;
    for (let i = 0; i < 50 && !session; i++) {
      session = await NbdSession.open(conn.nbdDialer({ host: '127.0.0.1', port }), { exportName: '', metaContexts: FULL_READ_CONTEXTS }).catch(async () => {
        await new Promise((r) => setTimeout(r, 100));
        return undefined;
      });
    }
    expect(session).toBeDefined();
    expectSameAsReference(await collectExtents(readFull(session!)), disk.reference);
    await session!.close();
  });

  it('a missing remote socket is a clear error', async () => {
    const conn = await pool.connection(hv);
    const err = await NbdSession.open(conn.nbdDialer({ path: join(scratch, 'no-such.sock') }), { exportName: '' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UnavailableError);
    expect((err as Error).message).toMatch(/cannot open unix socket .*no-such\.sock on root@127\.0\.0\.1:2222 \(hv1\)/);
  });
});

describe('libvirt pull backup read through SSH', () => {
  it('reads vp-qcow2 from a backup-begin job socket, bit-identical with the disk', async () => {
    const domain = labDomain(lab, 'vp-qcow2');
    const diskPath = domain.disks[0]!.path!;
    const vms = lab.vmsDir!;
    const sock = join(vms, `vp-qcow2.transport-test.${process.pid}.sock`);
    const scratchFile = join(vms, `vp-qcow2.transport-test.${process.pid}.scratch`);
    const conn = await pool.connection(hv);
    // Another test may be running a job on the same domain: wait for it (bounded).
    for (let i = 0; ; i++) {
      const info = await conn.run(['virsh', 'domjobinfo', 'vp-qcow2']);
      if (/Job type:\s+None/.test(info.stdout)) break;
      if (i >= 60) throw new Error(`vp-qcow2 has had a job running for a minute: ${info.stdout}`);
      await new Promise((r) => setTimeout(r, 1000));
    }
    const xml = `<domainbackup mode='pull'><server transport='unix' socket='${sock}'/><disks><disk name='vda' backup='yes' type='file'><scratch file='${scratchFile}'/></disk></disks></domainbackup>`;
    const xmlFile = join(vms, `vp-qcow2.transport-test.${process.pid}.xml`);
    await conn.run(['sh', '-c', 'cat > "$1"', 'sh', xmlFile], { stdin: xml });
    await conn.run(['virsh', 'backup-begin', 'vp-qcow2', xmlFile]);
    try {
      const session = await NbdSession.open(conn.nbdDialer({ path: sock }), { exportName: 'vda', metaContexts: FULL_READ_CONTEXTS });
      const counters = newCounters();
      const extents = await collectExtents(readFull(session, { counters }));
      await session.close();
      // The guest only runs `cli; hlt`: its disk does not change, so the live image is the reference.
      const ref = join(scratch, 'vp-qcow2.raw');
      execFileSync('qemu-img', ['convert', '-U', '-O', 'raw', diskPath, ref]);
      const reference = readFileSync(ref);
      expect(session.info.size).toBe(reference.length);
      expectSameAsReference(extents, reference);
      // Only the pattern's data travelled: boot sector, 8 MiB random, 1 MiB of 'Z'.
      expect(counters.dataBytes).toBeLessThan(16 * MiB);
      expect(counters.dataBytes).toBeGreaterThanOrEqual(9 * MiB);
    } finally {
      await conn.exec(['virsh', 'domjobabort', 'vp-qcow2']);
      await conn.exec(['rm', '-f', xmlFile]);
    }
  });
});
