import { mkdtempSync, writeFileSync, chmodSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ConfigError } from '../../../src/errors.js';
import { formatProblem } from '../../../src/inventory/document.js';
import { parseInventory } from '../../../src/inventory/load.js';

const dir = mkdtempSync(join(tmpdir(), 'vprotect-inv-'));
const FILE = join(dir, 'inv.yaml');
writeFileSync(join(dir, 'id_ed25519'), 'not really a key\n');

const base = `version: 1
clouds:
  lab:
    authUrl: http://127.0.0.1:5000/v3
    username: 'acme\\backup'
    password: {env: OS_PASSWORD}
    project: acme-prod
    projectDomain: acme
hypervisors:
  - name: hv1
    address: 127.0.0.1
    port: 2222
    keyFile: ./id_ed25519
destinations:
  local: {type: local, path: /tmp/backups}
policies:
  - name: nightly
    strategy: libvirt-ssh
    destination: local
    retention: {keepDaily: 7}
`;

/** The problems of an inventory, each as "line:column: path: message". */
function problems(text: string, env: Record<string, string> = { OS_PASSWORD: 'pw' }): string[] {
  try {
    parseInventory(FILE, text, { env });
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as ConfigError).exitCode).toBe(78);
    return (err as ConfigError).problems.map((p) => formatProblem(p).slice(FILE.length + 1));
  }
  return [];
}

