/**
 * Command batches (one SSH exec for a phase's commands): the script is run here by a real
 * /bin/sh, so what is tested is what a hypervisor's shell does with it — argv kept exactly
 * (quotes, newlines, `$(…)` in data stay data), each step's status/stdout/stderr apart, a
 * sequence stopping at its first failure.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { batchScript, inlineBatchScript, parseBatch, parseInlineBatch, splitVirshMulti, writeFileStep, type Step } from '../../../strategies/libvirt-ssh/batch.js';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const B = '@@vprotect-0123456789abcdef01234567';

function run(steps: Step[]) {
  const out = execFileSync('sh', ['-c', batchScript(steps, B)], { encoding: 'utf8' });
  return parseBatch(out, B, steps.length);
}

describe('command batches', () => {
  it('keeps every argument as data and reports each step apart', () => {
    const nasty = `it's "$(touch /tmp/pwned-by-vprotect-test)" \`id\` ; rm -rf / \n\\'\nnext`;
    const r = run([{ argv: ['printf', '%s', nasty] }, { argv: ['sh', '-c', 'echo out; echo err >&2; exit 3'], mayFail: true }, { argv: ['printf', 'no newline'] }]);
    expect(r[0]).toEqual({ code: 0, stdout: nasty, stderr: '' });
    expect(r[1]).toEqual({ code: 3, stdout: 'out\n', stderr: 'err\n' });
    expect(r[2]).toEqual({ code: 0, stdout: 'no newline', stderr: '' });
    expect(spawnSync('test', ['-e', '/tmp/pwned-by-vprotect-test']).status).not.toBe(0);
  });

  it('a sequence stops at the first failure that is not mayFail; later steps are reported as not run', () => {
    const r = run([{ argv: ['true'] }, { argv: ['sh', '-c', 'echo no >&2; exit 2'] }, { argv: ['echo', 'never'] }]);
    expect(r.map((x) => x.code)).toEqual([0, 2, undefined]);
    expect(r[1]!.stderr).toBe('no\n');
    expect(r[2]!.stdout).toBe('');
  });

  it('writes files atomically with their mode, content byte for byte', () => {
    const dir = mkdtempSync(join(tmpdir(), 'vp-batch-'));
    try {
      const content = `{"a": "it's $(x)"}\n\nlast line without newline`;
      const r = run([writeFileStep(join(dir, 'j.json'), content, '0644')]);
      expect(r[0]!.code).toBe(0);
      expect(readFileSync(join(dir, 'j.json'), 'utf8')).toBe(content);
      expect(statSync(join(dir, 'j.json')).mode & 0o777).toBe(0o644);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('garbled output is an error, never a wrong result', () => {
    expect(() => parseBatch(`\n${B} 0 0\nout\n${B} 9 0\n`, B, 1)).toThrow(/garbled/);
  });
});

describe('the persistent shell\'s inline batches', () => {
  function runInline(steps: Step[]) {
    const script = inlineBatchScript(steps, B);
    const r = spawnSync('sh', ['-c', `umask 077\n${script}`], { encoding: 'utf8' });
    return { script, results: parseInlineBatch(r.stdout, r.stderr, B, steps.length) };
  }

  it('runs `sh -c` steps in a subshell, no sh started: arguments stay data, nothing leaks to the next step', () => {
    const dir = mkdtempSync(join(tmpdir(), 'vp-inline-'));
    try {
      const nasty = `it's "$(touch /tmp/pwned-by-vprotect-test)" \`id\` ; exit 9 \n\\'\nnext`;
      const content = `{"a": "it's $(x)"}\n\nlast line without newline`;
      const { script, results } = runInline([
        { argv: ['sh', '-c', 'printf %s "$1"; echo err >&2; exit 3', 'sh', nasty], mayFail: true },
        writeFileStep(join(dir, 'j.json'), content, '0644'),
        { argv: ['sh', '-c', 'umask; printf %s "$#"', 'sh'] },
      ]);
      expect(script).not.toMatch(/'sh' '-c'|\bsh -c\b/);
      expect(results[0]).toEqual({ code: 3, stdout: nasty, stderr: 'err\n' });
      expect(results[1]!.code).toBe(0);
      expect(readFileSync(join(dir, 'j.json'), 'utf8')).toBe(content);
      expect(statSync(join(dir, 'j.json')).mode & 0o777).toBe(0o644);
      // The file step's umask and arguments stayed in its subshell.
      expect(results[2]).toEqual({ code: 0, stdout: '0077\n0', stderr: '' });
      expect(spawnSync('test', ['-e', '/tmp/pwned-by-vprotect-test']).status).not.toBe(0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('several virsh commands in one process', () => {
  it('splits the outputs at each command\'s marker; a missing marker means "ask again one by one"', () => {
    expect(splitVirshMulti(`running\n${B}-0<domain/>\n${B}-1\n${B}-2`, B, 3)).toEqual(['running\n', '<domain/>\n', '']);
    expect(splitVirshMulti(`running\n${B}-0`, B, 2)).toBeUndefined();
  });
});
