/**
 * The remote half of the one-way data stream: a small Python program run on the hypervisor
 * (`python3 -c <script>`; python3 is on every OpenStack compute node) that connects to the NBD
 * export LOCALLY (the backup job's or qemu-nbd's unix socket), reads the ranges vprotect sends
 * on its stdin, and writes them to stdout as framed records (frames.ts). NBD's
 * request/response round trips then stay on the hypervisor; the SSH connection carries one
 * stream in one direction, like `ssh host cat`.
 *
 * What it does, and why:
 * - fixed-newstyle handshake with NBD_OPT_GO, simple replies only (no structured replies, no
 *   block status: vprotect asks block status itself, over its own NBD connection);
 * - up to `depth` READs in flight; replies may come in any order and are written to stdout in
 *   the order they were asked for (held in reused buffers meanwhile);
 * - a reply that is next in order is moved from the NBD socket to stdout with splice(2) when
 *   stdout is a pipe (sshd gives one): no copy through Python;
 * - a failure between frames becomes an ERROR frame (and a line on stderr); a failure while a
 *   frame is being written (its header or its bytes, through writev or splice) writes nothing
 *   more: an ERROR record there would be read as the rest of the frame. vprotect sees a short
 *   frame and fails — it never sees a wrong byte as data;
 * - stdin closed without the END request means vprotect is gone: exit at once, quietly.
 * Exit status: 0 done, 1 vprotect went away, 2 failure (reported), 127 no interpreter (launcher).
 */
import { shellJoin } from '../quote.js';

