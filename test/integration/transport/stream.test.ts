/**
 * The one-way data stream (src/transport/stream) against the lab's sshd and a real qemu-nbd:
 * full and dirty-bitmap reads through it are bit-identical to the image, through both carriers
 * (OpenSSH, ssh2); without the interpreter it falls back to NBD and says why; an abort leaves no
 * helper and no ssh process. The lab's sshd runs on this machine, so the "remote" socket and
 * processes are local ones.
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { InterruptedError } from '../../../src/errors.js';
import type { HypervisorConfig } from '../../../src/inventory/types.js';
import type { Logger } from '../../../src/log.js';
import { dirtyReadContexts, FULL_READ_CONTEXTS, NbdSession, readDirty, readFull } from '../../../src/transport/nbd/index.js';
import { SshConnection, sshTarget } from '../../../src/transport/ssh.js';
import { DataStream, knownStreamFallback, RemoteStream, STREAM_PACING, StreamUnavailableError, SwitchingSource, type StreamCarrier } from '../../../src/transport/stream/index.js';
import { collectExtents, expectSameAsReference } from '../../helpers/extents.js';
import { rejectionOf } from '../../helpers/errors.js';
import { requireLab } from '../../helpers/lab.js';
import { makeQemuDisk, MiB, startQemuNbd, type QemuDisk, type QemuNbdServer } from './qemu-fixture.js';

let hv: HypervisorConfig;
let disk: QemuDisk;
let server: QemuNbdServer;
let scratch: string;
let big: QemuNbdServer;
let conn: SshConnection;
const debug: string[] = [];
const log: Logger = {
  debug: (m, f) => void debug.push(`${m} ${JSON.stringify(f ?? {})}`),
  info() {},
  warn: (m, f) => void debug.push(`WARN ${m} ${JSON.stringify(f ?? {})}`),
  error() {},
};

beforeAll(async () => {
  const ssh = requireLab('hypervisor').ssh!;
  hv = { name: 'hv1', address: ssh.host, port: ssh.port, user: ssh.user, keyFile: ssh.keyFile, hostKey: { knownHostsFile: ssh.knownHostsFile } };
  disk = makeQemuDisk();
  // -B: the bitmap as qemu:dirty-bitmap:b1 (what an incremental reads); --shared: NBD session + helper.
  server = await startQemuNbd(disk.top, join(disk.dir, 'nbd.sock'), ['--shared=8', '-B', disk.bitmap]);
  scratch = mkdtempSync(join(tmpdir(), 'vp-stream-'));
  execFileSync('sh', ['-c', `head -c ${256 * MiB} /dev/urandom > '${scratch}/big.raw' && qemu-img convert -O qcow2 '${scratch}/big.raw' '${scratch}/big.qcow2' && rm '${scratch}/big.raw'`]);
  big = await startQemuNbd(join(scratch, 'big.qcow2'), join(scratch, 'big.sock'), ['--shared=8']);
  conn = await SshConnection.connect(sshTarget(hv, {}), { connectTimeoutMs: 15_000, log });
}, 120_000);

afterAll(async () => {
  await conn?.close();
  await server?.stop();
  await big?.stop();
  disk?.cleanup();
  if (scratch) rmSync(scratch, { recursive: true, force: true });
});

/** The NBD session (ssh2, block status) plus a stream started at once, as readDisk sets them up. */
type Streamed = { streams: DataStream; session: NbdSession; source: SwitchingSource };

/**
 * Runs `body` with an NBD session on `socket` whose reads switch to a data stream, and closes
 * both afterwards whatever happened (an aborted session is destroyed).
 */
