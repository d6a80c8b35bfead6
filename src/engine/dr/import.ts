/**
 * Import at the DR site: from export details (token) + the import secret, find every restore point the
 * stream published since the last import (catch-up after a gap: all of them, oldest first), check its data
 * is there, optionally restore the newest as a warm standby, and record it. The record is written last and
 * atomically, so a kill at any point leaves no half-imported restore point.
 */
import { IntegrityError, NotFoundError, systemClock, throwIfAborted } from '../../core/index.ts';
import { withCredentialsHint } from './credentials.ts';
import type { Clock, RunOptions } from '../../core/index.ts';
import type { Platform } from '../../platforms/index.ts';
import { openStore } from '../../storage/index.ts';
import type { StoreOptions } from '../../storage/index.ts';
import { openRepository } from './datamover.ts';
import { listRecords, recordKey } from './records.ts';
import { platformFor, restoreImported } from './restore.ts';
import type { RestoreOptions } from './restore.ts';
import type { DrStateStore, ImportStream, ImportedRestorePoint } from './state.ts';
import { readStreamDetails } from './token.ts';
import type { StreamDetails } from './token.ts';
import type { RestorePointRecord } from './types.ts';

export interface ImportOptions extends RunOptions {
  state: DrStateStore;
  token: string;
  importSecret: string;
  /** DR-side retention: keep this many imported restore points per stream (default: all). */
  keepLast?: number;
  /** Warm standby: restore the newest imported restore point into the DR region after importing. */
  restoreAfterImport?: boolean;
  restore?: Pick<RestoreOptions, 'region' | 'nameFor' | 'streamTarget'>;
  platform?: Platform;
  /**
   * Credentials/endpoint for the export location named by the token (s3://, azblob://): the DR site's own
   * location profile (tokens never carry credentials). Without them the store reads its standard env.
   */
  storeOptions?: StoreOptions;
  /** Name of the location profile `storeOptions` came from, remembered on the stream (never the secrets). */
  locationProfile?: string;
  clock?: Clock;
  /** Called at each step ('listed', 'checked:<id>', 'standby:<id>', 'recorded:<id>'); tests stop here. */
  onStep?: (step: string) => void | Promise<void>;
}

export interface ImportResult {
  stream: string;
  app: string;
  kind: 'datamover' | 'snapshot-copy';
  imported: string[];
  alreadyImported: number;
  /** Restore points named by the token whose records are not (yet) at the location. */
  missing: string[];
  /** Records rejected (bad signature, schema). */
  rejected: string[];
  forgotten: string[];
  standby?: { restorePoint: string; durationMs: number };
}

/** Restore points at the export location not yet imported here, oldest first. */
export async function listImportable(
  o: Pick<ImportOptions, 'state' | 'token' | 'importSecret' | 'signal' | 'storeOptions'>,
): Promise<{
  details: StreamDetails;
  records: RestorePointRecord[];
  rejected: string[];
  known: Set<string>;
}> {
  const details = readStreamDetails(o.token, o.importSecret);
  const st = await o.state.read();
  const cur = st.imports[details.stream.id];
  const known = new Set(cur?.restorePoints.map((r) => r.id) ?? []);
  const skip = new Set([...known, ...(cur?.forgotten ?? [])]);
  try {
    const store = await openStore(details.stream.records, o.storeOptions);
    try {
      const { records, errors } = await listRecords(
        store,
        details.stream.id,
        recordKey(o.importSecret, details.stream.id),
        o,
      );
      return {
        details,
        records: records.filter((r) => !skip.has(r.id)),
        rejected: errors.map((e) => e.message),
        known,
      };
    } finally {
      await store.close?.();
    }
  } catch (err) {
    throw withCredentialsHint(err, details.stream.records, o.storeOptions);
  }
}

function streamFrom(
  details: StreamDetails,
  token: string,
  keepLast: number | undefined,
  locationProfile: string | undefined,
): ImportStream {
  const p = details.payload;
  return {
    id: details.stream.id,
    app: p.source.app,
    kind: details.kind,
    sourceSite: p.source.site,
    token,
    location: p.location ?? { profile: 'records', repository: details.stream.records },
    records: details.stream.records,
    ...(p.platform ? { platform: p.platform } : {}),
    ...(keepLast ? { keepLast } : {}),
    ...(locationProfile ? { locationProfile } : {}),
    restorePoints: [],
    forgotten: [],
  };
}

