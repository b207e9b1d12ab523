/**
 * Checking points (docs/FORMAT.md): manifests, SHA256SUMS, block maps, diff indexes, chain
 * continuity, and optionally the data itself. Damage is reported per file together with every
 * point that can no longer be restored because of it (the point and its descendants).
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { open, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { DataCorruptError, throwIfAborted } from '../errors.js';
import type { EventSink } from '../log.js';
import { BlockMapBuilder, digestAt, parseBlockMap, zeroDigest } from './block-map.js';
import { openDiffLayer, openDiskReader } from './chain-reader.js';
import { readAt } from './coalescing-writer.js';
import { writeFileDurable } from './durable.js';
import { isZero } from './extents.js';
import { diskFiles, MANIFEST, SUMS } from './layout.js';
import { sealManifest, type DiskEntry } from './manifest.js';
import { parseRbdDiff } from './rbd-diff.js';
import type { ChainInfo, PointInfo, Repository } from './repository.js';
import { parseSums } from './sums.js';

export interface Damage {
  vmId: string;
  /** The point whose file is damaged. */
  pointId: string;
  file: string;
  problem: string;
  /** Every point that cannot be restored because of this: the point itself and its descendants. */
  affectedPoints: string[];
}

export interface VerifyReport {
  checkedPoints: string[];
  damage: Damage[];
  /** Not damage, but worth saying: interrupted writes, unfinished merges, maps stored. */
  notes: string[];
}

export interface VerifyOptions {
  /** Percent (0–100] of full-image blocks to read and check; undefined = no data reading. */
  readData?: number;
  rebuildMaps?: boolean;
  signal?: AbortSignal;
  events?: EventSink;
  /** For sampling; Math.random by default. */
  random?: () => number;
}

async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(path, { highWaterMark: 1 << 20 })) h.update(chunk as Buffer);
  return h.digest('hex');
}

type Problem = { file: string; problem: string };

const problemOf = (err: unknown, fallbackFile: string): Problem => {
  const data = (err as { data?: { file?: unknown } }).data;
  const file = typeof data?.file === 'string' ? data.file : fallbackFile;
  return { file, problem: err instanceof Error ? err.message : String(err) };
};

/** Structure and checksums of one point's own files (not its ancestors). */
export async function checkPointFiles(point: PointInfo, opts: VerifyOptions): Promise<Problem[]> {
  const problems: Problem[] = [];
  const m = point.manifest;
  const sumsPath = join(point.dir, SUMS);
  let sums: Map<string, string> | undefined;
  try {
    const text = await readFile(sumsPath, 'utf8');
    if (createHash('sha256').update(text).digest('hex') !== m.sums.sha256) problems.push({ file: sumsPath, problem: `${SUMS} does not match the sha256 in the manifest` });
    else sums = new Map(parseSums(text, sumsPath).map((e) => [e.path, e.sha256]));
  } catch (err) {
    problems.push(problemOf(err, sumsPath));
  }
  const readData = opts.readData !== undefined;
  // Every file a point names, with whether SHA256SUMS must list it: raw images are covered by
  // block maps, diffs by their indexes (points written before that list their diffs too).
  const files: { rel: string; summed: boolean | 'if-listed'; isData: boolean }[] = m.metadata.map((n) => ({ rel: diskFiles.metadata(n), summed: true, isData: false }));
  for (const d of m.disks) {
    if (d.encoding === 'raw-sparse') {
      files.push({ rel: d.file, summed: false, isData: true });
      files.push({ rel: d.blockMap!, summed: true, isData: false });
    } else {
      files.push({ rel: d.file, summed: 'if-listed', isData: true });
      files.push({ rel: d.index!, summed: true, isData: false });
      if (d.blockMap) files.push({ rel: d.blockMap, summed: false, isData: false });
    }
  }
  for (const f of files) {
    const path = join(point.dir, f.rel);
    try {
      await stat(path);
    } catch {
      problems.push({ file: path, problem: 'missing' });
      continue;
    }
    if (!f.summed || !sums) continue;
    const expected = sums.get(f.rel);
    if (!expected) {
      if (f.summed === 'if-listed') continue;
      problems.push({ file: path, problem: `not listed in ${SUMS}` });
      continue;
    }
    // Diffs are data: hashed only when data is read (their records are checked then too).
    if (f.isData && !readData) continue;
    if ((await sha256File(path)) !== expected) problems.push({ file: path, problem: `does not match its sha256 in ${SUMS}` });
  }
  for (const d of m.disks) {
    throwIfAborted(opts.signal);
    try {
      if (d.encoding === 'raw-sparse') problems.push(...(await checkFullDisk(point, d, opts)));
      else problems.push(...(await checkDiffDisk(point, d, readData)));
    } catch (err) {
      if (!(err instanceof DataCorruptError)) throw err;
      problems.push(problemOf(err, join(point.dir, d.file)));
    }
  }
  return dedupe(problems);
}

function dedupe(problems: Problem[]): Problem[] {
  const seen = new Set<string>();
  return problems.filter((p) => !seen.has(p.file + p.problem) && seen.add(p.file + p.problem));
}

