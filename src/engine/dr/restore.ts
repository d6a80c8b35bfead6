/**
 * Restore at the DR site from an imported restore point (the newest across the app's streams unless one is
 * named). The path is chosen automatically: a copied snapshot when the restore point has one for every volume
 * (the platform clones it, instantly where it can), else the repository stream; `path` overrides (and then
 * the newest restore point having that path is used).
 */
import fs from 'node:fs';
import path from 'node:path';
import { InputError, NotFoundError, systemClock, throwIfAborted } from '../../core/index.ts';
import type { Clock, RunOptions } from '../../core/index.ts';
import { openPlatform } from '../../platforms/index.ts';
import type { Platform, VolumeRef } from '../../platforms/index.ts';
import type { StoreOptions } from '../../storage/index.ts';
import { restoreImage } from '../../repo/index.ts';
import { restoreTree } from '../../repo/tree/index.ts';
import { openRepository } from './datamover.ts';
import { withCredentialsHint } from './credentials.ts';
import type { DrStateStore, ImportStream, ImportedRestorePoint, RestoreRun } from './state.ts';
import { readStreamDetails } from './token.ts';
import type { RestorePath } from './types.ts';

/** Where a repository-stream restore writes a block image or tree for a volume in a region. */
export type StreamTarget = (region: string, name: string) => string;

/** Platforms that expose volumes as paths on this host (local) give the default stream target. */
function defaultStreamTarget(platform: Platform): StreamTarget | undefined {
  const p = platform as Platform & { volumeDataPath?: (v: VolumeRef) => string };
  if (typeof p.volumeDataPath !== 'function') return undefined;
  const fn = p.volumeDataPath.bind(p);
  return (region, name) => fn({ id: `${region}/${name}`, region, name, sizeBytes: 0, kind: 'block' });
}

export async function platformFor(stream: ImportStream, override?: Platform): Promise<Platform | undefined> {
  if (override) return override;
  if (!stream.platform) return undefined;
  return openPlatform(stream.platform.type, stream.platform.config);
}

export interface RestoreOptions extends RunOptions {
  state: DrStateStore;
  importSecret: string;
  app: string;
  /** A restore point id, or the newest imported one across the app's streams. */
  restorePoint?: string;
  /** 'auto' (default): snapshot copy when present, else repository. */
  path?: RestorePath | 'auto';
  /** Platform at the DR site (default: opened from the export details). */
  platform?: Platform;
  region?: string;
  /** Name of the restored volume (default: the source volume name). */
  nameFor?: (volume: string) => string;
  overwrite?: boolean;
  streamTarget?: StreamTarget;
  /** Credentials for the stream's repository (s3://, azblob://): options, or per stream (its location profile). */
  storeOptions?: StoreOptions | ((stream: ImportStream) => StoreOptions | undefined);
  clock?: Clock;
  /** Do not record the run (warm-standby restores inside an import record themselves). */
  record?: boolean;
}

export interface RestoreResult extends RestoreRun {
  outputs: { volume: string; path?: string; volumeRef?: VolumeRef }[];
}

function hasCopies(rp: ImportedRestorePoint): boolean {
  return rp.volumes.length > 0 && rp.volumes.every((v) => v.copy);
}

function hasRepository(rp: ImportedRestorePoint): boolean {
  return rp.volumes.length > 0 && rp.volumes.every((v) => v.repositorySnapshot);
}

export function pickRestorePoint(
  streams: ImportStream[],
  want: { restorePoint?: string; path?: RestorePath | 'auto' },
): { stream: ImportStream; rp: ImportedRestorePoint; path: RestorePath } {
  const candidates: { stream: ImportStream; rp: ImportedRestorePoint; path: RestorePath }[] = [];
  for (const stream of streams)
    for (const rp of stream.restorePoints) {
      if (want.restorePoint && rp.id !== want.restorePoint) continue;
      if (hasCopies(rp) && (want.path ?? 'auto') !== 'repository')
        candidates.push({ stream, rp, path: 'snapshot-copy' });
      if (hasRepository(rp) && (want.path ?? 'auto') !== 'snapshot-copy')
        candidates.push({ stream, rp, path: 'repository' });
    }
  // The newest restore point (best RPO); for it, the copied snapshot when it has one (instant where the platform
  // clones), else the repository stream.
  candidates.sort(
    (a, b) =>
      b.rp.consistentAt.localeCompare(a.rp.consistentAt) ||
      (a.path === 'snapshot-copy' ? -1 : 0) - (b.path === 'snapshot-copy' ? -1 : 0),
  );
  const best = candidates[0];
  if (!best)
    throw new NotFoundError(
      `no imported restore point${want.restorePoint ? ` "${want.restorePoint}"` : ''}${want.path && want.path !== 'auto' ? ` with a ${want.path} path` : ''}`,
    );
  return best;
}

