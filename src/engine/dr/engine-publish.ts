/**
 * Export details for the engine's policies: from the catalog's restore points of one policy (their live
 * 'repository' or 'region-copy' tiers and their export actions), publish a signed record per restore point at
 * the export location (records already there are left alone) and issue a fresh token. The DR site then
 * imports with `importRestorePoints` exactly as for `runExport` streams.
 */
import { createExportDetails, InputError } from '../../core/index.ts';
import type { ExportedRestorePoint, RunOptions } from '../../core/index.ts';
import type { RestorePoint, Tier } from '../../core/model.ts';
import { openStore } from '../../storage/index.ts';
import type { ObjectStore } from '../../storage/index.ts';
import { repositoryUrl, storeOptions } from '../datamover.ts';
import type { Engine } from '../engine.ts';
import { platformConfig } from '../engine.ts';
import { writeFileAtomic } from './atomic.ts';
import { snapshotById } from './engine-exporter.ts';
import { publishRecord, recordKey } from './records.ts';
import type { ExportTarget, RestorePointRecord } from './types.ts';
import path from 'node:path';

export interface PublishOptions extends RunOptions {
  /** Name of this (source) site, part of the stream id. */
  site: string;
  policy: string;
  importSecret: string;
  /** Records location of a snapshot-copy policy (default: the DR region's path when the platform has one). */
  records?: string;
  /** Directory for the export details file (`<app>-<policy>.tern-x1`). */
  detailsDir?: string;
  tokenRestorePoints?: number;
}

export interface PublishResult {
  token: string;
  tokenFile?: string;
  stream: string;
  published: string[];
  restorePoints: number;
}

function live(rp: RestorePoint, kind: Tier['kind']): Tier | undefined {
  return rp.tiers.find((t) => t.kind === kind && !t.expiredAt);
}