export const HELPER_SCRIPT = String.raw`
import os, sys, socket, struct, select, stat
MAGIC = 0x56505331
HELLO, DATA, END, ERROR = 1, 2, 3, 4
HDR = struct.Struct('>IIQQ')
REQ = struct.Struct('>IIQ')
NBD_REQ = struct.Struct('>IHHQQI')
NBD_REP = struct.Struct('>IIQ')
class Fail(Exception):
    pass
state = {'in_frame': False}
def out(parts, open_frame=False):
    # A frame is in progress until every part is written (a writev can be partial, and fail
    # after); open_frame: its bytes follow separately (splice), so it stays in progress.
    state['in_frame'] = True
    parts = [memoryview(p) for p in parts]
    while parts:
        n = os.writev(1, parts)
        while n:
            if n >= len(parts[0]):
                n -= len(parts[0])
                parts.pop(0)
            else:
                parts[0] = parts[0][n:]
                n = 0
    state['in_frame'] = open_frame
def recv_exact(sock, n):
    buf = bytearray(n)
    fill(sock, memoryview(buf))
    return buf
def fill(sock, mv):
    got = 0
    while got < len(mv):
        k = sock.recv_into(mv[got:])
        if k == 0:
            raise Fail('the NBD server closed the connection')
        got += k
def handshake(sock, name):
    h = recv_exact(sock, 18)
    if h[:8] != b'NBDMAGIC' or h[8:16] != b'IHAVEOPT':
        raise Fail('the socket does not speak the NBD newstyle handshake')
    flags = struct.unpack('>H', h[16:18])[0]
    if not flags & 1:
        raise Fail('the NBD server does not support fixed newstyle negotiation')
    sock.sendall(struct.pack('>I', 1 | (flags & 2)))
    nb = name.encode()
    data = struct.pack('>I', len(nb)) + nb + struct.pack('>H', 0)
    sock.sendall(b'IHAVEOPT' + struct.pack('>II', 7, len(data)) + data)
    size = None
    while True:
        magic, opt, rtype, rlen = struct.unpack('>QIII', recv_exact(sock, 20))
        if magic != 0x3e889045565a9 or rlen > 65536:
            raise Fail('bad NBD option reply')
        payload = bytes(recv_exact(sock, rlen)) if rlen else b''
        if rtype == 1:
            break
        if rtype == 3 and len(payload) >= 12 and payload[:2] == b'\0\0':
            size = struct.unpack('>Q', payload[2:10])[0]
        elif rtype & 0x80000000:
            raise Fail('the NBD server refused export %r (reply %d): %s' % (name, rtype & 0x7fffffff, payload.decode('utf-8', 'replace') or 'no message'))
    if size is None:
        raise Fail('the NBD server did not tell the export size')
    return size
def main():
    path, name, depth = sys.argv[1], sys.argv[2], max(1, int(sys.argv[3]))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as e:
        raise Fail('cannot connect to the NBD socket %s: %s' % (path, e.strerror or e))
    size = handshake(sock, name)
    splice = hasattr(os, 'splice') and stat.S_ISFIFO(os.fstat(1).st_mode)
    if splice:
        try:
            import fcntl
            fcntl.fcntl(1, 1031, 1 << 20)
        except Exception:
            pass
    out([HDR.pack(MAGIC, HELLO, size, 0)])
    inbuf = b''
    wanted = []
    wi = 0
    order = []
    oi = 0
    sent = {}
    done = {}
    free = []
    handle = 0
    frames = 0
    total = 0
    end_seen = False
    hdr = bytearray(16)
    hmv = memoryview(hdr)
    def flush():
        nonlocal oi, frames, total
        while oi < len(order) and order[oi] in done:
            h = order[oi]
            off, ln = sent.pop(h)
            buf, mv = done.pop(h)
            out([HDR.pack(MAGIC, DATA, off, ln), mv])
            free.append(buf)
            oi += 1
            frames += 1
            total += ln
    while True:
        while wi < len(wanted) and len(sent) < depth:
            off, ln = wanted[wi]
            wi += 1
            handle += 1
            sock.sendall(NBD_REQ.pack(0x25609513, 0, 0, handle, off, ln))
            sent[handle] = (off, ln)
            order.append(handle)
        if wi > 4096:
            wanted = wanted[wi:]
            wi = 0
        if oi > 4096:
            order = order[oi:]
            oi = 0
        if end_seen and not sent and wi == len(wanted):
            break
        rl = [sock] if sent else []
        if not end_seen and len(wanted) - wi < 4 * depth:
            rl.append(0)
        r = select.select(rl, [], [])[0]
        if sock in r:
            fill(sock, hmv)
            magic, err, h = NBD_REP.unpack(hdr)
            if magic != 0x67446698:
                raise Fail('unexpected NBD reply (magic 0x%08x)' % magic)
            if h not in sent or h in done:
                raise Fail('NBD reply to a request that was not asked (%d)' % h)
            off, ln = sent[h]
            if err:
                raise Fail('NBD READ of %d bytes at offset %d failed: %s' % (ln, off, os.strerror(err)))
            if splice and order[oi] == h:
                del sent[h]
                oi += 1
                out([HDR.pack(MAGIC, DATA, off, ln)], True)
                left = ln
                while left:
                    k = os.splice(sock.fileno(), 1, left, flags=os.SPLICE_F_MOVE | os.SPLICE_F_MORE)
                    if k == 0:
                        raise Fail('the NBD server closed the connection in a reply')
                    left -= k
                state['in_frame'] = False
                frames += 1
                total += ln
            else:
                buf = free.pop() if free else None
                if buf is None or len(buf) < ln:
                    buf = bytearray(ln)
                mv = memoryview(buf)[:ln]
                fill(sock, mv)
                done[h] = (buf, mv)
            flush()
        if 0 in r:
            data = os.read(0, 65536)
            if not data:
                sys.exit(1)
            inbuf += data
            n = len(inbuf) // 16
            for i in range(n):
                t, ln, off = REQ.unpack_from(inbuf, i * 16)
                if t == 2:
                    end_seen = True
                elif t == 1 and 0 < ln <= 33554432 and off + ln <= size and not end_seen:
                    wanted.append((off, ln))
                else:
                    raise Fail('bad request from vprotect (type %d, %d bytes at %d)' % (t, ln, off))
            inbuf = inbuf[n * 16:]
    out([HDR.pack(MAGIC, END, total, frames)])
    try:
        sock.sendall(NBD_REQ.pack(0x25609513, 0, 2, handle + 1, 0, 0))
    except OSError:
        pass
try:
    main()
except (BrokenPipeError, KeyboardInterrupt):
    sys.exit(1)
except SystemExit:
    raise
except BaseException as e:
    msg = str(e) if isinstance(e, Fail) else '%s: %s' % (type(e).__name__, e)
    sys.stderr.write('vprotect-stream: %s\n' % msg)
    if not state['in_frame']:
        try:
            m = msg.encode('utf-8', 'replace')[:4096]
            out([HDR.pack(MAGIC, ERROR, 0, len(m)), m])
        except OSError:
            pass
    sys.exit(2)
`;

/**
 * Runs `$1` (the interpreter) with the script, or says on stderr that it is missing (exit 127):
 * a `command -v` check, so "not installed" is told apart from the script failing.
 */
const LAUNCHER = 'p=$1; shift; command -v "$p" >/dev/null 2>&1 || { echo "vprotect-stream: $p not found (PATH=$PATH)" >&2; exit 127; }; exec "$p" -c "$0" "$@"';

/** The marker the launcher prints when the interpreter is missing. */
export const NO_INTERPRETER = /^vprotect-stream: (\S+) not found/m;

export interface HelperArgs {
  /** The NBD server's unix socket on the hypervisor. */
  socket: string;
  exportName: string;
  /** NBD READs the helper keeps in flight. */
  depth: number;
  /** Interpreter to run the script with (default python3). */
  interpreter?: string;
}

export const DEFAULT_INTERPRETER = 'python3';

/** argv for the hypervisor (run through ssh2's exec wrapper or joined for OpenSSH). */
export function helperArgv(a: HelperArgs): string[] {
  return ['sh', '-c', LAUNCHER, HELPER_SCRIPT, a.interpreter ?? DEFAULT_INTERPRETER, a.socket, a.exportName, String(a.depth)];
}

/** The one command line an SSH exec request carries. */
export function helperCommandLine(a: HelperArgs): string {
  return shellJoin(helperArgv(a));
}
