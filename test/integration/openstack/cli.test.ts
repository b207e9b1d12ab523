/** `vprotect sync` as a user runs it (the built bin/vprotect), against the lab's cloud. */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { runCli } from '../../helpers/cli.js';
import { requireLab } from '../../helpers/lab.js';
import { labOpenStack } from './lab.js';

requireLab('openstack', 'hypervisor');
const lab = labOpenStack();
const LAB_YAML = fileURLToPath(new URL('../../../examples/lab.yaml', import.meta.url));

function inventoryWith(cloud: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'vprotect-sync-'));
  const file = join(dir, 'vprotect.yaml');
  writeFileSync(file, `version: 1\nclouds:\n  lab:\n${cloud}\ndestinations:\n  d: {type: local, path: ${dir}}\n`);
  return file;
}

describe('vprotect sync (CLI, lab)', () => {
  it('--json: one document with instances, hypervisors reachable over SSH, warnings', async () => {
    const r = await runCli(['-c', LAB_YAML, 'sync', '--json'], { timeoutMs: 180_000 });
    expect(r.stderr).not.toMatch(/lab-backup-pass|gAAAA/);
    expect(r.code).toBe(0);
    const doc = JSON.parse(r.stdout);
    expect(doc.clouds[0]).toMatchObject({ cloud: 'lab', admin: true, user: 'acme\\backup' });
    for (const c of lab.computes) expect(doc.clouds[0].hypervisors.find((h: any) => h.name === c.hypervisorHostname)).toMatchObject({ inInventory: true, reachability: { reachable: true } });
  }, 200_000);

  it('human output names clouds, instances and hypervisors', async () => {
    const r = await runCli(['-c', LAB_YAML, 'sync', '--no-ssh'], { timeoutMs: 180_000 });
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^cloud lab — acme\\backup on acme-prod@acme \(admin: all projects\)/);
    expect(r.stdout).toMatch(/hypervisors \(\d+\)/);
    expect(r.stdout).toMatch(/reachable \(tcp\)/);
  }, 200_000);

  it('wrong password: exit 77 naming user and domain', async () => {
    const inv = inventoryWith(`    authUrl: ${lab.authUrl}\n    username: 'acme\\backup'\n    password: wrong-password\n    project: acme-prod\n    projectDomain: acme`);
    const r = await runCli(['-c', inv, 'sync'], { timeoutMs: 60_000 });
    expect(r.code).toBe(77);
    expect(r.stderr).toContain('refused user "backup" in domain "acme"');
    expect(r.stderr).not.toContain('wrong-password');
    expect(r.stderr).not.toMatch(/\n\s+at /); // no stack trace
  });

  it('unreachable Keystone: exit 69, no stack trace', async () => {
    const inv = inventoryWith(`    authUrl: http://127.0.0.1:5999/v3\n    username: admin\n    password: x\n    project: admin`);
    const r = await runCli(['-c', inv, 'sync', '--json'], { timeoutMs: 120_000 });
    expect(r.code).toBe(69);
    expect(JSON.parse(r.stdout.trim().split('\n').pop()!).error).toMatchObject({ code: 'unavailable', exitCode: 69 });
    expect(r.stderr).toContain('cannot reach identity at http://127.0.0.1:5999');
    expect(r.stderr).not.toMatch(/\n\s+at /);
  }, 120_000);

  it('no inventory: --os-cloud from clouds.yaml (OS_CLIENT_CONFIG_FILE)', async () => {
    const cwd = mkdtempSync(join(tmpdir(), 'vprotect-noinv-'));
    const r = await runCli(['sync', '--os-cloud', 'lab-backup', '--no-ssh', '--json'], { cwd, env: { OS_CLIENT_CONFIG_FILE: lab.cloudsYaml }, timeoutMs: 180_000 });
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout).clouds[0]).toMatchObject({ cloud: 'lab-backup', project: 'acme-prod@acme' });
    expect(r.stderr).toContain('no inventory');
  }, 200_000);
});
