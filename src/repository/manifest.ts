/** The JSON documents of a repository (docs/FORMAT.md §2, §3, §7) and their validation on read. */
import { createHash } from 'node:crypto';
import { DataCorruptError } from '../errors.js';
import { isPointId, SAFE_NAME_RE } from './ids.js';

export const FORMAT_VERSION = 1;
export const DEFAULT_BLOCK_SIZE = 4 << 20;

export interface RepoConfig {
  format: 1;
  kind: 'vprotect-repository';
  id: string;
  blockSize: number;
  createdAt: string;
}

export type PointLevel = 'full' | 'incremental';

export interface DiskEntry {
  key: string;
  size: number;
  sourceFormat?: string;
  encoding: 'raw-sparse' | 'rbd-diff-v1';
  file: string;
  index: string | null;
  blockMap: string | null;
  blockMapSha256: string | null;
  changedBytes: number;
  dataBytes: number;
  zeroBytes: number;
  storedBytes: number;
  records: number;
  /** Strategy state (RBD snapshot id, libvirt checkpoint, overlay path): opaque to the repository. */
  sourceAnchor: Record<string, unknown> | null;
}

export interface PointManifest {
  format: 1;
  kind: 'vprotect-point';
  pointId: string;
  chainId: string;
  parentId: string | null;
  level: PointLevel;
  status: 'complete';
  vmId: string;
  vmName?: string;
  startedAt: string;
  finishedAt: string;
  tool: { name: 'vprotect'; version: string };
  source?: Record<string, unknown>;
  strategy?: { name: string; optionsDigest?: string };
  consistency?: { level: 'crash' | 'quiesced' | 'app'; [k: string]: unknown };
  blockSize: number;
  metadata: string[];
  disks: DiskEntry[];
  sums: { file: 'SHA256SUMS'; sha256: string };
  mergedFrom?: string[];
  /** sha256 of this JSON document without this member (toJson), so a flipped byte anywhere is found. */
  selfSha256?: string;
}

export interface MergeJournal {
  format: 1;
  kind: 'vprotect-merge';
  base: string;
  target: string;
  diffs: string[];
  phase: 'apply' | 'finalize';
  startedAt: string;
}

function fail(what: string, msg: string): never {
  throw new DataCorruptError(`${what}: ${msg}`, { data: { file: what } });
}

function parseJson(text: string, what: string): Record<string, unknown> {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (err) {
    fail(what, `not valid JSON (${(err as Error).message})`);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) fail(what, 'not a JSON object');
  return v as Record<string, unknown>;
}

const isCount = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;

export function parseRepoConfig(text: string, what: string): RepoConfig {
  const v = parseJson(text, what);
  if (v['kind'] !== 'vprotect-repository') fail(what, 'not a vprotect repository file');
  if (v['format'] !== FORMAT_VERSION) fail(what, `repository format ${String(v['format'])} is not supported by this vprotect (it knows format ${FORMAT_VERSION})`);
  const bs = v['blockSize'];
  if (!isCount(bs) || bs < 65536 || (bs & (bs - 1)) !== 0) fail(what, 'blockSize must be a power of two of at least 64 KiB');
  return v as unknown as RepoConfig;
}

/** Checks what the repository relies on; other members are carried along unchecked. */
export function parseManifest(text: string, what: string): PointManifest {
  const v = parseJson(text, what);
  const { selfSha256, ...rest } = v;
  if (typeof selfSha256 !== 'string' || createHash('sha256').update(toJson(rest)).digest('hex') !== selfSha256) fail(what, 'does not match its own checksum (selfSha256)');
  if (v['kind'] !== 'vprotect-point') fail(what, 'not a point manifest');
  if (v['format'] !== FORMAT_VERSION) fail(what, `point format ${String(v['format'])} is not supported`);
  for (const k of ['pointId', 'chainId'] as const) if (typeof v[k] !== 'string' || !isPointId(v[k])) fail(what, `${k} is not a point id`);
  if (v['parentId'] !== null && (typeof v['parentId'] !== 'string' || !isPointId(v['parentId']))) fail(what, 'parentId is not a point id');
  if (v['level'] !== 'full' && v['level'] !== 'incremental') fail(what, 'level must be full or incremental');
  if ((v['level'] === 'full') !== (v['parentId'] === null)) fail(what, 'a full point has no parent and an incremental has one');
  if (typeof v['vmId'] !== 'string' || !SAFE_NAME_RE.test(v['vmId'])) fail(what, 'bad vmId');
  if (!isCount(v['blockSize'])) fail(what, 'bad blockSize');
  const sums = v['sums'] as Record<string, unknown> | undefined;
  if (!sums || sums['file'] !== 'SHA256SUMS' || typeof sums['sha256'] !== 'string') fail(what, 'bad sums');
  if (!Array.isArray(v['metadata']) || !v['metadata'].every((m) => typeof m === 'string' && SAFE_NAME_RE.test(m))) fail(what, 'bad metadata list');
  if (!Array.isArray(v['disks'])) fail(what, 'disks must be a list');
  for (const d of v['disks'] as Record<string, unknown>[]) {
    if (typeof d['key'] !== 'string' || !SAFE_NAME_RE.test(d['key'])) fail(what, 'bad disk key');
    if (!isCount(d['size'])) fail(what, `disk ${d['key']}: bad size`);
    const raw = d['encoding'] === 'raw-sparse';
    if (!raw && d['encoding'] !== 'rbd-diff-v1') fail(what, `disk ${d['key']}: unknown encoding ${String(d['encoding'])}`);
    if (raw !== (v['level'] === 'full')) fail(what, `disk ${d['key']}: a full point stores raw-sparse disks, an incremental rbd-diff-v1`);
    if (typeof d['file'] !== 'string' || (!raw && typeof d['index'] !== 'string') || (raw && typeof d['blockMap'] !== 'string')) fail(what, `disk ${d['key']}: missing file names`);
  }
  return v as unknown as PointManifest;
}

export function parseMergeJournal(text: string, what: string): MergeJournal {
  const v = parseJson(text, what);
  if (v['kind'] !== 'vprotect-merge' || !Array.isArray(v['diffs'])) fail(what, 'not a merge journal');
  return v as unknown as MergeJournal;
}

/** The manifest as written: its JSON with selfSha256 computed over the rest. */
export function sealManifest(m: PointManifest): string {
  const { selfSha256: _old, ...rest } = m;
  return toJson({ ...rest, selfSha256: createHash('sha256').update(toJson(rest)).digest('hex') });
}

export function toJson(v: unknown): string {
  return `${JSON.stringify(v, null, 2)}\n`;
}
