/**
 * An incremental written by vprotect is a real "rbd diff v1": the lab's Ceph imports the chain
 * with stock `rbd import` + `rbd import-diff` (as docs/FORMAT.md §10 tells users) and every
 * snapshot it creates holds exactly the bytes of the matching point.
 * Needs the lab's Ceph (`npm run lab:up`); fails, never skips, when it is down.
 */
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCommand, runCommandBuffer } from '../../../src/transport/command.js';
import { requireLab, type Lab } from '../../helpers/lab.js';
import { tempDir } from './helpers.js';
import { buildChain, pointDir, type Fixture } from './fixtures.js';

let lab: Lab;
let dir: { path: string; cleanup: () => Promise<void> };
let f: Fixture;
const image = `volumes/vprotect-test-${randomBytes(3).toString('hex')}`;
const rbd = (...args: string[]) => ['rbd', '--conf', lab.ceph!.conf, '--keyring', lab.ceph!.keyring, '--id', lab.ceph!.user, ...args];

beforeAll(async () => {
  lab = requireLab('ceph');
  dir = await tempDir();
  f = await buildChain(join(dir.path, 'repo'), { incrementals: 3, seed: 21 });
});
afterAll(async () => {
  if (lab) {
    await runCommand(rbd('snap', 'purge', image)).catch(() => {});
    await runCommand(rbd('rm', image)).catch(() => {});
  }
  await dir?.cleanup();
});

describe('rbd import-diff', () => {
  it('imports the full and each incremental; every snapshot equals its point', async () => {
    const [full, ...incs] = f.points as [string, ...string[]];
    await runCommand(rbd('import', join(pointDir(f, full), 'disks', 'vda.raw'), image), { timeoutMs: 120_000 });
    await runCommand(rbd('snap', 'create', `${image}@${full}`));
    for (const p of incs) await runCommand(rbd('import-diff', join(pointDir(f, p), 'disks', 'vda.rbdiff'), image), { timeoutMs: 120_000 });
    for (const p of f.points) {
      const out = await runCommandBuffer(rbd('export', `${image}@${p}`, '-'), { timeoutMs: 120_000, maxOutputBytes: 64 << 20 });
      expect(out.stdout.equals(f.expected.get(p)!['vda']!), `snapshot ${p}`).toBe(true);
    }
    // And the file itself starts as the format says.
    expect((await readFile(join(pointDir(f, incs[0]!), 'disks', 'vda.rbdiff'))).subarray(0, 12).toString()).toBe('rbd diff v1\n');
  });
});
