/**
 * The persistent process's life (persistent.ts) with local processes standing in for the
 * hypervisor's: an SshConnection whose execStream spawns a local program. Checked: a virsh
 * without the framing options is detected at once and the run falls back to one exec per call;
 * close() never leaves a request pending; output printed between requests stays out of the next
 * reply; an abort during the start is honoured; a runaway reply is capped.
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { InterruptedError } from '../../../src/errors.js';
import type { ExecResult, RemoteProcess, SshConnection } from '../../../src/transport/ssh.js';
import { Hypervisor } from '../../../strategies/libvirt-ssh/hypervisor.js';
import { PersistentShell, PersistentVirsh, ProcessLostError, ProcessStartError } from '../../../strategies/libvirt-ssh/persistent.js';

/** A local process as a RemoteProcess. */
function local(cmd: string, args: string[], env?: NodeJS.ProcessEnv): RemoteProcess {
  const child = spawn(cmd, args, { stdio: 'pipe', ...(env ? { env } : {}) });
  let stderr = '';
  const listeners: ((t: string) => void)[] = [];
  child.stderr.on('data', (d: Buffer) => {
    stderr += d.toString();
    for (const l of listeners) l(d.toString());
  });
  const done = new Promise<Omit<ExecResult, 'stdout'>>((resolve) => child.on('close', (code, signal) => resolve({ code: code ?? undefined, signal: signal ?? undefined, stderr })));
  return { stdout: child.stdout, stdin: child.stdin, done, kill: () => child.kill('SIGKILL'), onStderr: (l) => listeners.push(l) };
}

/**
 * A connection whose execStream runs `cmd args` locally (after `delayMs`), counting the starts;
 * with `virsh`, a persistent virsh (argv[0] virsh) runs that instead, and the shell finds a
 * `virsh` on PATH that answers `running`.
 */
function fakeConn(cmd: string, args: string[], delayMs = 0, virsh?: string[]) {
  const conn = {
    starts: 0,
    execs: [] as string[][],
    started: [] as RemoteProcess[],
    async execStream(argv: readonly string[]): Promise<RemoteProcess> {
      conn.starts++;
      if (delayMs) await new Promise((r) => setTimeout(r, delayMs));
      const p = virsh && argv[0] === 'virsh' ? local('sh', virsh) : local(cmd, args, virsh ? { ...process.env, PATH: `${binDir()}:${process.env['PATH']}` } : undefined);
      conn.started.push(p);
      return p;
    },
    async exec(argv: string[]): Promise<ExecResult> {
      conn.execs.push(argv);
      return { code: 0, signal: undefined, stdout: 'running\n', stderr: '' };
    },
  };
  return conn;
}

/** A virsh from before `echo --split`/`--err` (libvirt < 6.x): it rejects the options, runs plain lines. */
const OLD_VIRSH = ['-c', 'while IFS= read -r l; do echo "$l"; case "$l" in *--split*|*--err*) echo "error: command \'echo\' doesn\'t support option --split" >&2 ;; *) eval "$l" ;; esac; done'];

let bin: string | undefined;
/** A directory holding a `virsh` that prints `running` and its arguments to a log. */
function binDir(): string {
  if (bin) return bin;
  bin = mkdtempSync(join(tmpdir(), 'vp-fake-virsh-'));
  writeFileSync(join(bin, 'virsh'), `#!/bin/sh\necho "$*" >> ${bin}/calls\necho running\n`, { mode: 0o755 });
  return bin;
}
afterAll(() => {
  if (bin) rmSync(bin, { recursive: true, force: true });
});

describe('the persistent virsh probe', () => {
  it('a virsh without echo --split/--err is found out at start (not after 120 s): every call falls back to one exec, remembered for the run', async () => {
    const conn = fakeConn('sh', OLD_VIRSH);
    const virsh = new PersistentVirsh(conn as unknown as SshConnection, ['virsh'], undefined);
    const started = Date.now();
    await expect(virsh.run([['domstate', 'x']], { timeoutMs: 120_000 })).rejects.toBeInstanceOf(ProcessStartError);
    await expect(virsh.run([['domstate', 'x']], { timeoutMs: 120_000 })).rejects.toThrow(/echo --split/);
    expect(Date.now() - started).toBeLessThan(5_000);
    expect(conn.starts).toBe(1);
    await virsh.close();
  });

  it.skipIf(spawnSync('virsh', ['-q', '-c', 'test:///default', 'list']).status !== 0)('a virsh with them (the test driver) passes the probe and answers', async () => {
    const conn = fakeConn('virsh', ['-q', '-c', 'test:///default']);
    const virsh = new PersistentVirsh(conn as unknown as SshConnection, ['virsh'], undefined);
    expect(await virsh.run([['domstate', 'test']])).toEqual([{ code: 0, stdout: 'running\n', stderr: '' }]);
    expect(conn.starts).toBe(1);
    await virsh.close();
  });

  it('through Hypervisor: the call still succeeds, by one exec', async () => {
    const conn = fakeConn('sh', ['-s'], 0, OLD_VIRSH);
    const hv = new Hypervisor(conn as unknown as SshConnection, { name: 'hv1' } as never);
    hv.keepProcesses();
    expect(await hv.virsh(['domstate', 'x'])).toBe('running\n');
    expect(await hv.virsh(['domstate', 'y'])).toBe('running\n');
    // One virsh start (probe failed, remembered) and one shell, which ran both virsh processes.
    expect(conn.starts).toBe(2);
    expect(readFileSync(join(binDir(), 'calls'), 'utf8')).toBe('-q domstate x\n-q domstate y\n');
    await hv.closeProcesses();
  });
});