async function checkFullDisk(point: PointInfo, d: DiskEntry, opts: VerifyOptions): Promise<Problem[]> {
  const rawPath = join(point.dir, d.file);
  const mapPath = join(point.dir, d.blockMap!);
  const problems: Problem[] = [];
  const st = await stat(rawPath).catch(() => undefined);
  if (st && st.size !== d.size) problems.push({ file: rawPath, problem: `is ${st.size} bytes, the disk is ${d.size}` });
  const text = await readFile(mapPath, 'latin1').catch(() => undefined);
  if (text === undefined) return problems;
  if (d.blockMapSha256 && createHash('sha256').update(text, 'latin1').digest('hex') !== d.blockMapSha256) {
    problems.push({ file: mapPath, problem: 'does not match the sha256 in the manifest' });
    return problems;
  }
  const map = parseBlockMap(text, d.size, point.manifest.blockSize, mapPath);
  if (opts.readData === undefined || !st || problems.length) return problems;
  const bs = point.manifest.blockSize;
  const blocks = Math.ceil(d.size / bs);
  const random = opts.random ?? Math.random;
  const fh = await open(rawPath, 'r');
  // One buffer for every block: each is checked before the next is read (fresh ones fault in every page).
  const buffer = Buffer.allocUnsafeSlow(bs);
  try {
    for (let b = 0; b < blocks; b++) {
      if (opts.readData < 100 && random() * 100 >= opts.readData) continue;
      throwIfAborted(opts.signal);
      const len = Math.min(bs, d.size - b * bs);
      const data = await readAt(fh, b * bs, len, buffer);
      const expected = digestAt(map, b);
      const ok = data.length === len && (expected.equals(zeroDigest(len)) ? isZero(data) : createHash('sha256').update(data).digest().equals(expected));
      if (!ok) problems.push({ file: rawPath, problem: `block ${b} (bytes ${b * bs}–${b * bs + len - 1}) does not match the block map` });
    }
  } finally {
    await fh.close();
  }
  return problems;
}

async function checkDiffDisk(point: PointInfo, d: DiskEntry, readData: boolean): Promise<Problem[]> {
  // Loading the index checks it against itself and against the diff's length.
  const layer = await openDiffLayer(point, d);
  try {
    if (!readData) return [];
    const path = layer.path;
    const idx = layer.index;
    const problems: Problem[] = [];
    let r = 0;
    let hash: ReturnType<typeof createHash> | undefined;
    const expectHeader = { from: point.manifest.parentId, to: point.pointId, size: d.size };
    const finishRecord = () => {
      if (hash && !hash.digest().equals(idx.digest(r - 1))) problems.push({ file: path, problem: `the record for bytes ${idx.offsets[r - 1]}+${idx.lengths[r - 1]} does not match its sha256` });
      hash = undefined;
    };
    for await (const item of parseRbdDiff(layer.fh.createReadStream({ start: 0, autoClose: false, highWaterMark: 1 << 20 }), { what: path })) {
      if (item.type === 'from' && item.name !== expectHeader.from) problems.push({ file: path, problem: `from-snapshot is ${item.name}, the parent is ${expectHeader.from}` });
      if (item.type === 'to' && item.name !== expectHeader.to) problems.push({ file: path, problem: `to-snapshot is ${item.name}, the point is ${expectHeader.to}` });
      if (item.type === 'size' && item.size !== expectHeader.size) problems.push({ file: path, problem: `size is ${item.size}, the manifest says ${expectHeader.size}` });
      if (item.type === 'data' || item.type === 'zero') {
        const rec = item.record;
        if (item.type === 'zero' || item.offset === rec.offset) {
          finishRecord();
          if (r >= idx.count || idx.fileOffsets[r] !== rec.fileOffset || idx.offsets[r] !== rec.offset || idx.lengths[r] !== rec.length || idx.isData(r) !== (rec.kind === 'w')) {
            problems.push({ file: path, problem: `record at byte ${rec.fileOffset} does not match index entry ${r}` });
            return problems;
          }
          r++;
          if (item.type === 'data') hash = createHash('sha256');
        }
        if (item.type === 'data') hash!.update(item.data);
      }
      if (item.type === 'end') finishRecord();
    }
    if (r !== idx.count) problems.push({ file: path, problem: `has ${r} records, its index ${idx.count}` });
    return problems;
  } catch (err) {
    if (!(err instanceof DataCorruptError)) throw err;
    return [problemOf(err, layer.path)];
  } finally {
    await layer.fh.close();
  }
}

/**
 * Recomputes the block map of each disk of `point` through the chain reader. Stored maps are
 * compared; a point without one gets it (file, then manifest: the manifest rename is the commit).
 */
