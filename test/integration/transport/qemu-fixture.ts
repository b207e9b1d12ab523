/**
 * A qcow2 test disk with everything the NBD readers must get right, built with the real qemu
 * tools, plus a qemu-nbd server for it. The image:
 *   base.qcow2 (64 MiB): 4 MiB random at 1 MiB, 1 MiB of 0x5a at 32 MiB, rest unallocated
 *   top.qcow2 (backing base): random 192 KiB at 2 MiB, zero cluster (write -z) at 40 MiB,
 *     explicit zero bytes written as data at 48 MiB; then bitmap "b1" is added, and after it:
 *     random 64 KiB at 8 MiB (dirty), write -z of 1 MiB at 32.5 MiB, half over base's 0x5a (dirty ∧ zero),
 *     random 100 KiB at 60 MiB + 4 KiB (dirty, unaligned to the 64 KiB bitmap granularity)
 * `reference` is `qemu-img convert -O raw top.qcow2`: the bytes every read is compared with.
 */
import { execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const MiB = 1024 * 1024;
export const KiB = 1024;

export interface QemuDisk {
  dir: string;
  base: string;
  top: string;
  size: number;
  reference: Buffer;
  bitmap: string;
  cleanup(): void;
}

function run(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

export function requireQemuTools(): void {
  for (const tool of ['qemu-img', 'qemu-io', 'qemu-nbd']) {
    try {
      execFileSync(tool, ['--version'], { stdio: 'ignore' });
    } catch {
      throw new Error(`${tool} is not installed: apt-get install -y qemu-utils`);
    }
  }
}

/** Writes `data` at `offset` into a qcow2 through qemu-io (so bitmaps see the write). */
function writeData(dir: string, image: string, offset: number, data: Buffer): void {
  const src = join(dir, `src-${offset}.bin`);
  writeFileSync(src, data);
  run('qemu-io', ['-f', 'qcow2', '-c', `write -s ${src} ${offset} ${data.length}`, image]);
  rmSync(src);
}

export function makeQemuDisk(): QemuDisk {
  requireQemuTools();
  const dir = mkdtempSync(join(tmpdir(), 'vp-nbd-'));
  const base = join(dir, 'base.qcow2');
  const top = join(dir, 'top.qcow2');
  const size = 64 * MiB;
  run('qemu-img', ['create', '-q', '-f', 'qcow2', base, String(size)]);
  writeData(dir, base, 1 * MiB, randomBytes(4 * MiB));
  run('qemu-io', ['-f', 'qcow2', '-c', `write -P 0x5a ${32 * MiB} ${1 * MiB}`, base]);
  run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', top]);
  writeData(dir, top, 2 * MiB, randomBytes(192 * KiB));
  run('qemu-io', ['-f', 'qcow2', '-c', `write -z ${40 * MiB} ${1 * MiB}`, top]);
  writeData(dir, top, 48 * MiB, Buffer.alloc(256 * KiB));
  run('qemu-img', ['bitmap', '--add', top, 'b1']);
  writeData(dir, top, 8 * MiB, randomBytes(64 * KiB));
  run('qemu-io', ['-f', 'qcow2', '-c', `write -z ${32 * MiB + 512 * KiB} ${1 * MiB}`, top]);
  writeData(dir, top, 60 * MiB + 4 * KiB, randomBytes(100 * KiB));
  const raw = join(dir, 'reference.raw');
  run('qemu-img', ['convert', '-O', 'raw', top, raw]);
  const reference = readFileSync(raw);
  rmSync(raw);
  return { dir, base, top, size, reference, bitmap: 'b1', cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

export interface QemuNbdServer {
  socket: string;
  pid: number;
  stop(): Promise<void>;
}

/** Starts qemu-nbd (read-only, persistent) on a unix socket and waits until it listens. */
export async function startQemuNbd(image: string, socket: string, extra: string[] = []): Promise<QemuNbdServer> {
  const child = spawn('qemu-nbd', ['--read-only', '--persistent', '-f', 'qcow2', `--socket=${socket}`, ...extra, image], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  for (let i = 0; i < 100 && !existsSync(socket); i++) {
    if (child.exitCode !== null) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  if (!existsSync(socket)) {
    child.kill('SIGKILL');
    throw new Error(`qemu-nbd did not start: ${stderr}`);
  }
  return {
    socket,
    pid: child.pid!,
    stop: async () => {
      if (child.exitCode === null) child.kill('SIGTERM');
      await exited;
    },
  };
}

/** nbdinfo --map as an independent oracle: [{offset, length, type}]. */
export function nbdinfoMap(socket: string, context: string, exportName = ''): Array<{ offset: number; length: number; type: number }> {
  const out = run('nbdinfo', ['--json', `--map=${context}`, `nbd+unix:///${exportName}?socket=${socket}`]);
  return JSON.parse(out) as Array<{ offset: number; length: number; type: number }>;
}
