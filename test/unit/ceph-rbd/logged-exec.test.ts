import { describe, expect, it } from 'vitest';
import { loggedExec, type CommandExec, type StreamingExec } from '../../../strategies/ceph-rbd/exec.js';
import { rejectionOf } from '../../helpers/errors.js';

function capture() {
  const lines: { message: string; fields: Record<string, unknown> }[] = [];
  const log = { debug: (message: string, fields: Record<string, unknown> = {}) => void lines.push({ message, fields }), info() {}, warn() {}, error() {} };
  return { log, lines };
}

function fakeExec(outcome: 'ok' | 'fail'): CommandExec {
  return {
    where: 'the backup node',
    run: async () => {
      if (outcome === 'fail') throw new Error('rbd: error opening image x: (2) No such file or directory');
      return { stdout: 'out', stderr: '' };
    },
    stream: async (): Promise<StreamingExec> => ({
      stdout: (async function* () {})(),
      done: outcome === 'ok' ? Promise.resolve() : Promise.reject(new Error('rbd: export-diff failed')),
      kill() {},
    }),
  };
}

describe('loggedExec', () => {
  it('logs each command with where it ran and its duration, and passes the result through', async () => {
    const { log, lines } = capture();
    const exec = loggedExec(fakeExec('ok'), log);
    expect(exec.where).toBe('the backup node');
    expect(await exec.run(['rbd', 'snap', 'ls', 'volumes/img'])).toEqual({ stdout: 'out', stderr: '' });
    expect(lines).toHaveLength(1);
    expect(lines[0]!.message).toBe('command');
    expect(lines[0]!.fields).toMatchObject({ where: 'the backup node', command: 'rbd snap ls volumes/img' });
    expect(typeof lines[0]!.fields['ms']).toBe('number');
  });

  it('logs a failed command with its error and rethrows the same error', async () => {
    const { log, lines } = capture();
    const err = await rejectionOf(loggedExec(fakeExec('fail'), log).run(['rbd', 'info', 'volumes/x']));
    expect((err as Error).message).toMatch(/No such file/);
    expect(lines.map((l) => l.message)).toEqual(['command failed']);
    expect(lines[0]!.fields['error']).toMatch(/No such file/);
  });

  it('logs a stream when it starts and when it ends, or fails, without an unhandled rejection', async () => {
    const ok = capture();
    const s = await loggedExec(fakeExec('ok'), ok.log).stream(['rbd', 'export-diff', 'volumes/img@s2', '-']);
    await s.done;
    await new Promise((r) => setImmediate(r));
    expect(ok.lines.map((l) => l.message)).toEqual(['command started (streaming)', 'command ended (streaming)']);

    // The failing stream's `done` is left unobserved over a macrotask: loggedExec's own handler
    // must keep it from being an unhandled rejection.
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown) => void unhandled.push(reason);
    process.on('unhandledRejection', onUnhandled);
    try {
      const bad = capture();
      const f = await loggedExec(fakeExec('fail'), bad.log).stream(['rbd', 'export-diff', 'volumes/img@s2', '-']);
      await new Promise((r) => setTimeout(r, 20));
      expect(unhandled).toEqual([]);
      expect(bad.lines.map((l) => l.message)).toEqual(['command started (streaming)', 'command failed (streaming)']);
      await expect(f.done).rejects.toThrow(/export-diff failed/);
    } finally {
      process.off('unhandledRejection', onUnhandled);
    }
  });
});
