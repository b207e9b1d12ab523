/**
 * The run's persistent virsh and shell over the lab's real sshd and libvirtd (persistent.ts,
 * Hypervisor.keepProcesses): one process each for many calls, answers framed right (multi-line
 * XML, a failure attributed to its command), a timeout or an interruption kills the process
 * and the next call starts a new one, a process that died is replaced (queries asked again),
 * close() ends both on the hypervisor.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { InterruptedError } from '../../../src/errors.js';
import type { Logger } from '../../../src/log.js';
import { SshPool, type SshConnection } from '../../../src/transport/ssh.js';
import { runBatch, writeFileStep } from '../../../strategies/libvirt-ssh/batch.js';
import { Hypervisor } from '../../../strategies/libvirt-ssh/hypervisor.js';
import { createDomain, destroyDomain, labEnv, sh, virsh, type LabEnv } from './fixture.js';

const env: LabEnv = labEnv();
const domain = `vpt-persist-${process.pid}`;
let pool: SshPool;
let conn: SshConnection;
const messages: string[] = [];
const log: Logger = { debug: (m, f) => messages.push(`${m} ${f ? JSON.stringify(f) : ''}`), info: () => undefined, warn: () => undefined, error: () => undefined };

/** Pids of the processes (the lab's hypervisor is this machine) whose command line matches. */
function pidsOf(pattern: RegExp): Set<number> {
  const pids = new Set<number>();
  for (const line of sh('ps', ['-eo', 'pid=,args=']).split('\n')) {
    const m = /^\s*(\d+) (.*)$/.exec(line);
    if (m && pattern.test(m[2]!)) pids.add(Number(m[1]));
  }
  return pids;
}
const PERSISTENT_VIRSH = /^virsh -q -c qemu:\/\/\/system$/;
const newPids = (before: Set<number>) => [...pidsOf(PERSISTENT_VIRSH)].filter((p) => !before.has(p));
async function until(cond: () => boolean): Promise<void> {
  for (let i = 0; i < 50 && !cond(); i++) await new Promise((res) => setTimeout(res, 100));
}

beforeAll(async () => {
  createDomain(env, domain, [{ target: 'vda', format: 'qcow2', size: 16 * 1024 * 1024 }]);
  pool = new SshPool({ env: {}, log, connectTimeoutMs: 20_000 });
  conn = await pool.connection(env.hv);
}, 120_000);

afterAll(async () => {
  await pool?.close();
  destroyDomain(env, domain);
});