export async function rebuildBlockMaps(repo: Repository, point: PointInfo, opts: VerifyOptions): Promise<{ problems: Problem[]; stored: string[] }> {
  const problems: Problem[] = [];
  const stored: string[] = [];
  let manifestChanged = false;
  const manifest = structuredClone(point.manifest);
  for (const d of manifest.disks) {
    let reader;
    try {
      reader = await openDiskReader(repo, point, d.key);
    } catch (err) {
      if (!(err instanceof DataCorruptError)) throw err;
      problems.push(problemOf(err, join(point.dir, d.file)));
      continue;
    }
    const lines: string[] = [];
    const builder = new BlockMapBuilder(repo.blockSize, (digest) => lines.push(`${digest.toString('hex')}\n`));
    try {
      for await (const e of reader.extents({ signal: opts.signal, reuseBuffers: true })) if (e.data) builder.data(e.offset, e.data); // hashed before the next
      builder.finish(reader.size);
    } catch (err) {
      if (!(err instanceof DataCorruptError)) throw err;
      problems.push(problemOf(err, join(point.dir, d.file)));
      continue;
    } finally {
      await reader.close();
    }
    const text = lines.join('');
    const sha = createHash('sha256').update(text, 'latin1').digest('hex');
    if (d.blockMap) {
      const mapPath = join(point.dir, d.blockMap);
      const current = await readFile(mapPath, 'latin1').catch(() => undefined);
      if (current !== text) problems.push({ file: mapPath, problem: 'differs from the block map computed through the chain' });
      continue;
    }
    const rel = diskFiles.blockMap(d.key);
    await writeFileDurable(join(point.dir, rel), text);
    d.blockMap = rel;
    d.blockMapSha256 = sha;
    manifestChanged = true;
    stored.push(join(point.dir, rel));
  }
  if (manifestChanged) await writeFileDurable(join(point.dir, MANIFEST), sealManifest(manifest));
  return { problems, stored };
}

/** Which points to check: given ids (with their ancestors), or everything of the given VMs. */
export async function verifyRepository(repo: Repository, vmIds: string[], onlyPoints: Set<string> | undefined, opts: VerifyOptions): Promise<VerifyReport> {
  const report: VerifyReport = { checkedPoints: [], damage: [], notes: [] };
  for (const vmId of vmIds) {
    for (const chain of await repo.listChains(vmId)) {
      await verifyChain(repo, chain, onlyPoints, opts, report);
    }
  }
  return report;
}

async function verifyChain(repo: Repository, chain: ChainInfo, onlyPoints: Set<string> | undefined, opts: VerifyOptions, report: VerifyReport): Promise<void> {
  const ids = chain.points.map((p) => p.pointId);
  // With a point selection, check those points and everything they depend on.
  const lastSelected = onlyPoints ? Math.max(-1, ...ids.map((id, i) => (onlyPoints.has(id) ? i : -1))) : ids.length - 1;
  const orphans = chain.orphans.filter((p) => !onlyPoints || onlyPoints.has(p.pointId));
  if (lastSelected < 0 && orphans.length === 0 && (onlyPoints || chain.damaged.length === 0)) return;
  for (const d of chain.damaged) {
    report.damage.push({ vmId: chain.vmId, pointId: d.pointId, file: d.file, problem: d.problem, affectedPoints: [d.pointId, ...chain.orphans.map((o) => o.pointId)] });
  }
  if (chain.merge) report.notes.push(`chain ${chain.chainId} of VM ${chain.vmId}: merge into ${chain.merge.target} is unfinished (run \`vprotect merge ${chain.chainId}\`)`);
  for (const id of chain.incomplete) report.notes.push(`point ${id} of VM ${chain.vmId} is an interrupted write (not a restore point; the next run removes it)`);
  for (const o of orphans) {
    report.checkedPoints.push(o.pointId);
    if (chain.damaged.some((d) => d.pointId === o.manifest.parentId)) continue; // already reported with its cause
    report.damage.push({
      vmId: chain.vmId,
      pointId: o.manifest.parentId ?? o.pointId,
      file: join(chain.dir, o.manifest.parentId ?? o.pointId),
      problem: `point ${o.manifest.parentId} is missing; the chain is broken`,
      affectedPoints: chain.orphans.map((p) => p.pointId),
    });
  }
  for (let i = 0; i <= lastSelected; i++) {
    const p = chain.points[i]!;
    report.checkedPoints.push(p.pointId);
    opts.events?.({ type: 'verify-point', vmId: chain.vmId, pointId: p.pointId, message: `checking ${p.pointId}` });
    const inMerge = chain.merge && [chain.merge.base, ...chain.merge.diffs].includes(p.pointId);
    if (inMerge) continue; // its files are being rewritten; the merge journal says how to finish
    const problems = await checkPointFiles(p, opts);
    if (opts.rebuildMaps && problems.length === 0 && !chain.merge) {
      const r = await rebuildBlockMaps(repo, p, opts);
      problems.push(...r.problems.filter((x) => x.file.startsWith(p.dir)));
      for (const s of r.stored) report.notes.push(`stored block map ${s}`);
    }
    const affected = [...ids.slice(i), ...chain.orphans.map((o) => o.pointId)];
    for (const pr of problems) report.damage.push({ vmId: chain.vmId, pointId: p.pointId, file: pr.file, problem: pr.problem, affectedPoints: affected });
  }
}
