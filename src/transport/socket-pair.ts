/**
 * A child process's stdout as a socket that Node reads with `onread` (each read lands where the
 * caller says: reused buffers, no per-read garbage), instead of a pipe read 64 KiB at a time
 * into fresh buffers. Used for `rbd export`/`export-diff` (strategies/ceph-rbd/socket-stream.ts)
 * and the OpenSSH carrier of the one-way data stream (src/transport/stream/remote-stream.ts).
 *
 * Why loopback TCP and not a unix socket: ssh writes its stdout with non-blocking writes and
 * waits for room between them; a unix socket's ~208 KiB buffer made it wait (and re-window the
 * channel) so often that `ssh cat` into a reading process took 6.3–8.3 s for 256 MiB where the
 * same into /dev/null took 2.6–3.7 s (load 12). Loopback TCP grows its buffers (autotuning, up to
 * MiBs): 3.5–3.9 s, as fast as /dev/null. rbd, which writes blocking, costs the same CPU either
 * way (490 MiB export-diff: 1.05–1.17 s unix, 0.98–1.05 s TCP).
 *
 * For rbd this socket costs nothing measurable, so nothing else is used: rbd writes a diff record
 * as one writev of its header and one of its data (up to 4 MiB; 152 writevs for a 281 MB diff),
 * and its CPU writing into this socket equals its CPU writing into /dev/null (medians 1.02 vs
 * 1.01 s over 12 and 8 runs; into a new file 1.07 s: the page cache). Measured and not better
 * (6 rounds each): a unix socket (0.99 s for rbd, 280 KiB reads), a FIFO (1.07 s, 64 KiB reads,
 * 3× rbd's context switches), TCP_NODELAY on rbd's end (no gain in 5 pairs).
 *
 * Only the connection whose far end is our own socket is accepted (its port is checked), so
 * another local user connecting to the port in between receives nothing and is refused; the
 * listener closes as soon as the pair exists.
 */
import { createServer, connect, type OnReadOpts, type Server, type Socket } from 'node:net';
import { UnavailableError } from '../errors.js';

/**
 * `theirs` is to become the child's stdout (the caller destroys its own copy once spawned);
 * `ours` reads it through `onread`. `prepare` runs on `ours` right after it is created, before
 * any event can fire (error and end handlers belong there).
 */
export async function stdoutSocketPair(onread: OnReadOpts, prepare: (ours: Socket) => void): Promise<{ ours: Socket; theirs: Socket }> {
  const server: Server = createServer();
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => resolve());
    });
    const port = (server.address() as { port: number }).port;
    const accepted: Socket[] = [];
    let wake: (() => void) | undefined;
    server.on('connection', (s: Socket) => {
      accepted.push(s);
      wake?.();
    });
    const ours = connect({ host: '127.0.0.1', port, onread });
    prepare(ours);
    await new Promise<void>((resolve, reject) => {
      ours.once('connect', resolve);
      ours.once('error', reject);
    });
    const deadline = Date.now() + 5000;
    for (;;) {
      let mine: Socket | undefined;
      for (const s of accepted.splice(0)) {
        if (!mine && s.remotePort === ours.localPort && s.remoteAddress === ours.localAddress) mine = s;
        else s.destroy();
      }
      if (mine) return { ours, theirs: mine };
      if (Date.now() > deadline) {
        ours.destroy();
        throw new UnavailableError('the local end of a command output socket was not accepted within 5 s');
      }
      await new Promise<void>((resolve) => {
        wake = resolve;
        setTimeout(resolve, 50);
      });
    }
  } finally {
    server.close();
  }
}
