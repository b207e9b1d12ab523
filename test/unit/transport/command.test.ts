import { describe, expect, it } from 'vitest';
import { InterruptedError, UnavailableError } from '../../../src/errors.js';
import { CommandFailedError, runCommand, runCommandBuffer, spawnWithStdout } from '../../../src/transport/command.js';
import { stdoutSocketPair } from '../../../src/transport/socket-pair.js';

describe('runCommand', () => {
  it('passes argv verbatim, without a shell', async () => {
    const r = await runCommand(['printf', '%s|', '$(id)', 'a b', "it's", '*']);
    expect(r.stdout).toBe("$(id)|a b|it's|*|");
    expect(r.exitCode).toBe(0);
  });

  it('feeds stdin and returns binary stdout untouched', async () => {
    const input = Buffer.from([0, 1, 2, 255, 10, 13, 0]);
    const r = await runCommandBuffer(['cat'], { input });
    expect(r.stdout.equals(input)).toBe(true);
  });

  it('puts the tail of stderr and the exit status into the error', async () => {
    const err = await runCommand(['sh', '-c', 'echo "rbd: image not found" >&2; exit 2']).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CommandFailedError);
    expect((err as CommandFailedError).message).toMatch(/exit status 2: rbd: image not found/);
    expect((err as CommandFailedError).status).toBe(2);
  });

  it('accepts other exit codes when asked', async () => {
    const r = await runCommand(['sh', '-c', 'exit 1'], { okExitCodes: [0, 1] });
    expect(r.exitCode).toBe(1);
  });

  it('reports a missing program as unavailable', async () => {
    await expect(runCommand(['vprotect-no-such-program-xyz'])).rejects.toBeInstanceOf(UnavailableError);
  });

  it('kills a program that runs past its timeout', async () => {
    const t0 = Date.now();
    await expect(runCommand(['sleep', '30'], { timeoutMs: 200 })).rejects.toThrow(/did not finish within 200 ms/);
    expect(Date.now() - t0).toBeLessThan(5000);
  });

  it('stops on abort and rejects with an interruption', async () => {
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 100);
    await expect(runCommand(['sleep', '30'], { signal: ac.signal })).rejects.toBeInstanceOf(InterruptedError);
  });

  it('refuses runaway output', async () => {
    await expect(runCommand(['head', '-c', '100000', '/dev/zero'], { maxOutputBytes: 1000 })).rejects.toThrow(/more than 1000 bytes/);
  });
});

describe('spawnWithStdout', () => {
  /** Runs argv with its stdout on a socket pair and collects what arrives. */
  async function spawnCollect(argv: string[]): Promise<{ received: Promise<number>; done: Promise<unknown> }> {
    let n = 0;
    let ended!: () => void;
    const received = new Promise<number>((resolve) => (ended = () => resolve(n)));
    const { theirs } = await stdoutSocketPair({ buffer: Buffer.alloc(64 * 1024), callback: (bytes) => ((n += bytes), true) }, (ours) => ours.once('end', ended));
    try {
      const c = await spawnWithStdout(argv, theirs);
      return { received, done: c.done };
    } finally {
      theirs.destroy();
    }
  }

  it('gives the program the stream as its stdout and reports the exit status afterwards', async () => {
    const { received, done } = await spawnCollect(['head', '-c', String(8 * 1024 * 1024), '/dev/zero']);
    await expect(done).resolves.toMatchObject({ exitCode: 0 });
    expect(await received).toBe(8 * 1024 * 1024);
  });

  it('rejects done with stderr when the program fails', async () => {
    const { done } = await spawnCollect(['sh', '-c', 'echo partial; echo boom >&2; exit 3']);
    await expect(done).rejects.toThrow(/exit status 3: boom/);
  });
});
