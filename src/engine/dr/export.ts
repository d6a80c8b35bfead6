/**
 * One export run of a stream (a policy's export step for one app): copy the restore point off-site with the
 * stream's exporter, publish its signed record at the export location (last, after all data), remember it in
 * the source manifest, and issue fresh export details (token + file).
 */
import crypto from 'node:crypto';
import path from 'node:path';
import { ConflictError, createExportDetails, systemClock } from '../../core/index.ts';
import type { Clock, ExportedRestorePoint, RunOptions } from '../../core/index.ts';
import { openStore } from '../../storage/index.ts';
import { writeFileAtomic } from './atomic.ts';
import { publishRecord, recordKey } from './records.ts';
import type { SourceStateStore } from './state.ts';
import type { Exporter, RestorePointRecord, SourceRestorePoint } from './types.ts';

export interface ExportRunOptions extends RunOptions {
  state: SourceStateStore;
  site: string;
  /** Stream name: the policy that exports (one stream per app and policy). */
  stream: string;
  exporter: Exporter;
  importSecret: string;
  rp: SourceRestorePoint;
  clock?: Clock;
  /** Directory for the export details file (`<app>-<stream>.tern-x1`). */
  detailsDir?: string;
  /** Restore points listed in the token itself (all of them stay importable from the records). */
  tokenRestorePoints?: number;
}

export interface ExportRunResult {
  record: RestorePointRecord;
  token: string;
  tokenFile?: string;
}

function streamKey(app: string, stream: string): string {
  return `${app}/${stream}`;
}

export async function runExport(o: ExportRunOptions): Promise<ExportRunResult> {
  const clock = o.clock ?? systemClock;
  const key = streamKey(o.rp.app, o.stream);
  // The stream id is made durable before any data moves, so records of a run killed later still match it.
  const stream = await o.state.update((s) => {
    let st = s.streams[key];
    if (!st) {
      st = {
        id: `${o.rp.app}-${o.stream}-${crypto.randomBytes(6).toString('hex')}`.replace(
          /[^A-Za-z0-9._-]/g,
          '-',
        ),
        app: o.rp.app,
        kind: o.exporter.kind,
        restorePoints: [],
      };
      s.streams[key] = st;
    }
    if (st.kind !== o.exporter.kind)
      throw new ConflictError(`stream ${key} exports by ${st.kind}, not ${o.exporter.kind}`);
    return structuredClone(st);
  });

  const started = clock.now();
  const t0 = performance.now();
  const outcome = await o.exporter.exportRestorePoint(o.rp, stream.last, o);
  const durationMs = performance.now() - t0;
  const completed = clock.now();
  const target = o.exporter.target();
  const record: RestorePointRecord = {
    v: 1,
    id: o.rp.id,
    app: o.rp.app,
    stream: stream.id,
    kind: o.exporter.kind,
    sourceSite: o.site,
    consistentAt: o.rp.consistentAt,
    exportStartedAt: started.toISOString(),
    exportCompletedAt: completed.toISOString(),
    exportDurationMs: Math.round(durationMs * 10) / 10,
    bytesTransferred: outcome.volumes.reduce((n, v) => n + v.bytesTransferred, 0),
    incremental: outcome.volumes.length > 0 && outcome.volumes.every((v) => v.incremental),
    volumes: outcome.volumes.map(({ source, ...v }) => ({ ...v, sourceSnapshot: source.id })),
  };
  const store = await openStore(target.records);
  try {
    await publishRecord(store, record, recordKey(o.importSecret, stream.id), o);
  } finally {
    await store.close?.();
  }

  const exported: ExportedRestorePoint = {
    id: record.id,
    consistentAt: record.consistentAt,
    exportedAt: record.exportCompletedAt,
    repositorySnapshots: Object.fromEntries(
      record.volumes.filter((v) => v.repositorySnapshot).map((v) => [v.volume, v.repositorySnapshot ?? '']),
    ),
    copies: record.volumes
      .filter((v) => v.copy)
      .map((v) => ({
        volume: v.volume,
        region: v.copy?.region ?? '',
        snapshotId: v.copy?.id ?? '',
        provider: target.platform?.type ?? 'unknown',
        sizeBytes: v.sizeBytes,
      })),
    exportDurationMs: record.exportDurationMs,
    bytesTransferred: record.bytesTransferred,
    incremental: record.incremental,
  };
  const all = await o.state.update((s) => {
    const st = s.streams[key];
    if (!st) throw new ConflictError(`stream ${key} vanished from the source manifest`);
    st.last = outcome.volumes;
    st.restorePoints.push(exported);
    return st.restorePoints;
  });

  const token = createExportDetails(
    {
      source: { site: o.site, app: o.rp.app, policy: o.stream },
      location: target.location,
      restorePoints: all.slice(-(o.tokenRestorePoints ?? 20)),
      kind: o.exporter.kind,
      stream: { id: stream.id, records: target.records },
      ...(target.platform ? { platform: target.platform } : {}),
      createdAt: completed.toISOString(),
    },
    o.importSecret,
    o.exporter.repositoryPassword(),
  );
  let tokenFile: string | undefined;
  if (o.detailsDir) {
    tokenFile = path.join(o.detailsDir, `${o.rp.app}-${o.stream}.tern-x1`);
    await writeFileAtomic(tokenFile, `${token}\n`);
  }
  return { record, token, ...(tokenFile ? { tokenFile } : {}) };
}
