/**
 * The JSON that `rbd … --format json` prints (Ceph Pacific; samples in the lab notes), parsed
 * into typed records. Anything unexpected is an error naming the command: a wrong guess about a
 * snapshot id or an image size would make a wrong incremental, so nothing is defaulted.
 */
import { UnavailableError } from '../../src/errors.js';

export interface RbdImageInfo {
  name: string;
  /** The image id: changes when an image is deleted and created again under the same name. */
  id: string;
  size: number;
  objectSize: number;
  features: string[];
  /**
   * op_features ("clone-parent": v2 clones of a snapshot exist, "snap-trash", …); undefined when
   * rbd did not say, which callers must treat as "anything is possible".
   */
  opFeatures?: string[];
  /** Set for a clone: its unwritten ranges read the parent snapshot's data, not zeros. */
  parent?: { pool: string; image: string; snapshot: string };
}

export interface RbdSnapshot {
  /** Snapshot id: unique per image and increasing (a re-created snapshot gets a new id). */
  id: number;
  name: string;
  size: number;
  protected: boolean;
  timestamp: string;
  /** 'user' for ordinary snapshots; 'trash' for removed snapshots kept for clones (clone v2). */
  namespace: string;
}

/** One row of `rbd ls -l --format json`: an image, or one of its snapshots. */
export interface RbdListing {
  image: string;
  id: string | undefined;
  size: number;
  snapshot?: { name: string; id: number; protected: boolean };
  parent?: { pool: string; image: string; snapshot: string };
}

export interface RbdChild {
  pool: string;
  namespace: string;
  image: string;
}

export interface RbdDiffExtent {
  offset: number;
  length: number;
  /** false: the range was discarded and reads as zeros. */
  exists: boolean;
}

function bad(what: string, problem: string): never {
  throw new UnavailableError(`unexpected output of ${what}: ${problem}`, { hint: 'vprotect expects the JSON of Ceph Pacific or newer; report this with the rbd version' });
}

function parse(text: string, what: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return bad(what, `not JSON (${JSON.stringify(text.slice(0, 80))})`);
  }
}

function obj(v: unknown, what: string, ctx: string): Record<string, unknown> {
  if (!v || typeof v !== 'object' || Array.isArray(v)) bad(what, `${ctx} is not an object`);
  return v as Record<string, unknown>;
}

function str(o: Record<string, unknown>, k: string, what: string): string {
  const v = o[k];
  if (typeof v !== 'string') bad(what, `"${k}" is not a string`);
  return v;
}

function int(o: Record<string, unknown>, k: string, what: string): number {
  const v = o[k];
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) bad(what, `"${k}" is not a whole number`);
  return v;
}

/** rbd prints booleans as the strings "true"/"false" in several places. */
function flag(o: Record<string, unknown>, k: string, what: string): boolean {
  const v = o[k];
  if (v === true || v === 'true') return true;
  if (v === false || v === 'false' || v === undefined) return false;
  return bad(what, `"${k}" is ${JSON.stringify(v)}`);
}

function list(text: string, what: string): Record<string, unknown>[] {
  const v = parse(text, what);
  if (!Array.isArray(v)) bad(what, 'not a JSON array');
  return v.map((x, i) => obj(x, what, `item ${i}`));
}

export function parseImageInfo(text: string, what = 'rbd info'): RbdImageInfo {
  const o = obj(parse(text, what), what, 'the output');
  const features = o['features'];
  const opFeatures = o['op_features'];
  return {
    name: str(o, 'name', what),
    id: str(o, 'id', what),
    size: int(o, 'size', what),
    objectSize: typeof o['object_size'] === 'number' ? int(o, 'object_size', what) : 4 << 20,
    features: Array.isArray(features) ? features.filter((f): f is string => typeof f === 'string') : [],
    ...(Array.isArray(opFeatures) && opFeatures.every((f) => typeof f === 'string') ? { opFeatures: opFeatures as string[] } : {}),
    ...(o['parent'] !== undefined ? { parent: parentOf(o['parent'], what) } : {}),
  };
}

function parentOf(v: unknown, what: string): { pool: string; image: string; snapshot: string } {
  const p = obj(v, what, 'parent');
  return { pool: str(p, 'pool', what), image: str(p, 'image', what), snapshot: str(p, 'snapshot', what) };
}

export function parseSnapList(text: string, what = 'rbd snap ls'): RbdSnapshot[] {
  return list(text, what).map((o) => {
    const ns = o['namespace'];
    return {
      id: int(o, 'id', what),
      name: str(o, 'name', what),
      size: int(o, 'size', what),
      protected: flag(o, 'protected', what),
      timestamp: typeof o['timestamp'] === 'string' ? o['timestamp'] : '',
      namespace: ns && typeof ns === 'object' && typeof (ns as Record<string, unknown>)['type'] === 'string' ? ((ns as Record<string, unknown>)['type'] as string) : 'user',
    };
  });
}

export function parseListing(text: string, what = 'rbd ls -l'): RbdListing[] {
  return list(text, what).map((o) => {
    const row: RbdListing = { image: str(o, 'image', what), id: typeof o['id'] === 'string' ? o['id'] : undefined, size: int(o, 'size', what) };
    if (o['snapshot'] !== undefined) row.snapshot = { name: str(o, 'snapshot', what), id: int(o, 'snapshot_id', what), protected: flag(o, 'protected', what) };
    if (o['parent'] !== undefined) {
      row.parent = parentOf(o['parent'], what);
    }
    return row;
  });
}

export function parseChildren(text: string, what = 'rbd children'): RbdChild[] {
  return list(text, what).map((o) => ({
    pool: str(o, 'pool', what),
    namespace: typeof o['pool_namespace'] === 'string' ? o['pool_namespace'] : '',
    image: str(o, 'image', what),
  }));
}

/** `rbd diff [--from-snap S] --format json`: extents in ascending order. */
export function parseDiffExtents(text: string, what = 'rbd diff'): RbdDiffExtent[] {
  let end = 0;
  return list(text, what).map((o) => {
    const e = { offset: int(o, 'offset', what), length: int(o, 'length', what), exists: flag(o, 'exists', what) };
    if (e.offset < end) bad(what, `extent ${e.offset}+${e.length} is out of order`);
    end = e.offset + e.length;
    return e;
  });
}
