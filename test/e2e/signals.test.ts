import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { openRepository } from '../../src/repository/repository.js';
import { BIN } from '../helpers/cli.js';

/** A repository with one full point of `size` random bytes, so a restore takes a while. */
async function repoWithPoint(size: number): Promise<{ root: string; pointId: string }> {
  const root = mkdtempSync(join(tmpdir(), 'vprotect-sig-'));
  const repo = await openRepository(root, { create: true });
  const writer = await repo.beginPoint({ vmId: 'vm-1', vmName: 'sig', level: 'full', command: 'test' });
  async function* extents() {
    for (let off = 0; off < size; off += 4 << 20) yield { offset: off, length: 4 << 20, data: randomBytes(4 << 20) };
  }
  await writer.writeDisk({ key: 'vda', size }, extents());
  const manifest = await writer.commit();
  return { root, pointId: manifest.pointId };
}

/** Starts a restore to a stdout nobody reads (so it blocks), then sends `signal`. */
function interruptRestore(root: string, pointId: string, signal: NodeJS.Signals): Promise<{ code: number | null; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, 'restore', '-d', root, '--point', pointId, '--to-stdout'], { stdio: ['ignore', 'pipe', 'pipe'], env: { PATH: process.env['PATH'] ?? '' } });
    let stderr = '';
    let sent = false;
    child.stdout.pause(); // never read: the restore fills the pipe and waits
    child.stderr.setEncoding('utf8').on('data', (d: string) => {
      stderr += d;
      if (!sent && stderr.includes('restoring')) {
        sent = true;
        setTimeout(() => child.kill(signal), 300);
      }
    });
    const guard = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`no exit within 20 s after ${signal}; stderr: ${stderr}`));
    }, 20_000);
    child.on('close', (code) => {
      clearTimeout(guard);
      resolve({ code, stderr });
    });
  });
}

describe('signals', () => {
  it('SIGTERM ends a blocked restore cleanly with exit 143', async () => {
    const { root, pointId } = await repoWithPoint(64 << 20);
    const r = await interruptRestore(root, pointId, 'SIGTERM');
    expect(r.stderr).toContain('SIGTERM received');
    expect(r.code).toBe(143);
  });

  it('SIGINT (Ctrl-C) ends it with exit 130', async () => {
    const { root, pointId } = await repoWithPoint(64 << 20);
    const r = await interruptRestore(root, pointId, 'SIGINT');
    expect(r.code).toBe(130);
  });
});