/** Check that a restore point's data is at the location before it is recorded as importable. */
async function checkData(
  rec: RestorePointRecord,
  stream: ImportStream,
  details: StreamDetails,
  o: ImportOptions,
  ctx: { repo?: Awaited<ReturnType<typeof openRepository>>; platform?: Platform | undefined },
): Promise<void> {
  for (const v of rec.volumes) {
    if (v.repositorySnapshot) {
      if (!details.repositoryPassword) throw new IntegrityError('the export details carry no repository key');
      ctx.repo ??= await openRepository(
        stream.location.repository,
        details.repositoryPassword,
        false,
        o.storeOptions,
      ).catch((err: unknown) => {
        throw withCredentialsHint(err, stream.location.repository, o.storeOptions);
      });
      await ctx.repo.loadSnapshotById(v.repositorySnapshot, o);
    }
    if (v.copy) {
      ctx.platform ??= await platformFor(stream, o.platform);
      if (!ctx.platform) throw new IntegrityError('the export details name no platform for the copies');
      // Opening the copy proves it is complete (providers list or open only finished snapshots).
      if (ctx.platform.openSnapshot) {
        const r = await ctx.platform.openSnapshot(v.copy, o).catch((err: unknown) => {
          throw new NotFoundError(
            `copied snapshot ${v.copy?.id} of restore point ${rec.id} is not available`,
            {
              cause: err,
            },
          );
        });
        await r.close();
      }
    }
  }
}

export async function importRestorePoints(o: ImportOptions): Promise<ImportResult> {
  const clock = o.clock ?? systemClock;
  const { details, records, rejected, known } = await listImportable(o);
  await o.onStep?.('listed');
  const st = await o.state.read();
  const stream = st.imports[details.stream.id] ?? streamFrom(details, o.token, o.keepLast, o.locationProfile);
  stream.token = o.token;
  if (o.locationProfile) stream.locationProfile = o.locationProfile;
  const result: ImportResult = {
    stream: stream.id,
    app: stream.app,
    kind: stream.kind,
    imported: [],
    alreadyImported: known.size,
    missing: [],
    rejected,
    forgotten: [],
  };
  const ctx: Parameters<typeof checkData>[4] = {};
  try {
    for (const [i, rec] of records.entries()) {
      throwIfAborted(o.signal);
      await checkData(rec, stream, details, o, ctx);
      await o.onStep?.(`checked:${rec.id}`);
      const imported: ImportedRestorePoint = { ...rec, importedAt: clock.now().toISOString() };
      if (o.restoreAfterImport && i === records.length - 1) {
        const r = await restoreImported(
          stream,
          imported,
          hasAllCopies(rec) ? 'snapshot-copy' : 'repository',
          {
            ...o.restore,
            importSecret: o.importSecret,
            platform: ctx.platform ?? o.platform,
            ...(o.storeOptions ? { storeOptions: o.storeOptions } : {}),
            overwrite: true,
            clock,
            signal: o.signal,
            onProgress: o.onProgress,
          },
        );
        imported.standby = { restoredAt: clock.now().toISOString(), durationMs: r.durationMs };
        result.standby = { restorePoint: rec.id, durationMs: r.durationMs };
        await o.onStep?.(`standby:${rec.id}`);
      }
      // The record goes in last, atomically: before this line the restore point does not exist here.
      const keepLast = o.keepLast ?? stream.keepLast;
      const forgotten = await o.state.update((s) => {
        const cur = s.imports[stream.id] ?? { ...stream, restorePoints: [] };
        cur.token = o.token;
        if (o.locationProfile) cur.locationProfile = o.locationProfile;
        if (keepLast) cur.keepLast = keepLast;
        cur.lastImportAt = clock.now().toISOString();
        if (!cur.restorePoints.some((r) => r.id === rec.id)) cur.restorePoints.push(imported);
        cur.restorePoints.sort((a, b) => a.consistentAt.localeCompare(b.consistentAt));
        const drop = keepLast
          ? cur.restorePoints.splice(0, Math.max(0, cur.restorePoints.length - keepLast))
          : [];
        cur.forgotten = [...cur.forgotten, ...drop.map((r) => r.id)].slice(-10_000);
        s.imports[stream.id] = cur;
        return drop.map((r) => r.id);
      });
      result.imported.push(rec.id);
      result.forgotten.push(...forgotten);
      await o.onStep?.(`recorded:${rec.id}`);
    }
    if (records.length === 0)
      await o.state.update((s) => {
        const cur = s.imports[stream.id] ?? { ...stream, restorePoints: [] };
        cur.token = o.token;
        if (o.locationProfile) cur.locationProfile = o.locationProfile;
        cur.lastImportAt = clock.now().toISOString();
        s.imports[stream.id] = cur;
      });
  } finally {
    if (ctx.repo) {
      await ctx.repo.close();
      await ctx.repo.store.close?.();
    }
  }
  const have = new Set([
    ...known,
    ...result.imported,
    ...((await o.state.read()).imports[stream.id]?.forgotten ?? []),
  ]);
  result.missing = details.payload.restorePoints.map((r) => r.id).filter((id) => !have.has(id));
  return result;
}

function hasAllCopies(rec: RestorePointRecord): boolean {
  return rec.volumes.length > 0 && rec.volumes.every((v) => v.copy);
}