describe('the persistent shell process', () => {
  it('a command whose shell was lost fails saying so (not "killed by a signal"): whether it ran is unknown', async () => {
    const hv = new Hypervisor(fakeConn('sh', ['-s']) as unknown as SshConnection, { name: 'hv1' } as never);
    hv.keepProcesses();
    // $$ in the request's subshell is the persistent shell itself.
    const pid = (await hv.shellScript('echo $$'))!.stdout.trim();
    await expect(hv.run(['kill', '-9', pid])).rejects.toThrow(/^kill -9 \d+ on hv1 was lost without an exit status \(whether it ran is unknown\): the persistent shell was lost before it answered/);
    await hv.closeProcesses();
  });

  it('close() while the shell is still starting: the process that then starts is ended, not left running', async () => {
    const conn = fakeConn('sh', ['-s'], 300);
    const shell = new PersistentShell(conn as unknown as SshConnection, undefined);
    const request = shell.exec(['echo', 'up']).then(
      () => 'resolved',
      (e: unknown) => e,
    );
    await new Promise((r) => setTimeout(r, 50));
    await shell.close(200);
    expect(await request).toBeInstanceOf(ProcessStartError);
    expect(conn.started).toHaveLength(1);
    const ended = await Promise.race([conn.started[0]!.done.then(() => true), new Promise((r) => setTimeout(() => r(false), 2_000))]);
    expect(ended, 'the shell started after close() was ended').toBe(true);
  });

  it('close() while a request (without a time limit) is pending: the request fails as lost, it does not wait forever', async () => {
    const conn = fakeConn('sh', ['-s']);
    const shell = new PersistentShell(conn as unknown as SshConnection, undefined);
    expect((await shell.exec(['echo', 'up'])).stdout).toBe('up\n');
    const pending = shell.exec(['sleep', '30']);
    const settled = pending.then(
      () => 'resolved',
      (e: unknown) => e,
    );
    // Queued behind it: after close() it must not start a new shell that nobody would close.
    const queued = shell.exec(['echo', 'late']).then(
      () => 'resolved',
      (e: unknown) => e,
    );
    await new Promise((r) => setTimeout(r, 100));
    const started = Date.now();
    await shell.close(200);
    const r = await settled;
    expect(r).toBeInstanceOf(ProcessLostError);
    expect(String(r)).toMatch(/lost before it answered: whether the command ran is unknown/);
    expect(Date.now() - started).toBeLessThan(2_000);
    expect(await queued).toBeInstanceOf(ProcessStartError);
    expect(conn.starts).toBe(1);
  });

  it('output printed between requests (a background job) does not land in the next reply', async () => {
    const shell = new PersistentShell(fakeConn('sh', ['-s']) as unknown as SshConnection, undefined);
    const first = await shell.script('(sleep 0.3; echo late; echo late-err >&2) & echo first');
    expect(first).toEqual({ code: 0, stdout: 'first\n', stderr: '' });
    await new Promise((r) => setTimeout(r, 600));
    expect(await shell.exec(['echo', 'second'])).toEqual({ code: 0, stdout: 'second\n', stderr: '' });
    await shell.close();
  });

  it('an abort while the process starts is honoured: nothing is sent, the process stays for cleanup', async () => {
    const conn = fakeConn('sh', ['-s'], 200);
    const shell = new PersistentShell(conn as unknown as SshConnection, undefined);
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 50);
    await expect(shell.exec(['touch', '/nonexistent-dir/x'], { signal: ac.signal })).rejects.toBeInstanceOf(InterruptedError);
    expect(await shell.exec(['echo', 'cleanup'])).toEqual({ code: 0, stdout: 'cleanup\n', stderr: '' });
    expect(conn.starts).toBe(1);
    await shell.close();
  });

  it('a reply beyond the output cap stops the process with an error (as an exec is capped)', async () => {
    const conn = fakeConn('sh', ['-s']);
    const shell = new PersistentShell(conn as unknown as SshConnection, undefined);
    await expect(shell.exec(['head', '-c', String(70 * 1024 * 1024), '/dev/zero'])).rejects.toThrow(/more than 67108864 bytes/);
    expect((await shell.exec(['echo', 'next'])).stdout).toBe('next\n');
    expect(conn.starts).toBe(2);
    await shell.close();
  }, 30_000);
});