describe('persistent virsh and shell over SSH', () => {
  it('serve many calls with one process each; answers framed right; close() ends both', async () => {
    const hv = new Hypervisor(conn, env.hv, log);
    hv.keepProcesses();
    messages.length = 0;
    try {
      const before = pidsOf(PERSISTENT_VIRSH);
      const xml = virsh('dumpxml', domain);
      expect((await hv.dumpXml(domain)).trimEnd()).toBe(xml.trimEnd());
      expect(await hv.domainState(domain)).toBe('running');
      expect(await hv.domainState('vpt-no-such-domain')).toBeUndefined();
      const r = await hv.virshEach([['domstate', domain], ['checkpoint-dumpxml', domain, 'no-such-checkpoint'], ['domstate', domain]]);
      expect(r.map((x) => x.code)).toEqual([0, 1, 0]);
      expect(r[1]!.stderr).toMatch(/no-such-checkpoint|not found/i);
      // A file written and read back through the shell: data stays data.
      const file = `${env.workDir}/persist-${process.pid}.txt`;
      const content = `it's "$(id)" ; \`x\`\nline 2`;
      const steps = await runBatch(hv, [{ argv: ['mkdir', '-p', env.workDir] }, writeFileStep(file, content)], { signal: null });
      expect(steps.map((s) => s.code)).toEqual([0, 0]);
      expect(await hv.readFile(file)).toBe(content);
      await hv.remove(file);
      expect(await hv.exists(file)).toBe(false);
      const mine = newPids(before);
      expect(mine.length).toBeGreaterThanOrEqual(1); // others' runs may start theirs meanwhile
      expect(messages.filter((m) => m.startsWith('persistent virsh started'))).toHaveLength(1);
      expect(messages.filter((m) => m.startsWith('persistent shell started'))).toHaveLength(1);
      expect(messages.filter((m) => m.startsWith('hypervisor exec'))).toEqual([]);
      await hv.closeProcesses();
      // Ours is gone (the only persistent virsh started in this test, per the debug log).
      await until(() => newPids(before).length === 0);
      expect(newPids(before)).toEqual([]);
    } finally {
      await hv.closeProcesses();
    }
  }, 120_000);

  it('a timeout kills the persistent process; the next call starts a new one', async () => {
    const hv = new Hypervisor(conn, env.hv, log);
    hv.keepProcesses();
    messages.length = 0;
    try {
      const marker = `vprotect-persist-sleep-${process.pid}`;
      await expect(hv.exec(['sh', '-c', `sleep 30 # ${marker}`], { timeoutMs: 500 })).rejects.toThrow(/did not answer within 500 ms/);
      await until(() => pidsOf(new RegExp(marker)).size === 0);
      expect(pidsOf(new RegExp(marker)).size).toBe(0);
      expect((await hv.exec(['echo', 'next'])).stdout).toBe('next\n');
      expect(messages.filter((m) => m.startsWith('persistent shell started'))).toHaveLength(2);
      // virsh too: `event --timeout 20` waits for domain events for 20 s.
      expect(await hv.domainState(domain)).toBe('running');
      await expect(hv.virsh(['event', '--domain', domain, '--all', '--timeout', '20'], { timeoutMs: 500 })).rejects.toThrow(/did not answer within 500 ms/);
      expect(await hv.domainState(domain)).toBe('running');
      expect(messages.filter((m) => m.startsWith('persistent virsh started'))).toHaveLength(2);
    } finally {
      await hv.closeProcesses();
    }
  }, 120_000);

  it('an interruption kills the call (InterruptedError); cleanup calls (signal: null) still run', async () => {
    const ac = new AbortController();
    const hv = new Hypervisor(conn, env.hv, log, ac.signal);
    hv.keepProcesses();
    try {
      const call = hv.exec(['sleep', '30']);
      setTimeout(() => ac.abort(new InterruptedError()), 300);
      await expect(call).rejects.toBeInstanceOf(InterruptedError);
      await expect(hv.exec(['echo', 'x'])).rejects.toBeInstanceOf(InterruptedError);
      expect((await hv.exec(['echo', 'cleanup'], { signal: null })).stdout).toBe('cleanup\n');
      expect(await hv.virsh(['domstate', domain], { signal: null })).toBe('running\n');
    } finally {
      await hv.closeProcesses();
    }
  }, 120_000);

  it('a persistent virsh killed on the hypervisor is replaced; queries are asked again', async () => {
    const hv = new Hypervisor(conn, env.hv, log);
    hv.keepProcesses();
    messages.length = 0;
    try {
      const before = pidsOf(PERSISTENT_VIRSH);
      await hv.closeProcesses();
      hv.keepProcesses();
      expect(await hv.domainState(domain)).toBe('running');
      // This test's virsh, by its pid (the one that appeared with the call above).
      const mine = newPids(before);
      expect(mine).toHaveLength(1);
      process.kill(mine[0]!, 'SIGKILL');
      await until(() => newPids(before).length === 0);
      expect(await hv.domainState(domain)).toBe('running');
      expect(messages.filter((m) => m.startsWith('persistent virsh started'))).toHaveLength(2);
      expect(messages.some((m) => m.startsWith('persistent virsh ended'))).toBe(true);
    } finally {
      await hv.closeProcesses();
    }
  }, 120_000);
});
