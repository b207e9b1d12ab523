/**
 * The framing of the persistent virsh and shell (persistent.ts, batch.ts inline scripts), run
 * here by real processes reading from a pipe that stays open — what a hypervisor's virsh and sh
 * do with them: `virsh -q -c test:///default` (libvirt's built-in test driver, no daemon) and
 * /bin/sh -s. Checked: replies arrive while stdin stays open (no buffering deadlock), multi-line
 * output framed exactly, each failure attributed to its own command, data kept as data.
 */
import { spawn, spawnSync, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { inlineBatchScript, parseInlineBatch, writeFileStep } from '../../../strategies/libvirt-ssh/batch.js';
import { type Complete, parseShellReply, parseVirshReply, shellReplyComplete, shellRequest, virshCanCarry, virshReplyComplete, virshRequest } from '../../../strategies/libvirt-ssh/persistent.js';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const B = '@@vprotect-0123456789abcdef01234567';

/** A long-lived process: write a request, wait until `complete`, return (and reset) what it printed. */
class Interactive {
  private out = '';
  private err = '';
  private wake: (() => void) | undefined;
  readonly proc: ChildProcessWithoutNullStreams;

  constructor(cmd: string, args: string[]) {
    this.proc = spawn(cmd, args, { stdio: 'pipe' });
    this.proc.stdout.on('data', (d: Buffer) => ((this.out += d.toString()), this.wake?.()));
    this.proc.stderr.on('data', (d: Buffer) => ((this.err += d.toString()), this.wake?.()));
  }

  ask(input: string, complete: Complete): Promise<{ out: string; err: string }> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no complete answer within 20 s; got ${JSON.stringify({ out: this.out, err: this.err }).slice(0, 2000)}`)), 20_000);
      this.wake = () => {
        if (!complete(this.out, this.err)) return;
        clearTimeout(timer);
        this.wake = undefined;
        const r = { out: this.out, err: this.err };
        this.out = '';
        this.err = '';
        resolve(r);
      };
      this.proc.stdin.write(input); // stdin stays open: the answer must come without EOF
    });
  }
}

const hasVirsh = spawnSync('virsh', ['-q', '-c', 'test:///default', 'list', '--all', '--name']).status === 0;

describe.skipIf(!hasVirsh)('the persistent virsh (virsh -q, stdin a pipe)', () => {
  let virsh: Interactive;
  const ask = async (commands: string[][], boundary = B) => {
    const { out, err } = await virsh.ask(virshRequest(commands, boundary), virshReplyComplete(boundary));
    return parseVirshReply(out, err, boundary, commands.length);
  };
  beforeAll(() => {
    virsh = new Interactive('virsh', ['-q', '-c', 'test:///default']);
  });
  afterAll(() => {
    virsh.proc.stdin.end();
  });

  it('answers each command apart while stdin stays open, multi-line XML exactly as one-shot virsh prints it', async () => {
    const xml = spawnSync('virsh', ['-q', '-c', 'test:///default', 'dumpxml', 'test'], { encoding: 'utf8' }).stdout;
    const r = await ask([['domstate', 'test'], ['dumpxml', 'test'], ['list', '--all', '--name']]);
    expect(r[0]).toEqual({ code: 0, stdout: 'running\n', stderr: '' });
    expect(r[1]!.code).toBe(0);
    expect(r[1]!.stdout.trimEnd()).toBe(xml.trimEnd());
    expect(r[1]!.stdout.split('\n').length).toBeGreaterThan(10);
    expect(r[2]!.stdout.trim()).toBe('test');
  });

  it('a failure is its own command\'s: the commands around it succeed, its stderr holds libvirt\'s words', async () => {
    const r = await ask([['domstate', 'test'], ['domstate', 'no-such-domain'], ['domstate', 'test']]);
    expect(r.map((x) => x.code)).toEqual([0, 1, 0]);
    expect(r[1]!.stderr).toMatch(/^error: .*no-such-domain/m);
    expect(r[0]!.stderr).toBe('');
    expect(r[2]!.stderr).toBe('');
  });

  it('a line virsh cannot parse is reported as not run and does not hang or shift the others', async () => {
    const r = await ask([['domstate', 'test'], ['no-such-command', 'x'], ['domstate', 'test', '--no-such-option'], ['domstate', 'test']]);
    expect(r[0]!.code).toBe(0);
    expect(r[1]!.code).toBeUndefined();
    expect(r[1]!.stderr).toMatch(/unknown command/);
    expect(r[2]!.code).toBeUndefined();
    expect(r[2]!.stderr).toMatch(/no-such-option/);
    expect(r[3]).toEqual({ code: 0, stdout: 'running\n', stderr: '' });
  });

  it('arguments stay data (quotes, $, ;, #, backslashes), and the echoed input never counts as a marker', async () => {
    const nasty = `it's "$(id)" ; list # not a comment \\ ${B},s0`;
    const r = await ask([['echo', nasty], ['echo', `${B},e0`]]);
    expect(r[0]).toEqual({ code: 0, stdout: nasty, stderr: '' });
    expect(r[1]).toEqual({ code: 0, stdout: `${B},e0`, stderr: '' });
  });

  it('refuses to carry a newline (it would end the command line): the caller uses an exec', () => {
    expect(virshCanCarry([['domstate', 'a']])).toBe(true);
    expect(virshCanCarry([['domstate', 'a\nlist']])).toBe(false);
    expect(virshCanCarry([['domstate', 'a\rb']])).toBe(false);
  });
});

