/**
 * Checks 5-field cron expressions (minute hour day-of-month month day-of-week), the form that
 * crontab and the inventory's schedules use, with the @hourly/@daily/... shorthands.
 * Returns a problem description, or undefined when the expression is valid.
 */
const FIELDS = [
  { name: 'minute', min: 0, max: 59 },
  { name: 'hour', min: 0, max: 23 },
  { name: 'day of month', min: 1, max: 31 },
  { name: 'month', min: 1, max: 12, names: ['jan', 'feb', 'mar', 'apr', 'may', 'jun', 'jul', 'aug', 'sep', 'oct', 'nov', 'dec'] },
  { name: 'day of week', min: 0, max: 7, names: ['sun', 'mon', 'tue', 'wed', 'thu', 'fri', 'sat'] },
] as const;

const SHORTHANDS = new Set(['@hourly', '@daily', '@midnight', '@weekly', '@monthly', '@yearly', '@annually']);

export function cronProblem(expr: string): string | undefined {
  const text = expr.trim();
  if (SHORTHANDS.has(text)) return undefined;
  const parts = text.split(/\s+/);
  if (parts.length !== 5) return `must be a 5-field cron expression ("minute hour day month weekday", e.g. "30 2 * * *") or @daily/@weekly/...; got ${parts.length} field${parts.length === 1 ? '' : 's'}`;
  for (let i = 0; i < 5; i++) {
    const field = FIELDS[i]!;
    for (const item of parts[i]!.split(',')) {
      const bad = itemProblem(item, field);
      if (bad) return `${field.name} field "${parts[i]}": ${bad}`;
    }
  }
  return undefined;
}

function itemProblem(item: string, field: (typeof FIELDS)[number]): string | undefined {
  const [range, step, extra] = item.split('/');
  if (extra !== undefined || range === undefined || range === '') return 'is not a valid cron item';
  if (step !== undefined && !/^[1-9][0-9]*$/.test(step)) return `step "${step}" must be a positive integer`;
  if (range === '*') return undefined;
  const ends = range.split('-');
  if (ends.length > 2) return 'is not a valid range';
  const values = ends.map((v) => valueOf(v, field));
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (v === undefined || v < field.min || v > field.max) return `"${ends[i]}" is outside ${field.min}-${field.max}`;
  }
  if (values.length === 2 && values[0]! > values[1]!) return `range "${range}" runs backwards`;
  return undefined;
}

function valueOf(text: string, field: (typeof FIELDS)[number]): number | undefined {
  if (/^[0-9]+$/.test(text)) return Number(text);
  if ('names' in field) {
    const i = (field.names as readonly string[]).indexOf(text.toLowerCase());
    if (i >= 0) return i + field.min;
  }
  return undefined;
}
