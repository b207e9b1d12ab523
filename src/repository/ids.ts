/** Point ids: UTC start time to the second plus 4 random hex digits (docs/FORMAT.md §1). */
import { randomBytes } from 'node:crypto';

const ID_RE = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z-[0-9a-f]{4}$/;

export function newPointId(now: Date = new Date()): string {
  const iso = now.toISOString(); // 2026-11-24T21:15:00.123Z
  const stamp = `${iso.slice(0, 4)}${iso.slice(5, 7)}${iso.slice(8, 10)}T${iso.slice(11, 13)}${iso.slice(14, 16)}${iso.slice(17, 19)}Z`;
  return `${stamp}-${randomBytes(2).toString('hex')}`;
}

export function isPointId(id: string): boolean {
  return ID_RE.test(id);
}

/** The time encoded in a point id, or undefined when it is not one. */
export function pointIdTime(id: string): Date | undefined {
  const m = ID_RE.exec(id);
  if (!m) return undefined;
  return new Date(Date.UTC(+m[1]!, +m[2]! - 1, +m[3]!, +m[4]!, +m[5]!, +m[6]!));
}

/** Names used as path components (vm ids, disk keys, metadata files): no separators, no dot-files. */
export const SAFE_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
