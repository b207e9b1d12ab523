/**
 * The OpenSSH data channel (ssh -L through /usr/bin/ssh) against the lab's sshd: bytes equal
 * to the source, a wrong host key refused, a killed link failing clearly, the ssh2 fallback,
 * and no ssh process or private directory left behind. The lab's sshd runs on this machine,
 * so the "remote" qemu-nbd socket is a local path.
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AuthError, ConfigError, UnavailableError } from '../../../src/errors.js';
import type { HypervisorConfig } from '../../../src/inventory/types.js';
import type { Logger } from '../../../src/log.js';
import { FULL_READ_CONTEXTS, NbdSession, readFull } from '../../../src/transport/nbd/index.js';
import { OpenSshForward } from '../../../src/transport/ssh/openssh.js';
import { SshConnection, sshTarget } from '../../../src/transport/ssh.js';
import { collectExtents, expectSameAsReference } from '../../helpers/extents.js';
import { rejectionOf } from '../../helpers/errors.js';
import { requireLab, type LabSsh } from '../../helpers/lab.js';
import { makeQemuDisk, MiB, startQemuNbd, type QemuDisk, type QemuNbdServer } from './qemu-fixture.js';

let ssh: LabSsh;
let hv: HypervisorConfig;
let scratch: string;
let disk: QemuDisk;
let server: QemuNbdServer;
let bigImage: string;
let bigServer: QemuNbdServer;
const env = {};

beforeAll(async () => {
  ssh = requireLab('hypervisor').ssh!;
  hv = { name: 'hv1', address: ssh.host, port: ssh.port, user: ssh.user, keyFile: ssh.keyFile, hostKey: { knownHostsFile: ssh.knownHostsFile } };
  scratch = mkdtempSync(join(tmpdir(), 'vp-openssh-'));
  disk = makeQemuDisk();
  server = await startQemuNbd(disk.top, join(disk.dir, 'nbd.sock'), ['--shared=4']);
  // 256 MiB of random data: long enough a read to kill its link in the middle.
  bigImage = join(scratch, 'big.qcow2');
  execFileSync('sh', ['-c', `head -c ${256 * MiB} /dev/urandom > '${scratch}/big.raw' && qemu-img convert -O qcow2 '${scratch}/big.raw' '${bigImage}'`]);
  bigServer = await startQemuNbd(bigImage, join(scratch, 'big.sock'));
});

afterAll(async () => {
  await server?.stop();
  await bigServer?.stop();
  disk?.cleanup();
  if (scratch) rmSync(scratch, { recursive: true, force: true });
});

const warnings: string[] = [];
const log: Logger = {
  debug() {},
  info() {},
  warn: (message, fields) => void warnings.push(`${message} ${JSON.stringify(fields)}`),
  error() {},
};

async function connect(config: HypervisorConfig = hv, options: Parameters<typeof SshConnection.connect>[1] = {}): Promise<SshConnection> {
  return SshConnection.connect(sshTarget(config, env), { connectTimeoutMs: 15_000, log, ...options });
}

/** The ssh processes forwarding to `remote` (found by their -L argument), with their private dirs. */
function forwarders(remote: string): Array<{ pid: number; dir: string }> {
  const out: Array<{ pid: number; dir: string }> = [];
  for (const entry of execFileSync('ps', ['-eo', 'pid=,args='], { encoding: 'utf8' }).split('\n')) {
    const m = /^\s*(\d+)\s+(.*)$/.exec(entry);
    if (!m || !m[2]!.includes(`:${remote} `) || !m[2]!.includes('-L ')) continue;
    const local = / -L (\S+):/.exec(m[2]!)?.[1];
    out.push({ pid: Number(m[1]), dir: local ? join(local, '..') : '' });
  }
  return out;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function waitFor(cond: () => boolean, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('OpenSSH data channel', () => {
  it('reads a qemu-nbd export bit-identical, multi-conn through one ssh process, and leaves nothing behind', async () => {
    const conn = await connect();
    try {
      expect(conn.dataChannel).toEqual({ via: 'openssh' });
      const session = await NbdSession.open(conn.nbdDialer({ path: server.socket }), { exportName: '', metaContexts: FULL_READ_CONTEXTS, connections: 3 });
      expect(session.description).toBe(`ssh hv1 → unix:${server.socket} (openssh)`);
      expect(session.connectionCount).toBe(3);
      const procs = forwarders(server.socket);
      expect(procs).toHaveLength(1);
      const { pid, dir } = procs[0]!;
      expect(existsSync(join(dir, 'fwd.sock'))).toBe(true);
      // The private directory is 0700 and the socket 0600: no other local user can use the tunnel.
      expect(execFileSync('stat', ['-c', '%a', dir, join(dir, 'fwd.sock')], { encoding: 'utf8' }).split('\n').slice(0, 2)).toEqual(['700', '600']);
      // Pinned host key only, nothing from ~/.ssh/config, no agent.
      const args = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
      for (const want of ['-F', 'StrictHostKeyChecking=yes', 'BatchMode=yes', 'IdentityAgent=none', 'ForwardAgent=no', 'ControlMaster=no', 'GlobalKnownHostsFile=/dev/null']) {
        expect(args.some((a) => a === want || a.endsWith(want))).toBe(true);
      }
      expectSameAsReference(await collectExtents(readFull(session, { maxRequestBytes: 256 * 1024 })), disk.reference);
      await session.close();
      await waitFor(() => !alive(pid));
      expect(existsSync(dir)).toBe(false);
      expect(forwarders(server.socket)).toHaveLength(0);
      // A later session through a new dialer starts a new process, and reads the same bytes.
      const again = await NbdSession.open(conn.nbdDialer({ path: server.socket }), { exportName: '', metaContexts: FULL_READ_CONTEXTS });
      expectSameAsReference(await collectExtents(readFull(again)), disk.reference);
      await again.close();
    } finally {
      await conn.close();
    }
    expect(forwarders(server.socket)).toHaveLength(0);
  });

  it('closing the SSH connection stops an idle-but-open data channel', async () => {
    const conn = await connect();
    const session = await NbdSession.open(conn.nbdDialer({ path: server.socket }), { exportName: '', metaContexts: FULL_READ_CONTEXTS });
    const [proc] = forwarders(server.socket);
    expect(proc).toBeDefined();
    await conn.close();
    expect(alive(proc!.pid)).toBe(false);
    expect(existsSync(proc!.dir)).toBe(false);
    session.destroy();
  });

  it('refuses a host key other than the pinned one, with a clear error, and cleans up', async () => {
    const conn = await connect();
    try {
      const other = join(scratch, 'otherhostkey');
      execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', other]);
      const wrongKey = Buffer.from(readFileSync(`${other}.pub`, 'utf8').split(' ')[1]!, 'base64');
      const forward = new OpenSshForward(
        { where: conn.where, name: 'hv1', host: ssh.host, port: ssh.port, username: ssh.user, keyFile: ssh.keyFile, hostKey: wrongKey, ciphers: ['aes128-gcm@openssh.com'] },
        server.socket,
        { startTimeoutMs: 15_000 },
      );
      const err = await rejectionOf(forward.dial());
      expect(err).toBeInstanceOf(AuthError);
      expect(err.message).toMatch(/OpenSSH refused the host key of the data channel: the host did not present the key pinned for it \(SHA256:/);
      expect(forwarders(server.socket)).toHaveLength(0);
      expect(forward.directory).toBeUndefined();
    } finally {
      await conn.close();
    }
  });

  it('a killed ssh process mid-read fails the read clearly (no hang, no wrong byte)', async () => {
    const conn = await connect();
    const reference = readFileSync(join(scratch, 'big.raw'));
    try {
      const session = await NbdSession.open(conn.nbdDialer({ path: bigServer.socket }), { exportName: '', metaContexts: FULL_READ_CONTEXTS });
      const [proc] = forwarders(bigServer.socket);
      let delivered = 0;
      const t0 = Date.now();
      const err = await (async () => {
        for await (const e of readFull(session)) {
          const want = reference.subarray(e.offset, e.offset + e.length);
          expect(e.data ? e.data.equals(want) : want.equals(Buffer.alloc(e.length))).toBe(true);
          delivered += e.length;
          if (delivered >= 16 * MiB && alive(proc!.pid)) process.kill(proc!.pid, 'SIGKILL');
        }
      })().catch((e: unknown) => e as Error);
      expect(err).toBeInstanceOf(UnavailableError);
      expect(err!.message).toMatch(/ssh hv1 → unix:.*big\.sock \(openssh\).*(closed the connection|failed)/);
      expect(delivered).toBeLessThan(256 * MiB);
      expect(Date.now() - t0).toBeLessThan(60_000);
      session.destroy();
      await waitFor(() => !existsSync(proc!.dir));
    } finally {
      await conn.close();
    }
  });

  it('an abort stops the read and the ssh process', async () => {
    const ac = new AbortController();
    const conn = await connect(hv, { signal: ac.signal });
    try {
      const session = await NbdSession.open(conn.nbdDialer({ path: bigServer.socket }), { exportName: '', metaContexts: FULL_READ_CONTEXTS });
      const [proc] = forwarders(bigServer.socket);
      let delivered = 0;
      const err = await (async () => {
        for await (const e of readFull(session, { signal: ac.signal })) {
          delivered += e.length;
          if (delivered >= 8 * MiB) ac.abort();
        }
      })().catch((e: unknown) => e as Error);
      expect(err).toBeInstanceOf(Error);
      expect(err!.message).toMatch(/interrupted|aborted|closed/i);
      session.destroy();
      await waitFor(() => !alive(proc!.pid));
      expect(existsSync(proc!.dir)).toBe(false);
    } finally {
      await conn.close();
    }
  });

  it('a dialer can choose ssh2 on a connection that would use OpenSSH', async () => {
    const conn = await connect();
    try {
      expect(conn.dataChannel).toEqual({ via: 'openssh' });
      const session = await NbdSession.open(conn.nbdDialer({ path: server.socket }, { dataChannel: 'ssh2' }), { exportName: '', metaContexts: FULL_READ_CONTEXTS });
      expect(session.description).toBe(`ssh hv1 → unix:${server.socket}`);
      expect(forwarders(server.socket)).toHaveLength(0);
      expectSameAsReference(await collectExtents(readFull(session)), disk.reference);
      await session.close();
    } finally {
      await conn.close();
    }
  });

  it('a missing remote socket is a clear error naming it', async () => {
    const conn = await connect();
    try {
      const missing = join(scratch, 'no-such.sock');
      const err = await rejectionOf(NbdSession.open(conn.nbdDialer({ path: missing }), { exportName: '' }));
      expect(err).toBeInstanceOf(UnavailableError);
      expect(err.message).toMatch(/cannot open unix socket .*no-such\.sock on root@127\.0\.0\.1:2222 \(hv1\)/);
      await waitFor(() => forwarders(missing).length === 0);
    } finally {
      await conn.close();
    }
  });

  it('falls back to ssh2 when OpenSSH refuses the key file, and refuses when openssh is required', async () => {
    // OpenSSH will not use a private key others can read; ssh2 does not check.
    const key = join(scratch, 'open-perms-key');
    copyFileSync(ssh.keyFile, key);
    chmodSync(key, 0o644);
    const loose = { ...hv, keyFile: key };
    const conn = await connect(loose);
    try {
      warnings.length = 0;
      const session = await NbdSession.open(conn.nbdDialer({ path: server.socket }), { exportName: '', metaContexts: FULL_READ_CONTEXTS });
      expect(session.description).toBe(`ssh hv1 → unix:${server.socket}`);
      expectSameAsReference(await collectExtents(readFull(session)), disk.reference);
      await session.close();
      expect(conn.dataChannel).toMatchObject({ via: 'ssh2', reason: expect.stringMatching(/bad permissions|UNPROTECTED|Permission denied/) });
      expect(warnings.join('\n')).toMatch(/OpenSSH data channel unavailable, using ssh2/);
    } finally {
      await conn.close();
    }
    const strict = await connect(loose, { dataChannel: 'openssh' });
    try {
      await expect(NbdSession.open(strict.nbdDialer({ path: server.socket }), { exportName: '' })).rejects.toThrow(/before the forwarding was ready/);
    } finally {
      await strict.close();
    }
    expect(forwarders(server.socket)).toHaveLength(0);
  });

  it('dataChannel ssh2, a key with a passphrase, a password or no ssh binary mean ssh2; requiring openssh then is a config error', async () => {
    const locked = join(scratch, 'locked');
    execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', 'sesame', '-f', locked]);
    // The lab only authorizes its own key, so check the choice before any auth: a forced ssh2 connection.
    const forced = await connect(hv, { dataChannel: 'ssh2' });
    try {
      expect(forced.dataChannel).toEqual({ via: 'ssh2', reason: 'ssh2 was asked for (dataChannel: ssh2)' });
      const session = await NbdSession.open(forced.nbdDialer({ path: server.socket }), { exportName: '', metaContexts: FULL_READ_CONTEXTS });
      expect(session.description).toBe(`ssh hv1 → unix:${server.socket}`);
      expectSameAsReference(await collectExtents(readFull(session)), disk.reference);
      await session.close();
    } finally {
      await forced.close();
    }
    const { opensshUnusableReason } = await import('../../../src/transport/ssh/openssh.js');
    const target = sshTarget({ ...hv, keyFile: locked, keyPassphrase: 'sesame' }, env);
    expect(opensshUnusableReason(target)).toMatch(/passphrase/);
    expect(opensshUnusableReason({ ...target, keyFile: undefined, privateKey: undefined, passphrase: undefined })).toMatch(/password/);
    expect(opensshUnusableReason(sshTarget(hv, env), join(scratch, 'no-ssh-here'))).toMatch(/not installed/);
    const err = await rejectionOf(connect(hv, { dataChannel: 'openssh', opensshBinary: join(scratch, 'no-ssh-here') }));
    expect(err).toBeInstanceOf(ConfigError);
    expect(err.message).toMatch(/OpenSSH data channel was required but cannot be used: .*no-ssh-here is not installed/);
  });
});