export async function publishExportDetails(engine: Engine, o: PublishOptions): Promise<PublishResult> {
  const policy = await engine.getPolicy(o.policy);
  const app = await engine.getApp(policy.app);
  const exp = policy.export;
  if (!exp) throw new InputError(`policy "${policy.name}" has no export step`);
  const kind = exp.mode;
  const tierKind = kind === 'datamover' ? 'repository' : 'region-copy';
  const streamId = `${o.site}-${app.name}-${policy.name}`.replace(/[^A-Za-z0-9._-]/g, '-');

  let target: ExportTarget;
  let store: ObjectStore;
  let password: string | undefined;
  if (exp.mode === 'datamover') {
    const profile = engine.locationProfile(exp.locationProfile);
    const url = repositoryUrl(profile, exp.repositoryPath);
    password = profile.secrets['repositoryPassword'];
    if (!password)
      throw new InputError(`location profile "${profile.name}" has no repositoryPassword secret`);
    target = { location: { profile: profile.name, repository: url }, records: url };
    store = await openStore(url, storeOptions(profile));
  } else {
    const infra = engine.catalog.getProfile(app.infraProfile);
    if (infra.kind !== 'infra') throw new InputError(`profile "${app.infraProfile}" is not an infra profile`);
    const regions = platformConfig(infra)['regions'];
    const regionPath =
      regions && typeof regions === 'object' ? (regions as Record<string, unknown>)[exp.region] : undefined;
    const records = o.records ?? (typeof regionPath === 'string' ? regionPath : undefined);
    if (!records)
      throw new InputError(
        `policy "${policy.name}": give a records location for the copies in ${exp.region}`,
      );
    target = {
      location: { profile: `${infra.name}:${exp.region}`, repository: records },
      records,
      // Only region paths go into the token: the rest of an infra profile may hold secrets.
      ...(typeof regionPath === 'string'
        ? { platform: { type: infra.platform, config: { regions: { [exp.region]: regionPath } } } }
        : {}),
    };
    store = await openStore(records);
  }

  const rps = engine.catalog
    .listRestorePoints({ app: app.name, policy: policy.name })
    .filter((rp) => rp.exportCompletedAt && live(rp, tierKind))
    .sort((a, b) => a.consistentAt.localeCompare(b.consistentAt));
  const actions = engine.catalog
    .listActions({ app: app.name, policy: policy.name, type: 'export', state: 'Complete' })
    .filter((a) => a.restorePoint);
  const published: string[] = [];
  const exported: ExportedRestorePoint[] = [];
  try {
    const have = new Set<string>();
    for await (const obj of store.list(`tern-exports/${streamId}/restore-points/`, o))
      have.add(
        obj.key
          .split('/')
          .pop()
          ?.replace(/\.json$/, '') ?? '',
      );
    const key = recordKey(o.importSecret, streamId);
    for (const rp of rps) {
      const tier = live(rp, tierKind);
      if (!tier || tier.kind === 'local') continue;
      const local = live(rp, 'local');
      const act = actions.find((a) => a.restorePoint === rp.id);
      const completed = rp.exportCompletedAt ?? rp.consistentAt;
      const started = act?.startedAt ?? rp.consistentAt;
      const exportMs = act?.params['exportMs'];
      const bytes = act?.bytesTransferred ?? (tier.kind === 'repository' ? tier.bytesTransferred : 0);
      const names = Object.keys(tier.snapshots);
      const rec: RestorePointRecord = {
        v: 1,
        id: rp.id,
        app: app.name,
        stream: streamId,
        kind,
        sourceSite: o.site,
        consistentAt: new Date(rp.consistentAt).toISOString(),
        exportStartedAt: new Date(started).toISOString(),
        exportCompletedAt: new Date(completed).toISOString(),
        exportDurationMs:
          typeof exportMs === 'number' ? exportMs : Math.max(0, Date.parse(completed) - Date.parse(started)),
        bytesTransferred: bytes,
        incremental: act?.params['incremental'] === true,
        volumes: names.map((volume, i) => {
          const id = tier.snapshots[volume] ?? '';
          const size = app.volumes.find((v) => v.name === volume)?.sizeBytes ?? 0;
          return {
            volume,
            kind: 'block' as const,
            sizeBytes: size,
            sourceSnapshot: local?.snapshots[volume] ?? '',
            // Bytes are known per export action, not per volume: the first volume carries them.
            bytesTransferred: i === 0 ? bytes : 0,
            incremental: act?.params['incremental'] === true,
            ...(tier.kind === 'repository'
              ? { repositorySnapshot: id }
              : { copy: snapshotById(id, tier.region, { sizeBytes: size }) }),
          };
        }),
      };
      if (!have.has(rp.id)) {
        await publishRecord(store, rec, key, o);
        published.push(rp.id);
      }
      exported.push({
        id: rec.id,
        consistentAt: rec.consistentAt,
        exportedAt: rec.exportCompletedAt,
        repositorySnapshots: tier.kind === 'repository' ? tier.snapshots : {},
        copies:
          tier.kind === 'region-copy'
            ? names.map((volume) => ({
                volume,
                region: tier.region,
                snapshotId: tier.snapshots[volume] ?? '',
                provider: target.platform?.type ?? 'platform',
                sizeBytes: rec.volumes.find((v) => v.volume === volume)?.sizeBytes ?? 0,
              }))
            : [],
        exportDurationMs: rec.exportDurationMs,
        bytesTransferred: rec.bytesTransferred,
        incremental: rec.incremental,
      });
    }
  } finally {
    await store.close?.();
  }
  const token = createExportDetails(
    {
      source: { site: o.site, app: app.name, policy: policy.name },
      location: target.location,
      restorePoints: exported.slice(-(o.tokenRestorePoints ?? 20)),
      kind,
      stream: { id: streamId, records: target.records },
      ...(target.platform ? { platform: target.platform } : {}),
    },
    o.importSecret,
    password,
  );
  let tokenFile: string | undefined;
  if (o.detailsDir) {
    tokenFile = path.join(o.detailsDir, `${app.name}-${policy.name}.tern-x1`);
    await writeFileAtomic(tokenFile, `${token}\n`);
  }
  return {
    token,
    ...(tokenFile ? { tokenFile } : {}),
    stream: streamId,
    published,
    restorePoints: exported.length,
  };
}
