/**
 * The remote helper (python3, helper.ts) run on this machine against a scripted NBD server:
 * replies out of order come out in request order, a server error becomes an error record, a
 * missing interpreter is told apart (exit 127), and a closed stdin ends it at once.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import type net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { encodeRequest, FrameReader, RequestType } from '../../../src/transport/stream/frames.js';
import { helperArgv, NO_INTERPRETER } from '../../../src/transport/stream/helper.js';
import { FakeNbdServer, simpleReply, type Request } from './fake-nbd-server.js';

const disk = randomBytes(4 * 1024 * 1024);
let server: FakeNbdServer | undefined;
afterEach(async () => {
  await server?.stop();
  server = undefined;
});

function runHelper(socket: string, opts: { depth?: number; interpreter?: string } = {}) {
  const [file, ...args] = helperArgv({ socket, exportName: 'vda', depth: opts.depth ?? 4, ...(opts.interpreter ? { interpreter: opts.interpreter } : {}) });
  const child = spawn(file!, args, { stdio: ['pipe', 'pipe', 'pipe'] });
  const reader = new FrameReader('local helper');
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => reader.feed(d));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
  return {
    reader,
    child,
    exited,
    stderr: () => stderr,
    read(offset: number, length: number) {
      const p = reader.expect(offset, length);
      child.stdin.write(encodeRequest(RequestType.read, offset, length));
      return p;
    },
    end() {
      reader.expectEnd();
      child.stdin.end(encodeRequest(RequestType.end, 0, 0));
    },
  };
}

/** Answers READs with simple replies, holding each group of `group` and answering it backwards. */
function outOfOrder(group: number) {
  const held: Request[] = [];
  return (req: Request, sock: net.Socket) => {
    if (req.type !== 0) return;
    held.push(req);
    if (held.length < group) return;
    for (const r of held.splice(0).reverse()) sock.write(Buffer.concat([simpleReply(r, 0), disk.subarray(r.offset, r.offset + r.length)]));
  };
}

describe('stream helper (python3) against a scripted NBD server', () => {
  it('answers in request order although the server replied out of order, then ends with a trailer', async () => {
    server = await FakeNbdServer.start({ disk, onRequest: outOfOrder(4) });
    const h = runHelper(server.path, { depth: 4 });
    expect(await h.reader.hello).toBe(disk.length);
    const ranges = Array.from({ length: 16 }, (_, i) => [i * 256 * 1024 + (i % 3) * 512, 200 * 1024 + i] as const);
    const reads = ranges.map(([o, l]) => h.read(o, l));
    h.end();
    for (let i = 0; i < ranges.length; i++) {
      const [o, l] = ranges[i]!;
      expect((await reads[i]!).equals(disk.subarray(o, o + l))).toBe(true);
    }
    expect(await h.reader.ended).toEqual({ frames: 16, bytes: ranges.reduce((n, [, l]) => n + l, 0) });
    expect(await h.exited).toBe(0);
    // It never had more than `depth` reads at the server.
    expect(server.requests.filter((r) => r.type === 0)).toHaveLength(16);
  }, 20_000);

  it('an NBD read error becomes an error record with the errno text, exit status 2', async () => {
    server = await FakeNbdServer.start({
      disk,
      onRequest: (req, sock) => {
        if (req.type !== 0) return;
        if (req.offset >= 1024 * 1024) sock.write(simpleReply(req, 5));
        else sock.write(Buffer.concat([simpleReply(req, 0), disk.subarray(req.offset, req.offset + req.length)]));
      },
    });
    const h = runHelper(server.path, { depth: 1 });
    const first = h.read(0, 65536);
    const second = h.read(1024 * 1024, 65536);
    expect((await first).equals(disk.subarray(0, 65536))).toBe(true);
    await expect(second).rejects.toThrow('data stream from local helper failed: NBD READ of 65536 bytes at offset 1048576 failed: Input/output error');
    expect(await h.exited).toBe(2);
  }, 20_000);

  it('a socket that is not there: an error record before the hello', async () => {
    const h = runHelper('/nonexistent/vprotect.sock');
    await expect(h.reader.hello).rejects.toThrow(/cannot connect to the NBD socket \/nonexistent\/vprotect.sock: No such file or directory/);
    expect(await h.exited).toBe(2);
  }, 20_000);

  it('a missing interpreter exits 127 with the marker the fallback looks for', async () => {
    const h = runHelper('/nonexistent/vprotect.sock', { interpreter: 'python3-not-installed-here' });
    expect(await h.exited).toBe(127);
    expect(NO_INTERPRETER.exec(h.stderr())?.[1]).toBe('python3-not-installed-here');
  }, 20_000);

  it('stdin closed without the end request (vprotect gone): the helper exits at once', async () => {
    server = await FakeNbdServer.start({ disk, onRequest: outOfOrder(1) });
    const h = runHelper(server.path);
    await h.reader.hello;
    h.child.stdin.end();
    expect(await h.exited).toBe(1);
  }, 20_000);

  it('a write that fails in the middle of a data frame is followed by nothing (no error record read as data)', async () => {
    server = await FakeNbdServer.start({ disk, onRequest: outOfOrder(1) });
    // The helper as helperArgv runs it, with os.writev replaced: the second write (the first data
    // frame; the hello is the first) puts out its header and 1000 bytes, then fails with EIO.
    const prelude = [
      'import os, sys',
      '_writev = os.writev',
      'calls = [0]',
      'def writev(fd, parts):',
      '    calls[0] += 1',
      '    if calls[0] == 2:',
      "        os.write(fd, b''.join(bytes(p) for p in parts)[:24 + 1000])",
      "        raise OSError(5, 'Input/output error')",
      '    return _writev(fd, parts)',
      'os.writev = writev',
      'script = sys.argv[1]',
      "sys.argv = ['-c'] + sys.argv[2:]",
      "exec(compile(script, '<helper>', 'exec'), {'__name__': '__main__'})",
    ].join('\n');
    const [, , , script, , ...args] = helperArgv({ socket: server.path, exportName: 'vda', depth: 1 });
    const child = spawn('python3', ['-c', prelude, script!, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
    const chunks: Buffer[] = [];
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => chunks.push(d));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
    child.stdin.write(encodeRequest(RequestType.read, 0, 65536));
    expect(await exited).toBe(2);
    expect(stderr).toContain('vprotect-stream: OSError: [Errno 5] Input/output error');
    // The hello, then exactly the partial frame: no error record after it.
    const out = Buffer.concat(chunks);
    expect(out.length).toBe(24 + 24 + 1000);
    const reader = new FrameReader('local helper');
    const read = reader.expect(0, 65536);
    reader.feed(out);
    reader.close();
    await expect(read).rejects.toThrow('the stream ended in the middle of a frame with 1 read(s) outstanding');
  }, 20_000);

  it('a request beyond the export is refused with an error record', async () => {
    server = await FakeNbdServer.start({ disk, onRequest: outOfOrder(1) });
    const h = runHelper(server.path);
    await expect(h.read(disk.length - 10, 20)).rejects.toThrow(`bad request from vprotect (type 1, 20 bytes at ${disk.length - 10})`);
    expect(await h.exited).toBe(2);
  }, 20_000);
});
