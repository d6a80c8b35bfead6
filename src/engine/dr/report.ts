/**
 * The DR report of a site: per application and per export path, the achieved RPO (now − consistent-at of
 * the newest importable restore point), export durations (first, latest incremental), the latest measured
 * restore duration (RTO) and a 3-2-1 check.
 *
 * 3-2-1 as counted here: copies = the production volume + its local snapshot at the source + the off-site
 * export (+ a warm-standby volume at the DR site); media = distinct storage kinds holding them (platform
 * block storage — volumes, snapshots and their region copies — vs object storage, the repository); off-site =
 * an export outside the source region. A snapshot-copy path alone is therefore 1 medium: it needs a datamover
 * export beside it for 3-2-1.
 */
import { systemClock } from '../../core/index.ts';
import type { Clock } from '../../core/index.ts';
import type { DrState, ImportStream } from './state.ts';
import type { RestorePointRecord } from './types.ts';

export interface PathReport {
  app: string;
  stream: string;
  path: 'repository' | 'snapshot-copy';
  location: string;
  restorePoints: number;
  /** Restore points imported at this site over the stream's life (held now + dropped by DR-side retention). */
  imported: number;
  lastImportAt?: string;
  newestConsistentAt?: string;
  /** now − newest importable restore point's consistent-at, in seconds. */
  rpoSeconds?: number;
  exportFirstMs?: number;
  exportIncrementalMs?: number;
  exportIncrementalPercent?: number;
  bytesFirst?: number;
  bytesIncremental?: number;
  restoreMs?: number;
  restoredAt?: string;
  rule321: { copies: number; media: number; offsite: number; ok: boolean };
}

export interface AppReport {
  app: string;
  paths: PathReport[];
  rpoSeconds?: number;
  rule321: { copies: number; media: number; offsite: number; ok: boolean };
}

/** Storage kind holding a stream's off-site copy: the platform's block storage, or object storage. */
function mediumOf(stream: ImportStream): string {
  return stream.kind === 'datamover' ? 'object-storage' : 'block-storage';
}

function rule(copies: number, media: Set<string>, offsite: number): PathReport['rule321'] {
  return { copies, media: media.size, offsite, ok: copies >= 3 && media.size >= 2 && offsite >= 1 };
}

/**
 * `importable` may add records listed at the export locations but not yet imported (fresher than imports).
 */
export function drReport(
  state: DrState,
  opts: { clock?: Clock; importable?: Record<string, RestorePointRecord[]> } = {},
): AppReport[] {
  const now = (opts.clock ?? systemClock).now().getTime();
  const byApp = new Map<string, PathReport[]>();
  const mediaByApp = new Map<string, Set<string>>();
  const copiesByApp = new Map<string, number>();
  for (const s of Object.values(state.imports)) {
    const rps: {
      consistentAt: string;
      exportDurationMs: number;
      incremental: boolean;
      bytesTransferred: number;
    }[] = [...s.restorePoints, ...(opts.importable?.[s.id] ?? [])];
    rps.sort((a, b) => a.consistentAt.localeCompare(b.consistentAt));
    const newest = rps.at(-1);
    const first = s.restorePoints.find((r) => !r.incremental) ?? rps.find((r) => !r.incremental);
    const incr = [...rps].reverse().find((r) => r.incremental);
    const restore = [...state.restores].reverse().find((r) => r.stream === s.id);
    const path = s.kind === 'datamover' ? 'repository' : 'snapshot-copy';
    const standby = s.restorePoints.some((r) => r.standby) ? 1 : 0;
    const media = new Set(['block-storage', mediumOf(s)]);
    // Production + local snapshot share the source's block storage; the export is the third, off-site copy.
    const copies = 2 + (rps.length > 0 ? 1 : 0) + standby;
    const rep: PathReport = {
      app: s.app,
      stream: s.id,
      path,
      location: s.location.repository,
      restorePoints: rps.length,
      imported: s.restorePoints.length + s.forgotten.length,
      ...(s.lastImportAt ? { lastImportAt: s.lastImportAt } : {}),
      ...(newest
        ? {
            newestConsistentAt: newest.consistentAt,
            rpoSeconds: (now - Date.parse(newest.consistentAt)) / 1000,
          }
        : {}),
      ...(first ? { exportFirstMs: first.exportDurationMs, bytesFirst: first.bytesTransferred } : {}),
      ...(incr
        ? { exportIncrementalMs: incr.exportDurationMs, bytesIncremental: incr.bytesTransferred }
        : {}),
      ...(first && incr && first.exportDurationMs > 0
        ? { exportIncrementalPercent: (100 * incr.exportDurationMs) / first.exportDurationMs }
        : {}),
      ...(restore ? { restoreMs: restore.durationMs, restoredAt: restore.startedAt } : {}),
      rule321: rule(copies, media, rps.length > 0 ? 1 : 0),
    };
    byApp.set(s.app, [...(byApp.get(s.app) ?? []), rep]);
    const am = mediaByApp.get(s.app) ?? new Set<string>();
    for (const m of media) am.add(m);
    mediaByApp.set(s.app, am);
    copiesByApp.set(s.app, (copiesByApp.get(s.app) ?? 2) + (rps.length > 0 ? 1 : 0) + standby);
  }
  return [...byApp.entries()]
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([app, paths]) => {
      const rpos = paths.map((p) => p.rpoSeconds).filter((x): x is number => x !== undefined);
      const offsite = paths.filter((p) => p.restorePoints > 0).length;
      return {
        app,
        paths,
        ...(rpos.length ? { rpoSeconds: Math.min(...rpos) } : {}),
        rule321: rule(copiesByApp.get(app) ?? 2, mediaByApp.get(app) ?? new Set(), offsite),
      };
    });
}
