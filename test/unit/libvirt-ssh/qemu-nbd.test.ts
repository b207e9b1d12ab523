/**
 * qemu-nbd's start (qemu-nbd.ts): its output goes to a log in the run directory, not to the
 * shell that started it (a daemon keeps those fds: the persistent shell's replies would get its
 * later warnings). Run here locally with a stand-in `qemu-nbd` on PATH.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { qemuNbdLog, startQemuNbdArgv, type QemuNbdRequest } from '../../../strategies/libvirt-ssh/qemu-nbd.js';

const dir = mkdtempSync(join(tmpdir(), 'vp-qemu-nbd-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function run(fake: string): { status: number | null; stdout: string; stderr: string; log: string } {
  writeFileSync(join(dir, 'qemu-nbd'), `#!/bin/sh\n${fake}\n`, { mode: 0o755 });
  const req: QemuNbdRequest = { file: '/x.qcow2', format: 'qcow2', exportName: 'vda', server: { transport: 'unix', socket: join(dir, 's.sock') }, pidFile: join(dir, 'vda.nbd.pid'), allocationDepth: false };
  const [cmd, ...args] = startQemuNbdArgv(req);
  const r = spawnSync(cmd!, args, { encoding: 'utf8', env: { ...process.env, PATH: `${dir}:${process.env['PATH']}` } });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr, log: readFileSync(qemuNbdLog(req), 'utf8') };
}

describe('startQemuNbdArgv', () => {
  it('the forked daemon prints into the log, never into the starting shell\'s output', () => {
    const r = run('echo "args: $*"; (sleep 0.2; echo late warning >&2) & exit 0');
    expect(r).toMatchObject({ status: 0, stdout: '', stderr: '' });
    expect(r.log).toMatch(/^args: --read-only .*--pid-file=.*vda\.nbd\.pid .*\/x\.qcow2\n/);
  });

  it('a failed start keeps its status and quotes qemu-nbd\'s words on stderr', () => {
    const r = run('echo "qemu-nbd: Failed to blk_new_open" >&2; exit 3');
    expect(r.status).toBe(3);
    expect(r.stderr).toBe('qemu-nbd: Failed to blk_new_open\n');
  });
});