describe('the persistent shell (sh -s, stdin a pipe)', () => {
  let sh: Interactive;
  let dir: string;
  const script = async (text: string, boundary = B) => {
    const { out, err } = await sh.ask(shellRequest(text, boundary), shellReplyComplete(boundary));
    return parseShellReply(out, err, boundary)!;
  };
  const batch = async (steps: Parameters<typeof inlineBatchScript>[0]) => {
    const r = await script(inlineBatchScript(steps, B));
    expect(r.code).toBe(0);
    return parseInlineBatch(r.stdout, r.stderr, B, steps.length);
  };
  beforeAll(() => {
    sh = new Interactive('sh', ['-s']);
    dir = mkdtempSync(join(tmpdir(), 'vp-persistent-'));
  });
  afterAll(() => {
    sh.proc.stdin.end();
    rmSync(dir, { recursive: true, force: true });
  });

  it('runs scripts one after the other; `exit` ends only its subshell; nothing reads the following input', async () => {
    expect(await script('echo one; echo two >&2; exit 3')).toEqual({ code: 3, stdout: 'one\n', stderr: 'two\n' });
    // `cat` would eat the rest of the stream if stdin were not /dev/null.
    expect(await script('cat; printf "no newline"')).toEqual({ code: 0, stdout: 'no newline', stderr: '' });
    expect(await script('echo still here')).toEqual({ code: 0, stdout: 'still here\n', stderr: '' });
  });

  it('inline batches: each step\'s status/stdout/stderr apart, data kept as data, a sequence stops at its first failure', async () => {
    const nasty = `it's "$(touch ${dir}/pwned)" \`id\` ; rm -rf / \n\\'\nnext ${B} 0 c 0`;
    const r = await batch([{ argv: ['printf', '%s', nasty] }, { argv: ['sh', '-c', 'printf out; echo err >&2; exit 3'], mayFail: true }, { argv: ['sh', '-c', 'echo no >&2; exit 2'] }, { argv: ['echo', 'never'] }]);
    expect(r[0]).toEqual({ code: 0, stdout: nasty, stderr: '' });
    expect(r[1]).toEqual({ code: 3, stdout: 'out', stderr: 'err\n' });
    expect(r[2]).toEqual({ code: 2, stdout: '', stderr: 'no\n' });
    expect(r[3]).toEqual({ code: undefined, stdout: '', stderr: '' });
    expect(spawnSync('test', ['-e', join(dir, 'pwned')]).status).not.toBe(0);
  });

  it('file writes through the shell: content byte for byte, mode from the umask, replaced atomically', async () => {
    const content = `{"a": "it's $(x)"}\n\nlast line without newline`;
    const file = join(dir, 'j.json');
    const r = await batch([writeFileStep(file, content, '0644'), writeFileStep(join(dir, 'secret.xml'), 'x'), writeFileStep(file, `${content}!`, '0644')]);
    expect(r.map((x) => x.code)).toEqual([0, 0, 0]);
    expect(readFileSync(file, 'utf8')).toBe(`${content}!`);
    expect(statSync(file).mode & 0o777).toBe(0o644);
    expect(statSync(join(dir, 'secret.xml')).mode & 0o777).toBe(0o600);
  });

  it('garbled inline output is an error, never a wrong result', () => {
    expect(() => parseInlineBatch(`${B} 0 s\nout`, `${B} 0 s\n`, B, 1)).toThrow(/garbled/);
  });
});
