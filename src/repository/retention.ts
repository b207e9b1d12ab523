/**
 * Retention as pure functions (no I/O): which points to keep and why, and whether the next
 * backup should start a new chain. Chain-aware: a point that a kept point depends on is kept.
 */
import type { RetentionConfig } from '../inventory/types.js';

export interface RetentionPoint {
  pointId: string;
  chainId: string;
  parentId: string | null;
  /** When the point was taken (ISO). */
  time: string;
}

export interface RetentionDecision {
  pointId: string;
  keep: boolean;
  reasons: string[];
}

type Bucket = 'hourly' | 'daily' | 'weekly' | 'monthly' | 'yearly';

/** The period a time falls in, per rule, in UTC. Weeks are ISO weeks (Monday first). */
export function periodOf(iso: string, bucket: Bucket): string {
  const d = new Date(iso);
  const y = d.getUTCFullYear();
  const m = String(d.getUTCMonth() + 1).padStart(2, '0');
  const day = String(d.getUTCDate()).padStart(2, '0');
  switch (bucket) {
    case 'hourly':
      return `${y}-${m}-${day}T${String(d.getUTCHours()).padStart(2, '0')}`;
    case 'daily':
      return `${y}-${m}-${day}`;
    case 'monthly':
      return `${y}-${m}`;
    case 'yearly':
      return `${y}`;
    case 'weekly': {
      // ISO week: the Thursday of this week decides the year.
      const t = new Date(Date.UTC(y, d.getUTCMonth(), d.getUTCDate()));
      const dow = t.getUTCDay() || 7;
      t.setUTCDate(t.getUTCDate() + 4 - dow);
      const yearStart = Date.UTC(t.getUTCFullYear(), 0, 1);
      const week = Math.ceil(((t.getTime() - yearStart) / 86400000 + 1) / 7);
      return `${t.getUTCFullYear()}-W${String(week).padStart(2, '0')}`;
    }
  }
}

const buckets: [Bucket, keyof RetentionConfig][] = [
  ['hourly', 'keepHourly'],
  ['daily', 'keepDaily'],
  ['weekly', 'keepWeekly'],
  ['monthly', 'keepMonthly'],
  ['yearly', 'keepYearly'],
];

export function hasRules(r: RetentionConfig): boolean {
  return ['keepLast', 'keepHourly', 'keepDaily', 'keepWeekly', 'keepMonthly', 'keepYearly'].some((k) => (r[k as keyof RetentionConfig] as number | undefined) !== undefined);
}

/**
 * Decides for the complete points of one VM. Rules as in restic/borg: keepLast keeps the newest
 * N; each period rule keeps the newest point of each of the newest N periods that have points.
 * The newest point is always kept (the next incremental will be based on it). Then every
 * ancestor of a kept point is kept, "needed by" it.
 */
export function decideRetention(points: RetentionPoint[], rules: RetentionConfig): RetentionDecision[] {
  const newestFirst = [...points].sort((a, b) => (a.time < b.time ? 1 : a.time > b.time ? -1 : a.pointId < b.pointId ? 1 : -1));
  const reasons = new Map<string, string[]>(points.map((p) => [p.pointId, []]));
  const add = (id: string, why: string) => reasons.get(id)!.push(why);
  if (newestFirst[0]) add(newestFirst[0].pointId, 'newest point');
  newestFirst.slice(0, rules.keepLast ?? 0).forEach((p, i) => add(p.pointId, `keep-last ${i + 1}/${rules.keepLast}`));
  for (const [bucket, key] of buckets) {
    const n = rules[key] as number | undefined;
    if (!n) continue;
    const seen = new Set<string>();
    for (const p of newestFirst) {
      const period = periodOf(p.time, bucket);
      if (seen.has(period)) continue;
      if (seen.size >= n) break;
      seen.add(period);
      add(p.pointId, `${bucket} ${period}`);
    }
  }
  // Chain closure: walk from each kept point to its full point.
  const byId = new Map(points.map((p) => [p.pointId, p]));
  for (const p of newestFirst) {
    if (reasons.get(p.pointId)!.length === 0) continue;
    let parent = p.parentId ? byId.get(p.parentId) : undefined;
    while (parent) {
      const r = reasons.get(parent.pointId)!;
      if (!r.some((x) => x.startsWith('needed by'))) r.push(`needed by ${p.pointId}`);
      parent = parent.parentId ? byId.get(parent.parentId) : undefined;
    }
  }
  return newestFirst.map((p) => {
    const r = reasons.get(p.pointId)!;
    return { pointId: p.pointId, keep: r.length > 0, reasons: r.length ? r : ['no rule keeps it'] };
  });
}

export interface ChainState {
  /** When the chain's full point was taken (ISO). */
  fullTime: string;
  /** Incrementals after it. */
  incrementals: number;
}

/**
 * Whether the next backup should be a full that starts a new chain, per `newChainAfter`.
 * The backup engine calls this with the chain of the VM's last complete point.
 */
export function shouldStartNewChain(chain: ChainState | undefined, rules: RetentionConfig | undefined, now: Date): { newChain: boolean; reason: string } {
  if (!chain) return { newChain: true, reason: 'no complete point yet' };
  const after = rules?.newChainAfter;
  if (after?.incrementals !== undefined && chain.incrementals >= after.incrementals) {
    return { newChain: true, reason: `the chain has ${chain.incrementals} incrementals (newChainAfter.incrementals = ${after.incrementals})` };
  }
  if (after?.days !== undefined) {
    const ageDays = (now.getTime() - Date.parse(chain.fullTime)) / 86400000;
    if (ageDays >= after.days) return { newChain: true, reason: `the chain's full point is ${ageDays.toFixed(1)} days old (newChainAfter.days = ${after.days})` };
  }
  return { newChain: false, reason: 'the chain may grow' };
}
