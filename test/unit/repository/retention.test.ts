import { describe, expect, it } from 'vitest';
import { decideRetention, periodOf, shouldStartNewChain, type RetentionPoint } from '../../../src/repository/retention.js';

/** One point a day at noon, chains of `chainLen` (full + incrementals). */
function days(n: number, chainLen: number): RetentionPoint[] {
  const out: RetentionPoint[] = [];
  for (let i = 0; i < n; i++) {
    const full = i % chainLen === 0;
    out.push({ pointId: `p${String(i).padStart(3, '0')}`, chainId: `c${Math.floor(i / chainLen)}`, parentId: full ? null : `p${String(i - 1).padStart(3, '0')}`, time: new Date(Date.UTC(2026, 0, 1 + i, 12)).toISOString() });
  }
  return out;
}

describe('retention', () => {
  it('keep-last keeps the newest N and, through the chain, everything they depend on', () => {
    const d = decideRetention(days(10, 5), { keepLast: 2 });
    const kept = d.filter((x) => x.keep).map((x) => x.pointId).sort();
    expect(kept).toEqual(['p005', 'p006', 'p007', 'p008', 'p009']);
    expect(d.find((x) => x.pointId === 'p005')!.reasons).toEqual(['needed by p009']);
    expect(d.find((x) => x.pointId === 'p004')).toMatchObject({ keep: false, reasons: ['no rule keeps it'] });
  });

  it('daily/weekly/monthly keep the newest point of each period', () => {
    const pts = days(60, 1); // all fulls: no dependencies
    const d = decideRetention(pts, { keepWeekly: 2, keepMonthly: 2 });
    const kept = d.filter((x) => x.keep).map((x) => x.pointId);
    // Mar 1 (newest; week 9; March), Feb 28 (newest of February), Feb 22 (Sunday ending week 8)
    expect(kept).toEqual(['p059', 'p058', 'p052']);
    expect(d[0]!.reasons).toEqual(expect.arrayContaining(['newest point', 'weekly 2026-W09', 'monthly 2026-03']));
  });

  it('never removes a point a kept point depends on, whatever the rules', () => {
    for (const rules of [{ keepLast: 1 }, { keepDaily: 3 }, { keepHourly: 1, keepYearly: 1 }]) {
      const pts = days(23, 7);
      const d = new Map(decideRetention(pts, rules).map((x) => [x.pointId, x.keep]));
      for (const p of pts) if (d.get(p.pointId) && p.parentId) expect(d.get(p.parentId), `${p.parentId} under ${JSON.stringify(rules)}`).toBe(true);
    }
  });

  it('ISO weeks: 2027-01-01 (a Friday) belongs to week 53 of 2026', () => {
    expect(periodOf('2027-01-01T10:00:00Z', 'weekly')).toBe('2026-W53');
    expect(periodOf('2026-01-05T00:00:00Z', 'weekly')).toBe('2026-W02');
    expect(periodOf('2026-03-04T23:59:00Z', 'hourly')).toBe('2026-03-04T23');
  });

  it('starts a new chain after N incrementals or D days', () => {
    const now = new Date('2026-02-01T00:00:00Z');
    expect(shouldStartNewChain(undefined, {}, now).newChain).toBe(true);
    expect(shouldStartNewChain({ fullTime: '2026-01-31T00:00:00Z', incrementals: 6 }, { newChainAfter: { incrementals: 6 } }, now)).toMatchObject({ newChain: true });
    expect(shouldStartNewChain({ fullTime: '2026-01-31T00:00:00Z', incrementals: 5 }, { newChainAfter: { incrementals: 6 } }, now).newChain).toBe(false);
    expect(shouldStartNewChain({ fullTime: '2026-01-25T00:00:00Z', incrementals: 1 }, { newChainAfter: { days: 7 } }, now)).toMatchObject({ newChain: true });
    expect(shouldStartNewChain({ fullTime: '2026-01-25T00:00:01Z', incrementals: 1 }, { newChainAfter: { days: 7 } }, now).newChain).toBe(false);
  });
});
