import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError } from '../../../src/errors.js';
import {
  fingerprintPolicy,
  hostMatches,
  keyBlobType,
  knownHostsPolicy,
  parseKnownHosts,
  sha256Fingerprint,
} from '../../../src/transport/ssh.js';

// Real keys made by ssh-keygen, so fingerprints and hashed names are checked against OpenSSH itself.
let dir: string;
let ed: { line: string; blob: Buffer; fp: string };
let ed2: { line: string; blob: Buffer; fp: string };
let rsa: { line: string; blob: Buffer; fp: string };

function makeKey(name: string, type: string): { line: string; blob: Buffer; fp: string } {
  const file = join(dir, name);
  execFileSync('ssh-keygen', ['-q', '-t', type, '-N', '', '-f', file]);
  const line = readFileSync(`${file}.pub`, 'utf8').trim();
  const fp = execFileSync('ssh-keygen', ['-lf', `${file}.pub`], { encoding: 'utf8' }).split(' ')[1]!;
  return { line, blob: Buffer.from(line.split(' ')[1]!, 'base64'), fp };
}

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'vp-hostkeys-'));
  ed = makeKey('ed', 'ed25519');
  ed2 = makeKey('ed2', 'ed25519');
  rsa = makeKey('rsa', 'rsa');
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const keyPart = (k: { line: string }) => k.line.split(' ').slice(0, 2).join(' ');

describe('fingerprints', () => {
  it('match ssh-keygen -l', () => {
    expect(sha256Fingerprint(ed.blob)).toBe(ed.fp);
    expect(sha256Fingerprint(rsa.blob)).toBe(rsa.fp);
    expect(keyBlobType(ed.blob)).toBe('ssh-ed25519');
    expect(keyBlobType(rsa.blob)).toBe('ssh-rsa');
  });

  it('a pinned fingerprint accepts its key and refuses any other with both fingerprints in the message', () => {
    const p = fingerprintPolicy(ed.fp, 'hypervisor hv1');
    expect(p.check(ed.blob)).toEqual({ ok: true });
    const v = p.check(ed2.blob);
    expect(v.ok).toBe(false);
    if (!v.ok) {
      expect(v.reason).toBe('mismatch');
      expect(v.message).toContain(ed2.fp);
      expect(v.message).toContain(ed.fp);
    }
    // A trailing "=" (some tools print it) is the same fingerprint.
    expect(fingerprintPolicy(`${ed.fp}=`, 'x').check(ed.blob)).toEqual({ ok: true });
  });

  it('refuses a malformed pin', () => {
    expect(() => fingerprintPolicy('MD5:aa:bb', 'hypervisor hv1')).toThrow(ConfigError);
  });
});

describe('known_hosts', () => {
  it('hashed entries written by ssh-keygen -H match, for port 22 and [host]:port', () => {
    const file = join(dir, 'kh-hashed');
    writeFileSync(file, `hv1.example ${keyPart(ed)}\n[10.0.0.5]:2222 ${keyPart(rsa)}\n`);
    execFileSync('ssh-keygen', ['-q', '-H', '-f', file], { stdio: 'ignore' });
    const text = readFileSync(file, 'utf8');
    expect(text).not.toContain('hv1.example');
    const entries = parseKnownHosts(text);
    expect(entries.every((e) => e.hosts.startsWith('|1|'))).toBe(true);
    expect(knownHostsPolicy(text, file, 'hv1.example', 22, 'x').check(ed.blob)).toEqual({ ok: true });
    expect(knownHostsPolicy(text, file, '10.0.0.5', 2222, 'x').check(rsa.blob)).toEqual({ ok: true });
    // The same host on another port is another entry.
    expect(knownHostsPolicy(text, file, '10.0.0.5', 22, 'x').check(rsa.blob)).toMatchObject({ ok: false, reason: 'unknown' });
  });

  it('plain patterns: lists, [host]:port, wildcards, negation, case', () => {
    expect(hostMatches('hv1,hv2,10.0.0.1', 'hv2', 22)).toBe(true);
    expect(hostMatches('[127.0.0.1]:2222', '127.0.0.1', 2222)).toBe(true);
    expect(hostMatches('127.0.0.1', '127.0.0.1', 2222)).toBe(false);
    expect(hostMatches('[127.0.0.1]:2222', '127.0.0.1', 22)).toBe(false);
    expect(hostMatches('*.example.org', 'HV7.Example.org', 22)).toBe(true);
    expect(hostMatches('hv?', 'hv7', 22)).toBe(true);
    expect(hostMatches('hv?', 'hv17', 22)).toBe(false);
    expect(hostMatches('*.example.org,!evil.example.org', 'evil.example.org', 22)).toBe(false);
    expect(hostMatches('a.b', 'aXb', 22)).toBe(false); // dots are literal
  });

  it('a listed host with another key is CHANGED; an unlisted host is unknown; both refused', () => {
    const text = `# comment\n\nhv1 ${keyPart(ed)}\nother ${keyPart(ed2)}\n`;
    const p = knownHostsPolicy(text, '/kh', 'hv1', 22, 'hypervisor hv1');
    const changed = p.check(ed2.blob);
    expect(changed).toMatchObject({ ok: false, reason: 'changed' });
    if (!changed.ok) expect(changed.message).toMatch(/HOST KEY CHANGED .* \/kh \(line 3\)/);
    const unknown = knownHostsPolicy(text, '/kh', 'hv9', 22, 'hypervisor hv9').check(ed.blob);
    expect(unknown).toMatchObject({ ok: false, reason: 'unknown' });
    if (!unknown.ok) expect(unknown.hint).toMatch(/ssh-keyscan -p 22 hv9/);
  });

  it('offers only the key types known for the host, so another key type is not mistaken for a change', () => {
    const text = `hv1 ${keyPart(ed)}\nhv2 ${keyPart(rsa)}\n`;
    expect(knownHostsPolicy(text, '/kh', 'hv1', 22, 'x').algorithms).toEqual(['ssh-ed25519']);
    expect(knownHostsPolicy(text, '/kh', 'hv2', 22, 'x').algorithms).toEqual(['rsa-sha2-512', 'rsa-sha2-256', 'ssh-rsa']);
    expect(knownHostsPolicy(text, '/kh', 'hv3', 22, 'x').algorithms).toBeUndefined();
  });

  it('@revoked keys are refused even when also listed; @cert-authority lines are not host keys', () => {
    const text = `hv1 ${keyPart(ed)}\n@revoked * ${keyPart(ed)}\n@cert-authority hv2 ${keyPart(ed2)}\n`;
    expect(knownHostsPolicy(text, '/kh', 'hv1', 22, 'x').check(ed.blob)).toMatchObject({ ok: false, reason: 'revoked' });
    expect(knownHostsPolicy(text, '/kh', 'hv2', 22, 'x').check(ed2.blob)).toMatchObject({ ok: false, reason: 'unknown' });
  });

  it('skips malformed lines instead of failing', () => {
    expect(parseKnownHosts('garbage\nhv1 ssh-ed25519\n\n# x\n')).toEqual([]);
  });
});
