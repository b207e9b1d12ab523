/**
 * Folding the oldest incrementals of a chain into its full point (docs/FORMAT.md §7), so that
 * "forever incremental" works on plain NFS. Crash-safe through a journal: the apply phase is
 * restarted from the first diff (re-applying diffs in order gives the same image), and every
 * finalize step checks whether it already happened.
 */
import { createHash } from 'node:crypto';
import { open, readFile, rename, rm, stat, unlink, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { DataCorruptError, throwIfAborted, UsageError } from '../errors.js';
import { blockCount, digestAt, parseBlockMap, zeroDigest } from './block-map.js';
import { closeLayer, openBaseLayer, openDiffLayer, readRecord } from './chain-reader.js';
import { readAt } from './coalescing-writer.js';
import { writeAll } from './direct-io.js';
import { MAX_RECORD_BYTES, type StepHook } from './disk-writers.js';
import { fsyncDir, writeFileDurable } from './durable.js';
import { isZero, zeros } from './extents.js';
import { diskFiles, layout, MANIFEST, SUMS } from './layout.js';
import { RECORD_HEADER_BYTES } from './rbd-diff.js';
import { sealManifest, toJson, type DiskEntry, type MergeJournal, type PointManifest } from './manifest.js';
import type { ChainInfo, PointInfo, Repository } from './repository.js';
import { formatSums } from './sums.js';

export interface MergeOptions {
  /** Incrementals to leave after the new full point (default 0). */
  keep?: number;
  signal?: AbortSignal;
  /** Tests: called after each durable step. */
  onStep?: StepHook;
}

export interface MergeResult {
  chainId: string;
  /** The point that is now the chain's full point (unchanged when nothing was merged). */
  base: string;
  folded: string[];
  incrementalsLeft: number;
}

const mergedMap = (key: string) => `${diskFiles.blockMap(key)}.merged`;

async function exists(p: string): Promise<boolean> {
  return stat(p).then(
    () => true,
    () => false,
  );
}

/**
 * One buffer for the records of a merge, each used up before the next is read (fresh
 * multi-MiB buffers fault in every page); a record larger than ours gets its own.
 */
function recordBuffers(): (length: number) => Buffer | undefined {
  let buffer: Buffer | undefined;
  return (length) => {
    if (length > MAX_RECORD_BYTES) return undefined;
    return (buffer ??= Buffer.allocUnsafeSlow(RECORD_HEADER_BYTES + MAX_RECORD_BYTES));
  };
}

/** Merges under the VM's lock; an unfinished merge of the chain is finished first. */
export async function mergeChain(repo: Repository, vmId: string, chainId: string, opts: MergeOptions = {}): Promise<MergeResult> {
  return repo.withLock(vmId, 'merge', async (lock) => {
    await repo.cleanup(vmId, lock); // finishes an interrupted merge of this chain too
    const chain = (await repo.listChains(vmId)).find((c) => c.chainId === chainId);
    if (!chain) throw new UsageError(`VM ${vmId} has no chain ${chainId}`, { hint: 'see `vprotect list`' });
    if (chain.orphans.length || chain.damaged.length) {
      throw new DataCorruptError(`chain ${chainId} is damaged; run \`vprotect verify --vm ${vmId}\``, { hint: 'a damaged chain is not merged' });
    }
    const keep = opts.keep ?? 0;
    const k = chain.points.length - 1 - keep;
    if (k <= 0) return { chainId, base: chain.points[0]?.pointId ?? chainId, folded: [], incrementalsLeft: chain.points.length - 1 };
    const base = chain.points[0]!;
    const diffs = chain.points.slice(1, k + 1);
    const target = diffs.at(-1)!;
    checkDiskSets(base, diffs);
    await checkInputs(base, diffs, opts);
    await opts.onStep?.('check');
    const journal: MergeJournal = { format: 1, kind: 'vprotect-merge', base: base.pointId, target: target.pointId, diffs: diffs.map((d) => d.pointId), phase: 'apply', startedAt: new Date().toISOString() };
    await writeFileDurable(layout.mergeJournal(repo.root, vmId, chainId), toJson(journal));
    await opts.onStep?.('journal');
    await runMerge(repo, chain.dir, journal, { base, diffs }, opts);
    return { chainId, base: target.pointId, folded: [base.pointId, ...diffs.slice(0, -1).map((d) => d.pointId)], incrementalsLeft: keep };
  });
}

/** Finishes the merge described by the chain's journal (called by cleanup with the lock held). */
export async function finishMerge(repo: Repository, chain: ChainInfo, opts: MergeOptions): Promise<void> {
  const journal = chain.merge!;
  const all = [...chain.points, ...chain.orphans];
  const find = (id: string) => all.find((p) => p.pointId === id);
  const base = find(journal.base);
  const diffs = journal.diffs.map(find);
  await runMerge(repo, chain.dir, journal, { base, diffs }, opts);
}

function checkDiskSets(base: PointInfo, diffs: PointInfo[]): void {
  const target = diffs.at(-1)!;
  for (const d of target.manifest.disks) {
    // A disk that disappears and comes back within the folded range would need a reset; refuse.
    const present = [base, ...diffs].map((p) => p.manifest.disks.some((x) => x.key === d.key));
    const first = present.indexOf(true);
    if (present.slice(first).includes(false)) throw new UsageError(`disk ${d.key} is missing from some points of the range to merge`, { hint: 'start a new chain with a full backup instead' });
  }
}

/** Before touching anything: every record of the diffs and every block of the full they touch is intact. */
async function checkInputs(base: PointInfo, diffs: PointInfo[], opts: MergeOptions): Promise<void> {
  for (const { key } of diffs.at(-1)!.manifest.disks) {
    const disk = base.manifest.disks.find((d) => d.key === key);
    const touched = new Set<number>();
    const bs = base.manifest.blockSize;
    const recordBuffer = recordBuffers();
    for (const p of diffs) {
      const entry = p.manifest.disks.find((d) => d.key === key);
      if (!entry) continue;
      const layer = await openDiffLayer(p, entry);
      try {
        for (let r = 0; r < layer.index.count; r++) {
          throwIfAborted(opts.signal);
          if (layer.index.isData(r)) await readRecord(layer.fh, layer.index, r, layer.path, p.pointId, recordBuffer(layer.index.lengths[r]!));
          const s = layer.index.offsets[r]!;
          const e = Math.min(s + layer.index.lengths[r]!, disk?.size ?? 0);
          for (let b = Math.floor(s / bs); b * bs < e; b++) touched.add(b);
        }
      } finally {
        await layer.fh.close();
      }
    }
    if (!disk) continue;
    const layer = await openBaseLayer(base, disk, { checkMap: true });
    const buffer = Buffer.allocUnsafeSlow(bs); // each block is checked before the next is read
    try {
      for (const b of [...touched].sort((x, y) => x - y)) {
        const len = Math.min(bs, disk.size - b * bs);
        const data = await readAt(layer.fh, b * bs, len, buffer);
        const expected = digestAt(layer.map!, b);
        const ok = data.length === len && (expected.equals(zeroDigest(len)) ? isZero(data) : createHash('sha256').update(data).digest().equals(expected));
        if (!ok) throw new DataCorruptError(`${layer.path}: block ${b} does not match the block map; not merging`, { data: { file: layer.path, point: base.pointId } });
      }
    } finally {
      await closeLayer(layer);
    }
  }
}

async function runMerge(repo: Repository, chainDir: string, journal: MergeJournal, pts: { base: PointInfo | undefined; diffs: (PointInfo | undefined)[] }, opts: MergeOptions): Promise<void> {
  const journalPath = join(chainDir, 'merge.json');
  const targetDir = join(chainDir, journal.target);
  const baseDir = join(chainDir, journal.base);
  if (journal.phase === 'apply') {
    const { base, diffs } = pts;
    if (!base || diffs.some((d) => !d)) throw new DataCorruptError(`the merge in ${chainDir} cannot be finished: a point it needs is gone`, { data: { file: journalPath } });
    const target = diffs.at(-1)!;
    const newMaps: { key: string; sha: string }[] = [];
    for (const disk of target.manifest.disks) {
      const sha = await applyDisk(base, diffs as PointInfo[], disk.key, opts);
      newMaps.push({ key: disk.key, sha });
    }
    await opts.onStep?.('applied');
    journal.phase = 'finalize';
    (journal as MergeJournal & { maps?: unknown }).maps = newMaps;
    await writeFileDurable(journalPath, toJson(journal));
    await opts.onStep?.('finalize');
  }
  // Finalize: every step is skipped when done already.
  const maps = ((journal as MergeJournal & { maps?: { key: string; sha: string }[] }).maps ?? []) as { key: string; sha: string }[];
  const targetManifestPath = join(targetDir, MANIFEST);
  const targetManifest = JSON.parse(await readFile(targetManifestPath, 'utf8')) as PointManifest;
  if (targetManifest.level !== 'full') {
    for (const { key } of maps) {
      if (await exists(join(baseDir, diskFiles.raw(key)))) await rename(join(baseDir, diskFiles.raw(key)), join(targetDir, diskFiles.raw(key)));
      if (await exists(join(baseDir, mergedMap(key)))) await rename(join(baseDir, mergedMap(key)), join(targetDir, diskFiles.blockMap(key)));
    }
    await fsyncDir(join(targetDir, 'disks'));
    await fsyncDir(join(baseDir, 'disks')).catch(() => {});
    await opts.onStep?.('moved');
    await writeFullManifest(targetDir, targetManifest, maps, journal);
    await opts.onStep?.('manifest');
  }
  for (const id of [journal.base, ...journal.diffs.slice(0, -1)]) {
    const dir = join(chainDir, id);
    await unlink(join(dir, MANIFEST)).catch(() => {});
    await rm(dir, { recursive: true, force: true });
    await opts.onStep?.(`removed:${id}`);
  }
  for (const { key } of maps) {
    await rm(join(targetDir, diskFiles.diff(key)), { force: true });
    await rm(join(targetDir, diskFiles.index(key)), { force: true });
  }
  await fsyncDir(chainDir);
  await unlink(journalPath);
  await fsyncDir(chainDir);
  await opts.onStep?.('done');
}

/** Applies the diffs of one disk to the full's raw image in place; writes the new block map aside. */
async function applyDisk(base: PointInfo, diffs: PointInfo[], key: string, opts: MergeOptions): Promise<string> {
  const bs = base.manifest.blockSize;
  const rawPath = join(base.dir, diskFiles.raw(key));
  const baseDisk = base.manifest.disks.find((d) => d.key === key);
  // A disk added by an incremental gets an empty image to fold into.
  const fh: FileHandle = await open(rawPath, baseDisk ? 'r+' : 'a+').then(async (h) => {
    if (baseDisk) return h;
    await h.close();
    return open(rawPath, 'r+');
  });
  const touched = new Set<number>();
  const recordBuffer = recordBuffers();
  let minSize = baseDisk?.size ?? 0;
  let size = baseDisk?.size ?? 0;
  try {
    for (const p of diffs) {
      const entry = p.manifest.disks.find((d) => d.key === key);
      if (!entry) continue;
      const layer = await openDiffLayer(p, entry);
      try {
        await fh.truncate(entry.size);
        size = entry.size;
        minSize = Math.min(minSize, size);
        for (let r = 0; r < layer.index.count; r++) {
          throwIfAborted(opts.signal);
          const off = layer.index.offsets[r]!;
          const len = layer.index.lengths[r]!;
          if (layer.index.isData(r)) {
            // Written (and awaited) before the next record is read into the same buffer.
            await writeAll(fh, await readRecord(layer.fh, layer.index, r, layer.path, p.pointId, recordBuffer(len)), off);
          } else {
            for (let done = 0; done < len; done += 1 << 20) await writeAll(fh, zeros(Math.min(1 << 20, len - done)), off + done);
          }
          for (let b = Math.floor(off / bs); b * bs < off + len; b++) touched.add(b);
        }
      } finally {
        await layer.fh.close();
      }
      await opts.onStep?.(`apply:${key}:${p.pointId}`);
    }
    await fh.sync();
    // New block map: unchanged blocks keep their digest; touched ones, and everything from the
    // smallest size the disk had on, are read back from the image.
    const oldMap = baseDisk ? parseBlockMap(await readFile(join(base.dir, baseDisk.blockMap!), 'latin1'), baseDisk.size, bs, key) : Buffer.alloc(0);
    const lines: string[] = [];
    const n = blockCount(size, bs);
    const buffer = Buffer.allocUnsafeSlow(bs); // each block is hashed before the next is read
    for (let b = 0; b < n; b++) {
      const len = Math.min(bs, size - b * bs);
      if (!touched.has(b) && (b + 1) * bs <= minSize && b * 32 < oldMap.length) {
        lines.push(`${digestAt(oldMap, b).toString('hex')}\n`);
        continue;
      }
      const data = await readAt(fh, b * bs, len, buffer);
      lines.push(`${(isZero(data) ? zeroDigest(len) : createHash('sha256').update(data).digest()).toString('hex')}\n`);
    }
    const text = lines.join('');
    await writeFileDurable(join(base.dir, mergedMap(key)), text);
    return createHash('sha256').update(text, 'latin1').digest('hex');
  } finally {
    await fh.close();
  }
}

async function writeFullManifest(targetDir: string, m: PointManifest, maps: { key: string; sha: string }[], journal: MergeJournal): Promise<void> {
  const sums: { path: string; sha256: string }[] = [];
  for (const name of m.metadata) {
    sums.push({ path: diskFiles.metadata(name), sha256: createHash('sha256').update(await readFile(join(targetDir, diskFiles.metadata(name)))).digest('hex') });
  }
  const disks: DiskEntry[] = [];
  for (const d of m.disks) {
    const map = maps.find((x) => x.key === d.key)!;
    const st = await stat(join(targetDir, diskFiles.raw(d.key)));
    const stored = Math.min(d.size, st.blocks * 512);
    sums.push({ path: diskFiles.blockMap(d.key), sha256: map.sha });
    disks.push({
      ...d,
      encoding: 'raw-sparse',
      file: diskFiles.raw(d.key),
      index: null,
      blockMap: diskFiles.blockMap(d.key),
      blockMapSha256: map.sha,
      changedBytes: d.size,
      dataBytes: stored,
      zeroBytes: d.size - stored,
      storedBytes: stored,
      records: 0,
    });
  }
  const sumsText = formatSums(sums);
  await writeFileDurable(join(targetDir, SUMS), sumsText);
  const { selfSha256: _s, ...rest } = m;
  const full: PointManifest = {
    ...rest,
    level: 'full',
    parentId: null,
    disks,
    sums: { file: SUMS, sha256: createHash('sha256').update(sumsText).digest('hex') },
    mergedFrom: [journal.base, ...journal.diffs.slice(0, -1)],
  };
  await writeFileDurable(join(targetDir, MANIFEST), sealManifest(full));
}
