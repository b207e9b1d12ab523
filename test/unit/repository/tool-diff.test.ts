/**
 * The repository following a diff that a separate process writes into the point (tool-diff.ts),
 * with a real process standing in for `rbd export-diff … <file>`: it creates the file with
 * O_EXCL like rbd and writes the stream in slices with pauses, so the follower really catches up
 * with a growing file. The real rbd is exercised by test/integration/ceph-rbd.
 */
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { DataCorruptError, InterruptedError, UnavailableError, UsageError } from '../../../src/errors.js';
import { loadDiffIndex } from '../../../src/repository/diff-index.js';
import { encodePreamble, encodeRbdDiff, encodeSize, encodeZero, parseRbdDiff } from '../../../src/repository/rbd-diff.js';
import { writeToolDiffDisk, type ToolDiff, type ToolRun } from '../../../src/repository/tool-diff.js';

const MiB = 1 << 20;
const SIZE = 64 * MiB;
const PARENT = '20261125T100000Z-aaaa';
const POINT = '20261125T110000Z-bbbb';
const FROM = `vprotect-${PARENT}`;
const TO = `vprotect-${POINT}`;

/** Writes argv[1] into argv[2] (O_EXCL) in slices of argv[3] bytes, pausing argv[4] ms, then exits with argv[5]. */
const WRITER = `
const fs = require('fs');
const [src, dst, slice, pause, code, hang] = process.argv.slice(1);
const data = fs.readFileSync(src);
const fd = fs.openSync(dst, 'wx');
let at = 0;
const step = () => {
  if (at >= data.length) { if (hang === '1') return setTimeout(() => {}, 1e9); process.exit(Number(code)); }
  fs.writeSync(fd, data, at, Math.min(Number(slice), data.length - at));
  at += Number(slice);
  setTimeout(step, Number(pause));
};
step();
`;

let dir: string;
let pointDir: string;
const started: { pid: number; exited: () => boolean }[] = [];

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'vprotect-tool-diff-'));
  pointDir = join(dir, 'point');
  mkdirSync(join(pointDir, 'disks'), { recursive: true });
});
afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}

function extents() {
  return [
    { offset: 0, length: 4 * MiB, data: randomBytes(4 * MiB) },
    { offset: 8 * MiB, length: 64 * 1024 },
    { offset: 9 * MiB, length: 3 * MiB + 5, data: randomBytes(3 * MiB + 5) },
    { offset: 20 * MiB, length: 4096, data: Buffer.alloc(4096) },
  ];
}

async function stream(opts: { from?: string; to?: string; size?: number; list?: ReturnType<typeof extents> } = {}): Promise<Buffer> {
  return Buffer.concat(await collect(encodeRbdDiff({ fromSnap: opts.from ?? FROM, toSnap: opts.to ?? TO, size: opts.size ?? SIZE }, opts.list ?? extents())));
}

/** A tool whose process writes `bytes` (or the first `upTo` of them) and exits with `code`. */
function fakeTool(bytes: Buffer, opts: { code?: number; upTo?: number; slice?: number; pauseMs?: number; hang?: boolean; idleTimeoutMs?: number } = {}): ToolDiff & { starts: number } {
  const src = join(dir, `src-${randomBytes(3).toString('hex')}`);
  writeFileSync(src, bytes.subarray(0, opts.upTo ?? bytes.length));
  const tool = {
    starts: 0,
    what: 'fake export-diff',
    header: { fromSnap: FROM, toSnap: TO, size: SIZE },
    ...(opts.idleTimeoutMs ? { idleTimeoutMs: opts.idleTimeoutMs } : {}),
    async start(path: string): Promise<ToolRun> {
      tool.starts++;
      const child = spawn(process.execPath, ['-e', WRITER, src, path, String(opts.slice ?? 1 << 20), String(opts.pauseMs ?? 5), String(opts.code ?? 0), opts.hang ? '1' : '0'], { stdio: ['ignore', 'ignore', 'pipe'] });
      let exited = false;
      started.push({ pid: child.pid!, exited: () => exited });
      let stderr = '';
      child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
      const done = new Promise<void>((resolve, reject) =>
        child.on('close', (code, signal) => {
          exited = true;
          if (code === 0) resolve();
          else reject(new Error(`fake export-diff failed (${code ?? signal}): ${stderr}`));
        }),
      );
      done.catch(() => {});
      return { done, kill: () => void child.kill() };
    },
  };
  return tool;
}

const write = (tool: ToolDiff, extra: { signal?: AbortSignal; onRecord?: (end: number) => void } = {}) => writeToolDiffDisk({ pointDir, key: 'vda', size: SIZE, fromSnap: PARENT, toSnap: POINT, ...extra }, tool);

function leftFiles(): string[] {
  return readdirSync(join(pointDir, 'disks'));
}

