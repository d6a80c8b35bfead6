/**
 * Grandfather-father-son selection (restic semantics): points newest first; `latest` keeps the n newest; each
 * period rule keeps the newest point of each of the n most recent periods (UTC hours, days, ISO weeks, months,
 * years) that have one. Pure: the engine decides what "removing" means per tier.
 */
import type { Retention } from './model.ts';

export type Period = 'hourly' | 'daily' | 'weekly' | 'monthly' | 'yearly';
const PERIODS: Period[] = ['hourly', 'daily', 'weekly', 'monthly', 'yearly'];

export function periodKey(d: Date, kind: Period): string {
  const y = d.getUTCFullYear();
  const m = d.getUTCMonth() + 1;
  const day = d.getUTCDate();
  switch (kind) {
    case 'hourly':
      return `${y}-${m}-${day}-${d.getUTCHours()}`;
    case 'daily':
      return `${y}-${m}-${day}`;
    case 'monthly':
      return `${y}-${m}`;
    case 'yearly':
      return `${y}`;
    case 'weekly': {
      // ISO week: the Thursday of the week decides its year.
      const t = new Date(Date.UTC(y, d.getUTCMonth(), day));
      const dow = t.getUTCDay() || 7;
      t.setUTCDate(t.getUTCDate() + 4 - dow);
      const ys = Date.UTC(t.getUTCFullYear(), 0, 1);
      return `${t.getUTCFullYear()}-W${Math.ceil(((t.getTime() - ys) / 86_400_000 + 1) / 7)}`;
    }
  }
}

export interface RetentionDecision<T> {
  keep: T[];
  remove: T[];
  /** Why each kept point is kept ('latest', 'daily'…), by id. */
  reasons: Map<string, string[]>;
}

export function selectRetention<T extends { id: string; time: string }>(
  points: readonly T[],
  r: Retention,
): RetentionDecision<T> {
  const sorted = [...points].sort((a, b) => b.time.localeCompare(a.time) || b.id.localeCompare(a.id));
  const rules: { name: string; left: number; last: string; key: (d: Date, i: number) => string }[] = [];
  if (r.latest > 0) rules.push({ name: 'latest', left: r.latest, last: '', key: (_d, i) => String(i) });
  for (const p of PERIODS)
    if (r[p] > 0) rules.push({ name: p, left: r[p], last: '', key: (d) => periodKey(d, p) });
  const keep: T[] = [];
  const remove: T[] = [];
  const reasons = new Map<string, string[]>();
  // No rule at all keeps everything: an all-zero retention must not wipe a policy's history.
  if (rules.length === 0) return { keep: sorted, remove, reasons };
  sorted.forEach((pt, i) => {
    const d = new Date(pt.time);
    const why: string[] = [];
    for (const rule of rules) {
      const k = rule.key(d, i);
      if (rule.left > 0 && k !== rule.last) {
        rule.left--;
        rule.last = k;
        why.push(rule.name);
      }
    }
    if (why.length > 0) {
      keep.push(pt);
      reasons.set(pt.id, why);
    } else remove.push(pt);
  });
  return { keep, remove, reasons };
}
