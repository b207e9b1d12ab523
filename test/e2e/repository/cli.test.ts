/** The repository commands through the built binary: exit codes, --json, files restored. */
import { spawn } from 'node:child_process';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BIN, runCli } from '../../helpers/cli.js';
import { buildChain, type Fixture } from '../../integration/repository/fixtures.js';
import { tempDir } from '../../integration/repository/helpers.js';

let dir: { path: string; cleanup: () => Promise<void> };
let f: Fixture;
let repo: string;
beforeAll(async () => {
  dir = await tempDir('vprotect-cli-');
  repo = join(dir.path, 'repo');
  f = await buildChain(repo, { incrementals: 3, seed: 11 });
});
afterAll(async () => {
  await dir.cleanup();
});

const cli = (...args: string[]) => runCli([...args, '-d', repo]);
const json = async (...args: string[]) => {
  const r = await runCli(['--json', ...args, '-d', repo]);
  return { ...r, doc: JSON.parse(r.stdout) as Record<string, any> };
};

describe('repository commands', () => {
  it('list --json shows the chain with levels, sizes and status', async () => {
    const r = await json('list');
    expect(r.code).toBe(0);
    const points = r.doc['vms'][0].chains[0].points;
    expect(points.map((p: { pointId: string }) => p.pointId)).toEqual(f.points);
    expect(points.map((p: { level: string }) => p.level)).toEqual(['full', 'incremental', 'incremental', 'incremental']);
    expect(points[0]).toMatchObject({ status: 'complete', logicalBytes: f.disks.vda!.size + f.disks.vdb!.size });
    expect((await cli('list', '--vm', 'web')).stdout).toContain(f.points[2]);
    expect((await cli('list', '--vm', 'nope')).code).toBe(64);
  });

  it('show names what a point depends on and what depends on it', async () => {
    const r = await json('show', f.points[1]!);
    expect(r.doc).toMatchObject({ pointId: f.points[1], dependsOn: [f.points[0]], dependents: f.points.slice(2) });
  });

  it('restore --to-file (raw and qcow2) and --to-stdout give the bytes of the point', async () => {
    const p = f.points[2]!;
    const raw = join(dir.path, 'vda.raw');
    const r = await cli('restore', '--point', p, '--disk', 'vda', '--to-file', raw);
    expect(r.code, r.stderr).toBe(0);
    expect((await readFile(raw)).equals(f.expected.get(p)!['vda']!)).toBe(true);

    const q = join(dir.path, 'vda.qcow2');
    expect((await cli('restore', '--point', p, '--disk', 'vda', '--to-file', q, '--format', 'qcow2')).code).toBe(0);
    const back = join(dir.path, 'vda-from-qcow2.raw');
    await new Promise((res, rej) => spawn('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', q, back]).on('exit', (c) => (c === 0 ? res(c) : rej(new Error(`qemu-img ${c}`)))));
    // qcow2 sizes are whole 512-byte sectors: the tail past the disk's size reads as zeros.
    const fromQcow2 = await readFile(back);
    const want = f.expected.get(p)!['vda']!;
    expect(fromQcow2.length).toBe(Math.ceil(want.length / 512) * 512);
    expect(fromQcow2.subarray(0, want.length).equals(want)).toBe(true);
    expect(fromQcow2.subarray(want.length).every((b) => b === 0)).toBe(true);

    const out = await new Promise<Buffer>((resolve, reject) => {
      const child = spawn(process.execPath, [BIN, 'restore', '--point', p, '--disk', 'vdb', '--to-stdout', '-d', repo]);
      const parts: Buffer[] = [];
      child.stdout.on('data', (d: Buffer) => parts.push(d));
      child.on('error', reject);
      child.on('close', (code) => (code === 0 ? resolve(Buffer.concat(parts)) : reject(new Error(`exit ${code}`))));
    });
    expect(out.equals(f.expected.get(p)!['vdb']!)).toBe(true);

    const noDisk = await cli('restore', '--point', p, '--to-file', raw);
    expect(noDisk.code).toBe(64);
    expect(noDisk.stderr).toContain('--disk');
  });

  it('verify exits 0 on a clean repository and 65 naming the damaged file and the points that depend on it', async () => {
    expect((await cli('verify', '--all', '--read-data')).code).toBe(0);
    const copy = join(dir.path, 'damaged');
    await mkdir(copy);
    await new Promise((res) => spawn('cp', ['-a', `${repo}/.`, copy]).on('exit', res));
    const file = join(copy, 'vms', 'vm-1', 'chains', f.points[0]!, f.points[2]!, 'disks', 'vda.rbdiff.idx');
    const text = await readFile(file, 'utf8');
    await writeFile(file, text.replace(/\nw /, '\nz '));
    const r = await runCli(['verify', f.points[3]!, '-d', copy]);
    expect(r.code).toBe(65);
    expect(r.stdout).toContain(file);
    expect(r.stderr).toContain(`${f.points[2]}, ${f.points[3]}`);
    const rj = await runCli(['--json', 'verify', '--all', '-d', copy]);
    expect(rj.code).toBe(65);
    // --json: progress events as JSON lines, then the error document last.
    const last = JSON.parse(rj.stdout.trim().split('\n').at(-1)!);
    expect(last.error.data.damage[0].affectedPoints).toEqual(f.points.slice(2));
  });

  it('prune --dry-run says why each point stays; a held lock makes merge exit 75 naming the holder; unlock removes a dead holder', async () => {
    const pr = await cli('prune', '--dry-run', '--keep-last', '1');
    expect(pr.code).toBe(0);
    expect(pr.stdout).toContain('newest point');
    expect(pr.stdout).toContain(`needed by ${f.points[3]}`);
    expect((await cli('prune')).code).toBe(64);

    const lockDir = join(repo, 'locks', 'vm-1.lock');
    await mkdir(lockDir, { recursive: true });
    await writeFile(join(lockDir, 'owner.json'), JSON.stringify({ host: hostname(), pid: process.pid, command: 'backup', startedAt: new Date().toISOString() }));
    const locked = await cli('merge', f.points[0]!);
    expect(locked.code).toBe(75);
    expect(locked.stderr).toContain(`pid ${process.pid}`);
    expect((await cli('unlock', 'vm-1')).code).toBe(75); // the holder (this test) still runs
    await writeFile(join(lockDir, 'owner.json'), JSON.stringify({ host: 'elsewhere', pid: 1, command: 'backup', startedAt: new Date().toISOString() }));
    const u = await cli('unlock', 'vm-1');
    expect(u.code).toBe(0);
    expect(u.stdout).toContain('elsewhere');
  });

  it('export | import gives a new full point with the same bytes; merge folds a chain', async () => {
    const tarFile = join(dir.path, 'point.tar');
    expect((await cli('export', f.points[3]!, '-o', tarFile)).code).toBe(0);
    const other = join(dir.path, 'other-repo');
    const imp = await runCli(['--json', 'import', tarFile, '-d', other]);
    expect(imp.code, imp.stderr).toBe(0);
    const newPoint = JSON.parse(imp.stdout).point as string;
    const raw = join(dir.path, 'imported-vda.raw');
    expect((await runCli(['restore', '--point', newPoint, '--disk', 'vda', '--to-file', raw, '-d', other])).code).toBe(0);
    expect((await readFile(raw)).equals(f.expected.get(f.points[3]!)!['vda']!)).toBe(true);

    const m = await json('merge', f.points[0]!, '--keep', '1');
    expect(m.code).toBe(0);
    expect(m.doc).toMatchObject({ base: f.points[2], incrementalsLeft: 1 });
    expect((await cli('verify', '--all', '--read-data')).code).toBe(0);
  });
});
