import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { UsageError } from '../../../src/errors.js';
import { describeArgv, shellJoin, shellQuote } from '../../../src/transport/quote.js';

// Arguments an attacker (or an unlucky VM name) could put in front of a shell.
const scratch = mkdtempSync(join(tmpdir(), 'vp-quote-'));
const canary = join(scratch, 'pwned');
const HOSTILE = [
  '',
  ' ',
  'plain',
  "it's",
  "'",
  "''",
  '"',
  '\\',
  '\\\'',
  `$(touch ${canary})`,
  `\`touch ${canary}\``,
  `; touch ${canary}`,
  `&& touch ${canary}`,
  `| touch ${canary}`,
  `\ntouch ${canary}\n`,
  `'; touch ${canary}; '`,
  `"; touch ${canary}; "`,
  '$HOME ${HOME} $((1+1)) $1 $@ $*',
  '*',
  '?',
  '[a-z]*',
  '~',
  '~root',
  '-n',
  '--help',
  '!!',
  '!$',
  '{a,b}',
  '#comment',
  'a\tb\rc',
  'é ünïcödé ✓ 🙂',
  '\u0001\u007f\u00ff',
  `> ${canary}`,
  `< /etc/passwd`,
  '%s %n',
  'x'.repeat(10000),
];

afterAll(() => rmSync(scratch, { recursive: true, force: true }));

/** Runs the quoted line through a real shell and returns the argv it produced. */
function parseWith(shell: string, argv: readonly string[]): string[] {
  const line = `printf '%s\\0' ${argv.map(shellQuote).join(' ')}`;
  const out = execFileSync(shell, ['-c', line], { encoding: 'utf8' });
  return out.split('\0').slice(0, -1);
}

const shells = ['/bin/sh', '/bin/bash', '/bin/dash'].filter((s) => existsSync(s));

describe('shellQuote', () => {
  it('leaves harmless words alone and quotes everything else', () => {
    expect(shellQuote('qemu-img')).toBe('qemu-img');
    expect(shellQuote('/tmp/lab/vms/vp-qcow2.qcow2')).toBe('/tmp/lab/vms/vp-qcow2.qcow2');
    expect(shellQuote('')).toBe("''");
    expect(shellQuote('a b')).toBe("'a b'");
    expect(shellQuote("it's")).toBe("'it'\\''s'");
    expect(shellQuote('$(id)')).toBe("'$(id)'");
  });

  it('refuses NUL bytes, which argv cannot carry', () => {
    expect(() => shellQuote('a\0b')).toThrow(UsageError);
  });

  it('refuses an empty command', () => {
    expect(() => shellJoin([])).toThrow(UsageError);
  });

  it.each(shells)('round-trips every hostile argument through %s unchanged, running nothing', (shell) => {
    expect(parseWith(shell, HOSTILE)).toEqual(HOSTILE);
    // Each argument alone, too: a quoting bug can hide when arguments are adjacent.
    for (const arg of HOSTILE) expect(parseWith(shell, [arg])).toEqual([arg]);
    expect(readdirSync(scratch)).toEqual([]);
  });

  it('has at least one shell to test against', () => {
    expect(shells.length).toBeGreaterThan(0);
  });

  it('quotes argv[0] too, so a hostile program name cannot smuggle a second command', () => {
    const line = shellJoin([`true; touch ${canary}`]);
    expect(() => execFileSync('/bin/sh', ['-c', line], { stdio: 'pipe' })).toThrow();
    expect(existsSync(canary)).toBe(false);
  });

  it('describes long command lines shortened', () => {
    expect(describeArgv(['echo', 'x'.repeat(500)], 50)).toHaveLength(50);
    expect(describeArgv(['rbd', 'snap', 'ls', 'a b'])).toBe("rbd snap ls 'a b'");
  });
});