async function withStreamed<T>(socket: string, contexts: readonly string[], opts: { carrier?: StreamCarrier; interpreter?: string; signal?: AbortSignal; waitForStream?: boolean }, body: (s: Streamed) => Promise<T>): Promise<T> {
  const streams = new DataStream(conn, {
    socket,
    exportName: '',
    log,
    ...(opts.carrier ? { carrier: opts.carrier } : {}),
    ...(opts.interpreter ? { interpreter: opts.interpreter } : {}),
    ...(opts.signal ? { signal: opts.signal } : {}),
  });
  const session = await NbdSession.open(conn.nbdDialer({ path: socket }, { dataChannel: 'ssh2' }), { exportName: '', metaContexts: contexts });
  // waitForStream: a small disk would be read through NBD entirely while ssh starts.
  const ready = opts.waitForStream ? await streams.use(session.info.size) : undefined;
  if (opts.waitForStream) expect(ready).toBeDefined();
  const source = new SwitchingSource(session, () => (opts.waitForStream ? Promise.resolve(ready) : streams.use(session.info.size)), { startAfterBytes: 0, firstBytesWhileStarting: 1 * MiB, pacing: STREAM_PACING });
  source.start();
  try {
    return await body({ streams, session, source });
  } finally {
    await source.close();
    await session.close().catch(() => session.destroy());
  }
}

/** Processes (local ssh, remote sh/python3 — both on this machine) whose command line names `socket`. */
function processesFor(socket: string): string[] {
  return execFileSync('ps', ['-eo', 'pid=,args='], { encoding: 'utf8' })
    .split('\n')
    .filter((l) => l.includes(socket) && l.includes('vprotect-stream'));
}

