/** `vprotect export <point>` and `vprotect import [file]`. */
import { createReadStream, createWriteStream } from 'node:fs';
import { rename, rm } from 'node:fs/promises';
import { isatty } from 'node:tty';
import { UsageError } from '../../errors.js';
import { exportPoint as exportToStream, importArchive } from '../../repository/archive.js';
import { dataStdout } from '../data-stdout.js';
import type { Action } from '../main.js';
import { bytes } from '../format.js';
import { openRepo } from './repository-common.js';

export const exportPoint: Action = async (ctx, args, opts) => {
  const output = opts['output'] as string | undefined;
  if (!output && ctx.out.json) throw new UsageError('export writes the tar to stdout; with --json give -o <file>');
  if (!output && isatty(1)) throw new UsageError('refusing to write a tar stream to a terminal', { hint: 'redirect stdout or use -o <file>' });
  const repo = await openRepo(ctx, opts);
  const point = await repo.findPoint(String(args[0]));
  if (!output) {
    const r = await exportToStream(repo, point, dataStdout(), { signal: ctx.signal });
    ctx.log.info(`exported point ${point.pointId}: ${r.disks} disk(s), ${bytes(r.bytes)}`);
    return;
  }
  const partial = `${output}.partial`;
  try {
    const r = await exportToStream(repo, point, createWriteStream(partial), { signal: ctx.signal });
    await rename(partial, output);
    ctx.out.result({ point: point.pointId, file: output, ...r }, (d) => `exported point ${d.point} to ${d.file}: ${d.disks} disk(s), ${bytes(d.bytes)}`);
  } catch (err) {
    await rm(partial, { force: true });
    throw err;
  }
};

export const importPoint: Action = async (ctx, args, opts) => {
  const file = args[0] as string | undefined;
  const repo = await openRepo(ctx, opts, { create: true });
  const input = file ? createReadStream(file) : process.stdin;
  const m = await importArchive(repo, input, { signal: ctx.signal, what: file ?? 'stdin' });
  ctx.out.result({ point: m.pointId, vmId: m.vmId, chainId: m.chainId, disks: m.disks.map((d) => d.key) }, (d) => `imported as point ${d.point} (new chain) of VM ${d.vmId}: disks ${d.disks.join(', ')}`);
};
