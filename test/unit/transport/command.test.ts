import { describe, expect, it } from 'vitest';
import { InterruptedError, UnavailableError } from '../../../src/errors.js';
import { CommandFailedError, runCommand, runCommandBuffer, streamCommand } from '../../../src/transport/command.js';

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

describe('streamCommand', () => {
  it('streams stdout and reports the exit status afterwards', async () => {
    const c = streamCommand(['head', '-c', String(8 * 1024 * 1024), '/dev/zero']);
    let n = 0;
    for await (const chunk of c.stdout) n += (chunk as Buffer).length;
    expect(n).toBe(8 * 1024 * 1024);
    await expect(c.done).resolves.toMatchObject({ exitCode: 0 });
  });

  it('rejects done with stderr when the program fails', async () => {
    const c = streamCommand(['sh', '-c', 'echo partial; echo boom >&2; exit 3']);
    for await (const _ of c.stdout) void _;
    await expect(c.done).rejects.toThrow(/exit status 3: boom/);
  });
});