export async function restoreImported(
  stream: ImportStream,
  rp: ImportedRestorePoint,
  chosen: RestorePath,
  o: Omit<RestoreOptions, 'state' | 'app' | 'restorePoint' | 'path'>,
): Promise<RestoreResult> {
  const clock = o.clock ?? systemClock;
  const startedAt = clock.now();
  const t0 = performance.now();
  const outputs: RestoreResult['outputs'] = [];
  let bytes = 0;
  const nameFor = o.nameFor ?? ((v: string) => v);
  const volumesOut: RestoreRun['volumes'] = [];
  if (chosen === 'snapshot-copy') {
    const platform = await platformFor(stream, o.platform);
    if (!platform) throw new InputError('the export details name no platform to restore the copies from');
    for (const v of rp.volumes) {
      throwIfAborted(o.signal);
      if (!v.copy) throw new NotFoundError(`restore point ${rp.id} has no copy of volume ${v.volume}`);
      const region = o.region ?? v.copy.region;
      const ref = await platform.restoreVolume(
        v.copy,
        { name: nameFor(v.volume), region, overwrite: o.overwrite ?? false },
        o,
      );
      outputs.push({
        volume: v.volume,
        volumeRef: ref,
        path: defaultStreamTarget(platform)?.(region, ref.name),
      });
      volumesOut.push({ volume: v.volume, restoredAs: ref.name, region });
    }
  } else {
    const details = readStreamDetails(stream.token, o.importSecret);
    if (!details.repositoryPassword) throw new InputError('the export details carry no repository key');
    const platform = await platformFor(stream, o.platform);
    const target = o.streamTarget ?? (platform ? defaultStreamTarget(platform) : undefined);
    if (!target) throw new InputError('no place to restore volumes to: give a stream target');
    const region = o.region ?? (platform ? (await platform.info()).regions[0]?.name : undefined) ?? 'default';
    const storeOptions = typeof o.storeOptions === 'function' ? o.storeOptions(stream) : o.storeOptions;
    const repo = await openRepository(
      stream.location.repository,
      details.repositoryPassword,
      false,
      storeOptions,
    ).catch((err: unknown) => {
      throw withCredentialsHint(err, stream.location.repository, storeOptions);
    });
    try {
      for (const v of rp.volumes) {
        throwIfAborted(o.signal);
        if (!v.repositorySnapshot)
          throw new NotFoundError(`restore point ${rp.id} has no repository data for ${v.volume}`);
        const m = await repo.loadSnapshotById(v.repositorySnapshot, o);
        const dest = target(region, nameFor(v.volume));
        await fs.promises.mkdir(path.dirname(dest), { recursive: true });
        if (m.root.kind === 'image') {
          const r = await restoreImage(repo, m.root.map, dest, { ...o, overwrite: o.overwrite ?? false });
          bytes += r.bytesWritten;
        } else {
          const r = await restoreTree(repo, m.root.tree, dest, { ...o, overwrite: o.overwrite ?? false });
          bytes += r.bytes;
        }
        outputs.push({ volume: v.volume, path: dest });
        volumesOut.push({ volume: v.volume, restoredAs: nameFor(v.volume), region });
      }
    } finally {
      await repo.close();
      await repo.store.close?.();
    }
  }
  return {
    stream: stream.id,
    app: rp.app,
    restorePoint: rp.id,
    consistentAt: rp.consistentAt,
    path: chosen,
    startedAt: startedAt.toISOString(),
    durationMs: Math.round((performance.now() - t0) * 10) / 10,
    bytesTransferred: bytes,
    volumes: volumesOut,
    outputs,
  };
}

/** Restore an application at the DR site and record the run (its duration is the measured RTO of the path). */
export async function restoreAtDr(o: RestoreOptions): Promise<RestoreResult> {
  const st = await o.state.read();
  const streams = Object.values(st.imports).filter((s) => s.app === o.app);
  if (streams.length === 0) throw new NotFoundError(`nothing imported for application "${o.app}"`);
  const { stream, rp, path: chosen } = pickRestorePoint(streams, o);
  const r = await restoreImported(stream, rp, chosen, o);
  if (o.record !== false)
    await o.state.update((s) => {
      const { outputs: _outputs, ...run } = r;
      s.restores.push(run);
    });
  return r;
}