describe('a diff written by the source tool into the point', () => {
  it('keeps the tool\'s records byte for byte, with the repository\'s names in a preamble of the same length', async () => {
    const bytes = await stream();
    const ends: number[] = [];
    const written = await write(fakeTool(bytes, { slice: 300_000, pauseMs: 3 }), { onRecord: (e) => ends.push(e) });
    const stored = readFileSync(join(pointDir, written.file));
    expect(stored.length).toBe(bytes.length);
    const toolPreamble = encodePreamble({ fromSnap: FROM, toSnap: TO, size: SIZE }).length;
    // Everything after the preamble is the tool's, unchanged.
    expect(stored.subarray(toolPreamble).equals(bytes.subarray(toolPreamble))).toBe(true);
    const items = await collect(parseRbdDiff((async function* () { yield stored; })(), { what: 'stored' }));
    expect(items.filter((i) => i.type === 'from' || i.type === 'to').map((i) => (i as { name: string }).name)).toEqual([PARENT, POINT]);
    // The 18 bytes the names lost are two more size records of the same size.
    expect(items.filter((i) => i.type === 'size')).toEqual([1, 2, 3].map(() => ({ type: 'size', size: SIZE })));
    expect(written.stats).toEqual({ changedBytes: 4 * MiB + 64 * 1024 + 3 * MiB + 5 + 4096, dataBytes: 4 * MiB + 3 * MiB + 5 + 4096, zeroBytes: 64 * 1024, storedBytes: bytes.length, records: 4 });
    expect(ends).toEqual([4 * MiB, 8 * MiB + 64 * 1024, 12 * MiB + 5, 20 * MiB + 4096]);

    // The index: the records where the tool put them, each w record with the sha256 of its data.
    const index = await loadDiffIndex(join(pointDir, written.index!), { size: SIZE, firstFileOffset: encodePreamble({ fromSnap: PARENT, toSnap: POINT, size: SIZE }).length, diffFileSize: stored.length, what: 'index' });
    expect(index.count).toBe(4);
    const parsed = items.filter((i) => i.type === 'data');
    const firstData = parsed[0] as { record: { fileOffset: number; length: number } };
    expect(index.fileOffsets[0]).toBe(toolPreamble);
    const data0 = stored.subarray(firstData.record.fileOffset + 17, firstData.record.fileOffset + 17 + firstData.record.length);
    expect(index.digest(0).equals(createHash('sha256').update(data0).digest())).toBe(true);
    const sumsLine = written.sums[0]!;
    expect(sumsLine.sha256).toBe(createHash('sha256').update(readFileSync(join(pointDir, written.index!))).digest('hex'));
    expect(leftFiles().sort()).toEqual(['vda.rbdiff', 'vda.rbdiff.idx']);
  });

  it('stores a diff without records', async () => {
    const bytes = await stream({ list: [] });
    const written = await write(fakeTool(bytes));
    expect(written.stats.records).toBe(0);
    const stored = readFileSync(join(pointDir, written.file));
    expect(stored.length).toBe(bytes.length);
    await loadDiffIndex(join(pointDir, written.index!), { size: SIZE, firstFileOffset: encodePreamble({ fromSnap: PARENT, toSnap: POINT, size: SIZE }).length, diffFileSize: stored.length, what: 'index' });
  });

  it('fails with the tool\'s own error when it fails, and leaves nothing', async () => {
    const bytes = await stream();
    await expect(write(fakeTool(bytes, { upTo: 5 * MiB, code: 3 }))).rejects.toThrow(/fake export-diff failed \(3\)/);
    expect(leftFiles()).toEqual([]);
  });

  it('refuses a truncated stream from a tool that exits 0', async () => {
    const bytes = await stream();
    const err = await write(fakeTool(bytes, { upTo: bytes.length - 100 })).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DataCorruptError);
    expect((err as Error).message).toMatch(/truncated rbd diff/);
    expect(leftFiles()).toEqual([]);
  });

  it('refuses a stream of other snapshots, and stops the tool', async () => {
    const bytes = await stream({ from: 'vprotect-20261125T090000Z-cccc' });
    const tool = fakeTool(bytes, { slice: 64 * 1024, pauseMs: 20 });
    const err = await write(tool).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DataCorruptError);
    expect((err as Error).message).toMatch(/relative to snapshot vprotect-20261125T090000Z-cccc, expected snapshot vprotect-20261125T100000Z-aaaa/);
    expect(started.at(-1)!.exited()).toBe(true);
    expect(leftFiles()).toEqual([]);
  });

  it('stops a tool whose file stops growing', async () => {
    const bytes = await stream();
    const err = await write(fakeTool(bytes, { upTo: 200, hang: true, idleTimeoutMs: 300 })).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UnavailableError);
    expect((err as Error).message).toMatch(/fake export-diff wrote nothing for 0 s and was stopped/);
    expect(started.at(-1)!.exited()).toBe(true);
    expect(leftFiles()).toEqual([]);
  });

  it('stops the tool when the run is interrupted', async () => {
    const bytes = await stream();
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 100);
    await expect(write(fakeTool(bytes, { slice: 64 * 1024, pauseMs: 20 }), { signal: ac.signal })).rejects.toBeInstanceOf(InterruptedError);
    expect(started.at(-1)!.exited()).toBe(true);
    expect(leftFiles()).toEqual([]);
  });

  it('does not start a tool whose snapshot names the repository\'s cannot replace in place', async () => {
    const bytes = await stream();
    const tool = fakeTool(bytes);
    tool.header = { fromSnap: 'a', toSnap: 'b', size: SIZE };
    const err = await write(tool).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UsageError);
    expect(tool.starts).toBe(0);
  });

  it('refuses a record longer than the repository allows', async () => {
    const bytes = await stream({ list: [{ offset: 0, length: 4 * MiB + 1, data: randomBytes(4 * MiB + 1) }] });
    await expect(write(fakeTool(bytes))).rejects.toThrow(/a record of 4194305 bytes .* is longer than the repository's 4194304/);
    expect(leftFiles()).toEqual([]);
  });

  it('fails when the tool exits without writing the file', async () => {
    const tool: ToolDiff = { what: 'silent tool', header: { fromSnap: FROM, toSnap: TO, size: SIZE }, start: async () => ({ done: Promise.resolve(), kill() {} }) };
    await expect(write(tool)).rejects.toThrow(/exited without writing/);
    expect(existsSync(join(pointDir, 'disks', 'vda.rbdiff.idx'))).toBe(false);
  });

  it('stops a tool that never creates its file (rbd hangs before it opens the output)', async () => {
    let killed = false;
    let exit: () => void = () => {};
    const tool: ToolDiff = {
      what: 'hung tool',
      header: { fromSnap: FROM, toSnap: TO, size: SIZE },
      idleTimeoutMs: 200,
      start: async () => ({
        done: new Promise<void>((_, reject) => (exit = () => reject(new Error('killed')))),
        kill: () => {
          killed = true;
          exit();
        },
      }),
    };
    const err = await write(tool).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UnavailableError);
    expect((err as Error).message).toMatch(/hung tool wrote nothing for 0 s and was stopped/);
    expect(killed).toBe(true);
    expect(leftFiles()).toEqual([]);
  });

  it('refuses records the index could not describe: a size record after the data, an empty z record', async () => {
    const plain = await stream({ list: [{ offset: 0, length: 4096, data: randomBytes(4096) }] });
    const withLateSize = Buffer.concat([plain.subarray(0, -1), encodeSize(SIZE), Buffer.from('e')]);
    await expect(write(fakeTool(withLateSize))).rejects.toThrow(/a from, to or size record after the data/);
    const withEmptyZero = Buffer.concat([plain.subarray(0, -1), encodeZero(8192, 0), Buffer.from('e')]);
    await expect(write(fakeTool(withEmptyZero))).rejects.toThrow(/an empty z record/);
    expect(leftFiles()).toEqual([]);
  });

  it('tells why the tool was stopped rather than what the cut stream looks like', async () => {
    // As the ceph session does when the snapshot listing finds the image resized: the stream's
    // size record is off, and the tool's run says why once it is stopped.
    const bytes = await stream({ size: SIZE * 2 });
    const inner = fakeTool(bytes, { slice: 64 * 1024, pauseMs: 20 });
    const tool: ToolDiff = {
      ...inner,
      async start(path) {
        const run = await inner.start(path);
        const done = run.done.then(
          () => {},
          () => {
            throw new UnavailableError('volumes/x was resized while the backup started');
          },
        );
        done.catch(() => {});
        return { done, kill: run.kill };
      },
    };
    const err = await write(tool).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UnavailableError);
    expect((err as Error).message).toMatch(/was resized while the backup started/);
  });

  it('the index loader takes records after repeated size records, and nothing else before them', async () => {
    const first = encodePreamble({ fromSnap: PARENT, toSnap: POINT, size: SIZE }).length;
    const load = (at: number) => {
      const path = join(dir, `idx-${at}`);
      writeFileSync(path, `# vprotect rbdiff index v1\nz 0 4096 ${at} -\n`);
      return loadDiffIndex(path, { size: SIZE, firstFileOffset: first, diffFileSize: at + 17 + 1, what: path });
    };
    await expect(load(first)).resolves.toBeDefined();
    await expect(load(first + 18)).resolves.toBeDefined();
    await expect(load(first + 5)).rejects.toThrow(/record should start at byte/);
    await expect(load(first - 9)).rejects.toThrow(/record should start at byte/);
  });
});