describe('inventory validation', () => {
  it('accepts a valid inventory and makes relative paths absolute', () => {
    const inv = parseInventory(FILE, base, { env: { OS_PASSWORD: 'pw' } });
    expect(inv.hypervisors[0]!.keyFile).toBe(join(dir, 'id_ed25519'));
    expect(inv.policies[0]!.retention).toEqual({ keepDaily: 7 });
  });

  it('words integer bounds the way the docs promise', () => {
    expect(problems(base.replace('keepDaily: 7', 'keepDaily: -1'))).toEqual(['20:28: policies[0].retention.keepDaily: must be an integer ≥ 0']);
    expect(problems(base.replace('keepDaily: 7', 'keepDaily: seven'))).toEqual(['20:28: policies[0].retention.keepDaily: must be an integer ≥ 0']);
    expect(problems(base.replace('port: 2222', 'port: 70000'))).toEqual(['12:11: hypervisors[0].port: must be an integer ≥ 1 and ≤ 65535']);
  });

  it('suggests the nearest key for a misspelt one and points at the key', () => {
    expect(problems(base.replace('retention:', 'retension:'))).toEqual(['20:5: policies[0].retension: unknown key; did you mean "retention"?']);
    expect(problems(base.replace('    keyFile:', '    keyfile:'))).toEqual([
      '10:5: hypervisors[0]: needs keyFile or password for SSH',
      '13:5: hypervisors[0].keyfile: unknown key; did you mean "keyFile"?',
    ]);
  });

  it('lists the valid keys when nothing is close', () => {
    expect(problems(base.replace('  local: {type: local, path: /tmp/backups}', '  local: {type: local, path: /tmp/backups, colour: blue}'))).toEqual([
      '15:44: destinations.local.colour: unknown key; valid keys here: type, path',
    ]);
  });

  it('reports every problem at once, in file order', () => {
    const text = base.replace('port: 2222', 'port: "22"').replace('strategy: libvirt-ssh', 'strategy: libvirt').replace('keepDaily: 7', 'keepDaily: 1.5');
    expect(problems(text)).toEqual([
      '12:11: hypervisors[0].port: must be an integer ≥ 1 and ≤ 65535',
      '18:15: policies[0].strategy: must be one of: libvirt-ssh, ceph-rbd, cinder-attach',
      '20:28: policies[0].retention.keepDaily: must be an integer ≥ 0',
    ]);
  });

  it('checks the fields of the destination type that `type` names', () => {
    expect(problems(base.replace('{type: local, path: /tmp/backups}', '{type: nfs, server: nas, export: /x, mountpoint: /mnt}'))).toEqual([
      '15:10: destinations.local.mountPoint: is required',
      '15:47: destinations.local.mountpoint: unknown key; did you mean "mountPoint"?',
    ]);
    expect(problems(base.replace('{type: local, path: /tmp/backups}', '{type: s3, path: /x}'))).toEqual(['15:17: destinations.local.type: must be one of: local, nfs']);
  });

  it('names missing required keys with their allowed values', () => {
    expect(problems(base.replace('    strategy: libvirt-ssh\n', ''))).toEqual(['17:5: policies[0].strategy: is required (one of: libvirt-ssh, ceph-rbd, cinder-attach)']);
    expect(problems(base.replace('version: 1\n', ''))).toEqual(['1:1: version: is required']);
  });

  it('never echoes a secret, and says which variable is missing', () => {
    const text = base.replace("password: {env: OS_PASSWORD}", 'password: {env: OS_PASSWORD, value: hunter2}');
    const found = problems(text);
    expect(found).toEqual(['6:15: clouds.lab.password: must be a string, {env: VARIABLE} or {file: PATH}']);
    expect(found.join('\n')).not.toContain('hunter2');
    expect(problems(base, {})).toEqual(['6:21: clouds.lab.password.env: environment variable OS_PASSWORD is not set (export it, or use {file: PATH})']);
    const inline = base.replace('password: {env: OS_PASSWORD}', 'password: 12345');
    expect(problems(inline).join('\n')).not.toContain('12345');
  });

  it('reports a missing password file and an unreadable key file', () => {
    expect(problems(base.replace('{env: OS_PASSWORD}', '{file: ./nope}'))).toEqual([`6:22: clouds.lab.password.file: cannot read ${join(dir, 'nope')}: ENOENT`]);
    const locked = join(dir, 'locked-key');
    writeFileSync(locked, 'x');
    chmodSync(locked, 0o000);
    const text = base.replace('./id_ed25519', './missing_key');
    expect(problems(text)).toEqual([`13:14: hypervisors[0].keyFile: cannot read SSH key file ${join(dir, 'missing_key')}: no such file`]);
  });

  it('checks regular expressions and cron expressions', () => {
    const text = base.replace('    retention:', "    select: {nameRegex: 'web-(['}\n    schedules: [{level: full, when: '61 2 * * *'}]\n    retention:");
    expect(problems(text)).toEqual([
      "20:25: policies[0].select.nameRegex: is not a valid regular expression: /web-([/: Unterminated character class",
      '21:37: policies[0].schedules[0].when: minute field "61": "61" is outside 0-59',
    ]);
  });

  it('checks references between sections', () => {
    expect(problems(base.replace('destination: local', 'destination: nas'))).toEqual(['19:18: policies[0].destination: unknown destination "nas" (defined: local)']);
  });

  it('validates strategy options with the strategy\'s schema', () => {
    const text = base.replace('    retention:', '    strategyOptions: {mode: checkpiont, transprot: ssh}\n    retention:');
    expect(problems(text)).toEqual([
      '20:29: policies[0].strategyOptions.mode: must be one of: auto, checkpoint, snapshot',
      '20:41: policies[0].strategyOptions.transprot: unknown key; did you mean "transport"?',
    ]);
  });

  it('reports YAML syntax errors with their position', () => {
    expect(problems('version: 1\nclouds:\n  lab: {authUrl: x\n')).toEqual(['4:1: Flow map in block collection must be sufficiently indented and end with a }']);
    expect(problems('version: 1\nversion: 1\n')).toEqual(['2:1: Map keys must be unique']);
  });

  it('explains an empty file and a wrong type at the top', () => {
    expect(problems('')).toEqual(['1:1: the inventory is empty; start from examples/minimal.yaml']);
    expect(problems('- 1\n- 2\n')).toEqual(['1:1: must be a mapping (key: value)']);
  });

  it('rejects conflicting domain settings', () => {
    expect(problems(base.replace("    project: acme-prod", "    userDomain: acme\n    project: acme-prod"))).toEqual([
      '7:17: clouds.lab.userDomain: the user domain is already given in username ("domain\\user"); remove one of them',
    ]);
  });
});