async function waitFor(cond: () => boolean, ms = 8000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe.each(['openssh', 'ssh2'] as const)('data stream through %s', (carrier) => {
  it('full read: bit-identical to the image, the data through the stream', async () => {
    // The disk holds ~5 MiB: wait for the stream, or NBD would carry it all while ssh starts.
    await withStreamed(server.socket, FULL_READ_CONTEXTS, { carrier, waitForStream: true }, async ({ streams, source }) => {
      const extents = await collectExtents(readFull(source, { reuseBuffers: false }));
      await source.finish();
      expectSameAsReference(extents, disk.reference);
      expect(streams.fallbackReason).toBeUndefined();
      expect(source.switched).toBe(true);
      expect(source.served.nextBytes).toBeGreaterThan(0);
      expect(streams.description).toContain(`(stream, ${carrier})`);
    });
    await waitFor(() => processesFor(server.socket).length === 0);
  }, 60_000);

  it('incremental (dirty bitmap) read: the dirty ranges, bit-identical, with reused buffers', async () => {
    await withStreamed(server.socket, dirtyReadContexts(disk.bitmap), { carrier }, async ({ source }) => {
      // reuseBuffers: each extent's bytes are checked before the next is asked for (the contract).
      let covered = 0;
      for await (const e of readDirty(source, disk.bitmap, { reuseBuffers: true })) {
        const want = disk.reference.subarray(e.offset, e.offset + e.length);
        expect(e.data ? e.data.equals(want) : want.equals(Buffer.alloc(e.length))).toBe(true);
        covered += e.length;
      }
      await source.finish();
      // 64 KiB at 8 MiB, 1 MiB at 32.5 MiB (zero), 128 KiB at 60 MiB: the bitmap's clusters.
      expect(covered).toBe(64 * 1024 + MiB + 128 * 1024);
    });
  }, 60_000);
});

it('256 MiB through the stream equals the image (many frames, reused buffers)', async () => {
  execFileSync('qemu-img', ['convert', '-O', 'raw', join(scratch, 'big.qcow2'), join(scratch, 'big.raw')]);
  const reference = readFileSync(join(scratch, 'big.raw'));
  rmSync(join(scratch, 'big.raw'));
  await withStreamed(big.socket, FULL_READ_CONTEXTS, {}, async ({ source }) => {
    let end = 0;
    for await (const e of readFull(source, { reuseBuffers: true })) {
      expect(e.offset).toBe(end);
      const want = reference.subarray(e.offset, e.offset + e.length);
      if (e.data ? !e.data.equals(want) : !want.equals(Buffer.alloc(e.length))) throw new Error(`extent ${e.offset}+${e.length} differs from the image`);
      end += e.length;
    }
    expect(end).toBe(reference.length);
    await source.finish();
    expect(source.served.nextBytes).toBeGreaterThan(200 * MiB);
  });
}, 120_000);

it('without the interpreter on the host: reads fall back to NBD, bit-identical, and say why', async () => {
  debug.length = 0;
  await withStreamed(server.socket, FULL_READ_CONTEXTS, { interpreter: 'python3-not-on-this-host' }, async ({ streams, source }) => {
    const extents = await collectExtents(readFull(source));
    await source.finish();
    expectSameAsReference(extents, disk.reference);
    expect(source.switched).toBe(false);
    expect(source.served.nextBytes).toBe(0);
    expect(streams.fallbackReason).toBe('python3-not-on-this-host is not installed on hv1: the one-way data stream needs it');
    expect(debug.some((l) => l.startsWith('data stream unavailable, reading through NBD') && l.includes('no-interpreter'))).toBe(true);
    expect(debug.some((l) => l.startsWith('WARN'))).toBe(false);
    // Remembered for this connection and interpreter: further disks do not start ssh again.
    expect(knownStreamFallback(conn, 'python3-not-on-this-host')).toBe(streams.fallbackReason);
    expect(knownStreamFallback(conn)).toBeUndefined();
  });
  await waitFor(() => processesFor(server.socket).length === 0);
}, 60_000);

it('a required stream (dataChannel: stream) that cannot start is an error, not a fallback', async () => {
  const streams = new DataStream(conn, { socket: server.socket, exportName: '', log, interpreter: 'python3-not-here-either', required: true });
  const err = await rejectionOf(streams.use(disk.reference.length));
  expect(err).toBeInstanceOf(StreamUnavailableError);
  expect((err as StreamUnavailableError).reason).toBe('no-interpreter');
  expect(err.message).toBe('python3-not-here-either is not installed on hv1: the one-way data stream needs it');
  expect(streams.fallbackReason).toBeUndefined();
  await waitFor(() => processesFor(server.socket).length === 0);
}, 60_000);

it('a carrier that cannot be set up (no private directory for known_hosts) is start-failed: NBD carries the data, with a warning', async () => {
  debug.length = 0;
  // os.tmpdir() follows TMPDIR: mkdtemp of the OpenSSH carrier's private directory fails.
  const saved = process.env['TMPDIR'];
  process.env['TMPDIR'] = join(scratch, 'no-such-dir');
  let streams: DataStream;
  try {
    streams = new DataStream(conn, { socket: server.socket, exportName: '', log, carrier: 'openssh' });
    expect(await streams.use(disk.reference.length)).toBeUndefined();
  } finally {
    if (saved === undefined) delete process.env['TMPDIR'];
    else process.env['TMPDIR'] = saved;
  }
  expect(streams.fallbackReason).toMatch(/\(stream, openssh\): could not start: .*ENOENT/);
  expect(debug.some((l) => l.startsWith('WARN data stream unavailable, reading through NBD') && l.includes('start-failed'))).toBe(true);
});

/**
 * An executable standing in for the OpenSSH client (opensshBinary): python3 `body` after a
 * prelude that sends frames on stdout (our socket). It ignores ssh's arguments.
 */
function fakeSsh(name: string, body: string): string {
  const file = join(scratch, name);
  const prelude = ['#!/usr/bin/env python3', 'import os, sys, struct, time, signal', "H = struct.Struct('>IIQQ')", 'def frame(t, a, b): os.write(1, H.pack(0x56505331, t, a, b))'];
  writeFileSync(file, [...prelude, ...body.split('\n')].join('\n') + '\n');
  chmodSync(file, 0o755);
  return file;
}

it('the END frame still in flight when ssh has exited is waited for (OpenSSH: until our socket ends)', async () => {
  // ssh exits at once after the END request; a process it left holding stdout sends END 1.5 s
  // later (as bytes still in the socket would arrive after the exit is reported).
  const ssh = fakeSsh('ssh-late-end', [
    'frame(1, 4096, 0)',
    'buf = b""',
    'while not (len(buf) >= 16 and struct.unpack(">I", buf[-16:-12])[0] == 2):',
    '    d = os.read(0, 65536)',
    '    if not d: sys.exit(1)',
    '    buf += d',
    'if os.fork() == 0:',
    '    null = os.open("/dev/null", os.O_RDWR)',
    '    os.dup2(null, 0); os.dup2(null, 2)',
    '    time.sleep(1.5)',
    '    frame(3, 0, 0)',
    '    os._exit(0)',
    'os._exit(0)',
  ].join('\n'));
  const stream = RemoteStream.start(conn, { socket: '/nonexistent.sock', exportName: '', carrier: 'openssh', opensshBinary: ssh });
  try {
    expect(await stream.ready).toBe(4096);
    await stream.finish();
  } finally {
    await stream.close();
  }
}, 30_000);

it('once the reader failed, nothing more lands in the buffer of a rejected read (the socket is dropped)', async () => {
  // The hello, a data frame's header and its first 100 bytes (0x11); 300 ms later more bytes
  // (0x22). SIGTERM is ignored, so ssh keeps writing until the SIGKILL 2 s after close().
  const ssh = fakeSsh('ssh-late-bytes', [
    'signal.signal(signal.SIGTERM, signal.SIG_IGN)',
    'frame(1, 1 << 20, 0)',
    'os.read(0, 16)',
    'frame(2, 0, 65536)',
    'os.write(1, b"\\x11" * 100)',
    'time.sleep(0.3)',
    'os.write(1, b"\\x22" * 1000)',
    'time.sleep(10)',
  ].join('\n'));
  const stream = RemoteStream.start(conn, { socket: '/nonexistent.sock', exportName: '', carrier: 'openssh', opensshBinary: ssh });
  const into = Buffer.alloc(65536, 0xee);
  try {
    expect(await stream.ready).toBe(1 << 20);
    const read = stream.read(0, 65536, into);
    await waitFor(() => into[99] === 0x11, 5000);
    const closing = stream.close();
    await expect(read).rejects.toThrow('was closed');
    await closing;
  } finally {
    await stream.close();
  }
  expect(into.subarray(0, 100).every((b) => b === 0x11)).toBe(true);
  expect(into.includes(0x22)).toBe(false);
}, 30_000);

it('an OpenSSH exit status of 255 is told as ssh failing, not the helper', async () => {
  const ssh = fakeSsh('ssh-255', 'sys.stderr.write("ssh: connect to host hv1 port 22: Connection refused\\n")\nsys.exit(255)');
  const stream = RemoteStream.start(conn, { socket: '/nonexistent.sock', exportName: '', carrier: 'openssh', opensshBinary: ssh });
  try {
    const err = await rejectionOf(stream.ready);
    expect(err).toBeInstanceOf(StreamUnavailableError);
    expect(err.message).toMatch(/\(stream, openssh\): ssh failed \(255\): ssh: connect to host hv1 port 22: Connection refused$/);
  } finally {
    await stream.close();
  }
}, 30_000);

it.each(['openssh', 'ssh2'] as const)('abort in the middle of a read (Ctrl-C) through %s leaves no helper and no ssh process', async (carrier) => {
  const ac = new AbortController();
  let read = 0;
  const err = await rejectionOf(
    withStreamed(big.socket, FULL_READ_CONTEXTS, { carrier, signal: ac.signal }, async ({ source }) => {
      for await (const e of readFull(source, { reuseBuffers: true, signal: ac.signal })) {
        read += e.length;
        if (read >= 32 * MiB && source.switched) {
          // Both ends are running now: the helper on the "hypervisor" and (openssh) the local ssh.
          expect(processesFor(big.socket).length).toBeGreaterThan(0);
          ac.abort(new InterruptedError());
        }
      }
    }),
  );
  expect(err).toBeInstanceOf(InterruptedError);
  expect(read).toBeLessThan(256 * MiB);
  await waitFor(() => processesFor(big.socket).length === 0).catch(() => {
    throw new Error(`left running: ${processesFor(big.socket).map((l) => l.slice(0, 120)).join(' | ')}`);
  });
}, 60_000);
