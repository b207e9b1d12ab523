/** SHA256SUMS in `sha256sum` format (docs/FORMAT.md §6). */
import { DataCorruptError } from '../errors.js';

export interface SumEntry {
  path: string;
  sha256: string;
}

export function formatSums(entries: SumEntry[]): string {
  return [...entries]
    .sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0))
    .map((e) => `${e.sha256}  ${e.path}\n`)
    .join('');
}

export function parseSums(text: string, what: string): SumEntry[] {
  const out: SumEntry[] = [];
  const lines = text.split('\n');
  if (lines.pop() !== '') throw new DataCorruptError(`${what}: truncated (no final newline)`);
  lines.forEach((line, i) => {
    const m = /^([0-9a-f]{64}) [ *](\S.*)$/.exec(line);
    if (!m) throw new DataCorruptError(`${what}: line ${i + 1} is not "<sha256>  <path>"`);
    out.push({ sha256: m[1]!, path: m[2]! });
  });
  return out;
}
