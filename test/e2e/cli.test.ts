import { execFile } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { BIN, runCli } from '../helpers/cli.js';

const examples = new URL('../../examples/', import.meta.url).pathname;

/** Every line of stdout must parse as JSON (one document, or JSON lines). */
function expectOnlyJson(stdout: string): unknown[] {
  const docs: unknown[] = [];
  const trimmed = stdout.trim();
  expect(trimmed).not.toBe('');
  try {
    docs.push(JSON.parse(trimmed));
  } catch {
    for (const line of trimmed.split('\n')) docs.push(JSON.parse(line));
  }
  return docs;
}

describe('vprotect binary', () => {
  it('prints help on stdout and exits 0', async () => {
    const r = await runCli(['--help']);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('Usage: vprotect');
    expect(r.stdout).toContain('inventory');
    expect(r.stderr).toBe('');
  });

  it('runs through its own shebang, as the npm bin link, cron and systemd start it', async () => {
    // Not through `node BIN`: the launcher's `env -S node <flags>` line is what is tested.
    const r = await new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve, reject) => {
      // A shebang env cannot split (no -S) does not fail: it hangs. Hence the timeout.
      execFile(BIN, ['--version'], { env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin' }, timeout: 20_000 }, (err, stdout, stderr) => {
        if (err && typeof err.code !== 'number') reject(err);
        else resolve({ code: err ? (err.code as number) : 0, stdout, stderr });
      });
    });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout.trim()).toMatch(/^\d+\.\d+\.\d+/);
  });

  it('prints its version', async () => {
    const r = await runCli(['--version']);
    expect(r.code).toBe(0);
    expect(r.stdout.trim()).toMatch(/^\d+\.\d+\.\d+/);
  });

  it('exits 64 on an unknown command or option, with a suggestion on stderr', async () => {
    const r = await runCli(['inventroy', 'validate']);
    expect(r.code).toBe(64);
    expect(r.stdout).toBe('');
    expect(r.stderr).toContain('Did you mean inventory?');
    const o = await runCli(['inventory', 'validate', '--bogus']);
    expect(o.code).toBe(64);
    expect(o.stderr).toContain("unknown option '--bogus'");
  });

  it('exits 78 when the default inventory is missing and says how to fix it', async () => {
    const cwd = mkdtempSync(join(tmpdir(), 'vprotect-e2e-'));
    const r = await runCli(['inventory', 'validate'], { cwd });
    expect(r.code).toBe(78);
    expect(r.stdout).toBe('');
    expect(r.stderr).toContain(`cannot read inventory ${join(cwd, 'vprotect.yaml')}: ENOENT`);
    expect(r.stderr).toContain('hint: create it');
  });

  it('takes the inventory from VPROTECT_INVENTORY and -c, -c winning', async () => {
    const ok = await runCli(['inventory', 'validate', '--offline'], { env: { VPROTECT_INVENTORY: join(examples, 'minimal.yaml') } });
    expect(ok.code).toBe(0);
    expect(ok.stdout).toContain('minimal.yaml');
    const both = await runCli(['-c', join(examples, 'nfs.yaml'), 'inventory', 'validate', '--offline'], { env: { VPROTECT_INVENTORY: '/nonexistent.yaml' } });
    expect(both.code).toBe(0);
    expect(both.stdout).toContain('nfs.yaml');
  });

  it('validates every shipped example, offline and with its files and secrets in place', async () => {
    const yamls = readdirSync(examples).filter((f) => f.endsWith('.yaml') && f !== 'lab.yaml');
    expect(yamls.length).toBeGreaterThanOrEqual(3);
    for (const f of yamls) {
      const offline = await runCli(['-c', join(examples, f), 'inventory', 'validate', '--offline']);
      expect(offline.code, `${f}: ${offline.stderr}`).toBe(0);

      // Online: put the example in a directory with the files it names, and set its variables.
      const dir = mkdtempSync(join(tmpdir(), 'vprotect-example-'));
      copyFileSync(join(examples, f), join(dir, f));
      for (const rel of ['keys/id_ed25519', 'keys/known_hosts', 'secrets/os-password', 'certs/ca.pem', 'ceph/ceph.conf', 'ceph/ceph.client.backup.keyring']) {
        mkdirSync(join(dir, rel, '..'), { recursive: true });
        writeFileSync(join(dir, rel), 'x\n');
      }
      const env = { VPROTECT_OS_PASSWORD: 'p', VPROTECT_DR_APP_SECRET: 's', VPROTECT_COMPUTE02_PASSWORD: 'c' };
      const online = await runCli(['-c', join(dir, f), 'inventory', 'validate'], { env });
      expect(online.code, `${f}: ${online.stderr}`).toBe(0);
    }
  });

  it('reports a broken inventory with exit 78: problems on stderr, nothing on stdout', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vprotect-e2e-'));
    const file = join(dir, 'bad.yaml');
    writeFileSync(file, 'version: 1\npolicies:\n  - name: p\n    strategy: libvirt-ssh\n    destination: nowhere\n    retention: {keepDaily: -1}\n');
    const r = await runCli(['-c', file, 'inventory', 'validate']);
    expect(r.code).toBe(78);
    expect(r.stdout).toBe('');
    expect(r.stderr).toContain(`${file}:6:28: policies[0].retention.keepDaily: must be an integer ≥ 0`);
    expect(r.stderr).toContain(`${file}:5:18: policies[0].destination: unknown destination "nowhere" (none is defined; add it under destinations:)`);
  });

  it('with --json, prints nothing but JSON on stdout, for results and for errors', async () => {
    const ok = await runCli(['--json', '-c', join(examples, 'minimal.yaml'), 'inventory', 'validate', '--offline']);
    expect(ok.code).toBe(0);
    expect(expectOnlyJson(ok.stdout)[0]).toMatchObject({ valid: true, policies: 1 });

    const bad = await runCli(['--json', '-c', '/nonexistent/inv.yaml', 'inventory', 'validate']);
    expect(bad.code).toBe(78);
    expect(expectOnlyJson(bad.stdout)[0]).toMatchObject({ error: { code: 'config', exitCode: 78 } });
    expect(bad.stderr).toContain('cannot read inventory');

    const usage = await runCli(['--json', 'nosuchcommand']);
    expect(usage.code).toBe(64);
    expect(expectOnlyJson(usage.stdout)[0]).toMatchObject({ error: { code: 'usage' } });
  });

  it('inventory show redacts inline secrets but keeps references', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vprotect-e2e-'));
    const file = join(dir, 'inv.yaml');
    writeFileSync(join(dir, 'key'), 'x');
    writeFileSync(
      file,
      [
        'version: 1',
        'clouds:',
        '  a: {authUrl: "http://k:5000/v3", username: u, password: "s3cr3t-inline", project: p}',
        '  b: {authUrl: "http://k:5000/v3", applicationCredential: {id: abc, secret: "app-s3cr3t"}}',
        'hypervisors:',
        '  - {name: h, address: 127.0.0.1, password: {env: HV_PW}, keyFile: ./key}',
        'cephClusters:',
        '  c: {user: volumes, monitors: ["127.0.0.1:6789"], keyring: {inline: "AQD-keyring-s3cr3t"}}',
        'destinations: {d: {type: local, path: /b}}',
        'policies: [{name: p, cloud: a, strategy: ceph-rbd, destination: d}]',
        '',
      ].join('\n'),
    );
    const r = await runCli(['--json', '-c', file, 'inventory', 'show'], { env: { HV_PW: 'env-s3cr3t' } });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout + r.stderr).not.toMatch(/s3cr3t/);
    const doc = expectOnlyJson(r.stdout)[0] as Record<string, any>;
    expect(doc['clouds']['a']['password']).toBe('<redacted>');
    expect(doc['clouds']['b']['applicationCredential']).toEqual({ id: 'abc', secret: '<redacted>' });
    expect(doc['hypervisors'][0]['password']).toEqual({ env: 'HV_PW' });
    expect(doc['cephClusters']['c']['keyring']).toEqual({ inline: '<redacted>' });
    const human = await runCli(['-c', file, 'inventory', 'show'], { env: { HV_PW: 'env-s3cr3t' } });
    expect(human.code).toBe(0);
    expect(human.stdout).toContain('password: <redacted>');
    expect(human.stdout).not.toMatch(/s3cr3t/);
  });

  it('backup --dry-run checks the destination but creates, mounts and locks nothing', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vprotect-e2e-'));
    const file = join(dir, 'inv.yaml');
    writeFileSync(join(dir, 'key'), 'x');
    const fresh = join(dir, 'not-yet', 'repo');
    const mountPoint = join(dir, 'nfs-mnt');
    writeFileSync(
      file,
      [
        'version: 1',
        'hypervisors:',
        '  - {name: h, address: 127.0.0.1, keyFile: ./key, hostKey: {fingerprint: "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU"}}',
        'destinations:',
        `  here: {type: local, path: ${fresh}}`,
        `  nas: {type: nfs, server: 192.0.2.1, export: /backup, mountPoint: ${mountPoint}, allowMount: true}`,
        '',
      ].join('\n'),
    );
    const local = await runCli(['--json', '--dry-run', '-c', file, 'backup', '--domain', 'dom1', '-d', 'here']);
    expect(local.code, local.stderr).toBe(0);
    expect(expectOnlyJson(local.stdout)[0]).toMatchObject({ dryRun: true, destination: fresh, repositoryExists: false, vms: [{ vmName: 'dom1', strategy: 'libvirt-ssh' }] });
    expect(readdirSync(dir).sort()).toEqual(['inv.yaml', 'key']);

    const human = await runCli(['--dry-run', '-c', file, 'backup', '--domain', 'dom1', '-d', 'nas']);
    expect(human.code, human.stderr).toBe(0);
    expect(human.stdout).toContain(`would create a repository in ${mountPoint}`);
    expect(human.stdout).toContain(`would back up dom1 (libvirt-ssh, auto) to ${mountPoint}`);
    expect(human.stderr).toContain(`would mount 192.0.2.1:/backup on ${mountPoint}`);
    expect(readdirSync(dir).sort()).toEqual(['inv.yaml', 'key']);
  });

  it('starts fast: --help loads no heavy module', async () => {
    // NODE_DEBUG=module lists the CommonJS modules Node loads (ESM-only packages do not show,
    // so only CommonJS ones are checked). The positive controls prove the probe sees them.
    const loaded = async (args: string[]) => (await runCli(args, { env: { NODE_DEBUG: 'module' } })).stderr;
    const help = await loaded(['--help']);
    expect(help).toMatch(/node_modules\/commander\//);
    expect(help).not.toMatch(/node_modules\/(ajv|yaml|ssh2|tar-stream|cli-progress)\//);
    // The schemas are compiled at build time: ajv's compiler does not load (its small runtime
    // helpers may, as the generated code needs them).
    const validate = await loaded(['-c', join(examples, 'minimal.yaml'), 'inventory', 'validate', '--offline']);
    expect(validate).not.toMatch(/node_modules\/ajv\/dist\/(ajv|compile)/);
    expect(validate).toMatch(/node_modules\/yaml\//);
    expect(validate).not.toMatch(/node_modules\/(ssh2|tar-stream)\//);
  });

  it('starts fast: a backup of a --domain loads SSH but neither execa nor got', async () => {
    // execa and got are ES modules; cross-spawn (execa's) and http2-wrapper (got's) are
    // CommonJS and show in NODE_DEBUG=module. ssh2 is the positive control.
    const dir = mkdtempSync(join(tmpdir(), 'vprotect-e2e-'));
    const file = join(dir, 'inv.yaml');
    writeFileSync(join(dir, 'key'), 'x');
    writeFileSync(file, ['version: 1', 'hypervisors:', '  - {name: h, address: 127.0.0.1, keyFile: ./key}', 'destinations:', `  here: {type: local, path: ${join(dir, 'repo')}}`, ''].join('\n'));
    const run = await runCli(['--dry-run', '-c', file, 'backup', '--domain', 'dom1'], { env: { NODE_DEBUG: 'module' } });
    expect(run.code, run.stderr).toBe(0);
    expect(run.stderr).toMatch(/node_modules\/ssh2\//);
    expect(run.stderr).not.toMatch(/node_modules\/(cross-spawn|http2-wrapper|tar-stream|cli-progress)\//);
  });
});
