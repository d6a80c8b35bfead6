/**
 * Prometheus text exposition (format 0.0.4) of the service's metrics snapshot, written by hand: a handful of
 * families, no client library needed.
 */
import type { AppReport } from '../engine/dr/index.ts';
import type { MetricsSnapshot } from '../engine/service.ts';

function esc(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"');
}

function labels(l: Record<string, string>): string {
  const parts = Object.entries(l).map(([k, v]) => `${k}="${esc(v)}"`);
  return parts.length ? `{${parts.join(',')}}` : '';
}

function num(n: number): string {
  return Number.isFinite(n) ? String(n) : n > 0 ? '+Inf' : n < 0 ? '-Inf' : 'NaN';
}

class Exposition {
  private readonly lines: string[] = [];
  family(name: string, type: 'gauge' | 'counter' | 'summary', help: string): this {
    this.lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
    return this;
  }
  sample(name: string, l: Record<string, string>, value: number): this {
    this.lines.push(`${name}${labels(l)} ${num(value)}`);
    return this;
  }
  toString(): string {
    return this.lines.join('\n') + '\n';
  }
}

/** The DR report of this site, when the server runs DR (families with no samples are left out). */
export interface DrMetrics {
  site: string;
  report: AppReport[];
}

export function renderMetrics(m: MetricsSnapshot, dr?: DrMetrics): string {
  const e = new Exposition();
  e.family('tern_actions', 'gauge', 'Action runs in the catalog by kind (type) and state.');
  for (const a of m.actions) e.sample('tern_actions', { kind: a.type, state: a.state }, a.count);

  e.family(
    'tern_action_duration_seconds',
    'summary',
    'Wall time of finished action runs by kind and final state.',
  );
  for (const d of m.durations) {
    e.sample('tern_action_duration_seconds_sum', { kind: d.type, state: d.state }, d.sumSeconds);
    e.sample('tern_action_duration_seconds_count', { kind: d.type, state: d.state }, d.count);
  }
  e.family(
    'tern_action_last_duration_seconds',
    'gauge',
    'Wall time of the most recent finished run by kind and state.',
  );
  for (const d of m.durations)
    e.sample('tern_action_last_duration_seconds', { kind: d.type, state: d.state }, d.lastSeconds);

  e.family('tern_bytes_read_total', 'counter', 'Bytes read from volumes or repositories by action kind.');
  for (const b of m.bytes) e.sample('tern_bytes_read_total', { kind: b.type }, b.read);
  e.family(
    'tern_bytes_transferred_total',
    'counter',
    'Bytes written to object storage or copied across regions by action kind.',
  );
  for (const b of m.bytes) e.sample('tern_bytes_transferred_total', { kind: b.type }, b.transferred);

  e.family(
    'tern_restore_point_age_seconds',
    'gauge',
    'Age of the newest restore point per app and tier: the data a disaster now would lose (current RPO).',
  );
  for (const r of m.lastRestorePoint)
    e.sample('tern_restore_point_age_seconds', { app: r.app, tier: r.tier }, r.ageSeconds);
  e.family(
    'tern_last_success_timestamp',
    'gauge',
    'Unix time the newest restore point per app and tier was consistent.',
  );
  for (const r of m.lastRestorePoint)
    e.sample('tern_last_success_timestamp', { app: r.app, tier: r.tier }, Date.parse(r.consistentAt) / 1000);

  e.family('tern_policies', 'gauge', 'Policies by status.');
  e.sample('tern_policies', { status: 'active' }, m.policies.total - m.policies.paused);
  e.sample('tern_policies', { status: 'paused' }, m.policies.paused);
  if (dr) renderDr(e, dr);
  return e.toString();
}

/**
 * DR families from the site's report, per app and export path ('repository': datamover, 'snapshot-copy'):
 * achieved RPO, export durations (first, latest incremental), last restore duration (RTO), 3-2-1, imports.
 */
function renderDr(e: Exposition, { site, report }: DrMetrics): void {
  const paths = report.flatMap((a) => a.paths);
  const family = (
    name: string,
    type: 'gauge' | 'counter',
    help: string,
    rows: { l: Record<string, string>; v: number | undefined }[],
  ): void => {
    const have = rows.filter((r): r is { l: Record<string, string>; v: number } => r.v !== undefined);
    if (!have.length) return;
    e.family(name, type, help);
    for (const r of have) e.sample(name, r.l, r.v);
  };
  family(
    'tern_dr_rpo_seconds',
    'gauge',
    'Achieved RPO at this DR site: now minus consistent-at of the newest importable restore point, per app and path.',
    paths.map((p) => ({ l: { app: p.app, path: p.path, site }, v: p.rpoSeconds })),
  );
  family(
    'tern_dr_export_duration_seconds',
    'gauge',
    'Export duration of the first (full) and the latest incremental restore point, per app and path.',
    paths.flatMap((p) => [
      {
        l: { app: p.app, path: p.path, kind: 'first' },
        v: p.exportFirstMs === undefined ? undefined : p.exportFirstMs / 1000,
      },
      {
        l: { app: p.app, path: p.path, kind: 'incremental' },
        v: p.exportIncrementalMs === undefined ? undefined : p.exportIncrementalMs / 1000,
      },
    ]),
  );
  family(
    'tern_dr_restore_duration_seconds',
    'gauge',
    'Duration of the last restore at this DR site (measured RTO), per app and path.',
    paths.map((p) => ({
      l: { app: p.app, path: p.path },
      v: p.restoreMs === undefined ? undefined : p.restoreMs / 1000,
    })),
  );
  family(
    'tern_dr_321_ok',
    'gauge',
    '1 when the app meets 3-2-1 (3 copies, 2 media, 1 off-site) with its exports, else 0.',
    report.map((a) => ({ l: { app: a.app }, v: a.rule321.ok ? 1 : 0 })),
  );
  family(
    'tern_dr_imported_restore_points_total',
    'counter',
    'Restore points imported at this DR site (including those since dropped by DR-side retention), per app and path.',
    paths.map((p) => ({ l: { app: p.app, path: p.path }, v: p.imported })),
  );
  family(
    'tern_dr_last_import_timestamp',
    'gauge',
    'Unix time of the last import run of the stream at this DR site, per app and path.',
    paths.map((p) => ({
      l: { app: p.app, path: p.path },
      v: p.lastImportAt === undefined ? undefined : Date.parse(p.lastImportAt) / 1000,
    })),
  );
}
