/**
 * The 'datamover' exporter: each volume's local snapshot is read as a block image (or, for a directory-tree
 * volume, as a tree) and backed up into the repository of the policy's location profile. Incremental: the previous export's repository snapshot is the
 * parent (unchanged chunks keep their ids) and, while the previous local snapshot still exists, the platform's
 * changedRanges limit what is read. The repository passphrase is the profile's `repositoryPassword` secret; the
 * repository is created on first use.
 */
import crypto from 'node:crypto';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { ConflictError, InputError, NotFoundError, type Clock, type RunOptions } from '../core/index.ts';
import type { LocationProfile, Tier } from '../core/model.ts';
import { backupImage, prune, Repository, restoreImage, type SnapshotManifest } from '../repo/index.ts';
import { backupTree, restoreTree } from '../repo/tree/index.ts';
import { openStore, type ObjectStore, type StoreOptions } from '../storage/index.ts';
import type { ExpireContext, ExportContext, Exporter, ExportResult } from './exporter.ts';

/** Object store options from a location profile's settings and secrets. */
export function storeOptions(p: LocationProfile): StoreOptions {
  const o: StoreOptions = {};
  const s = p.settings;
  const k = p.secrets;
  if (s['endpoint']) o.s3Endpoint = s['endpoint'];
  if (s['region']) o.s3Region = s['region'];
  if (s['forcePathStyle']) o.s3ForcePathStyle = s['forcePathStyle'] === 'true';
  if (s['azureEndpoint']) o.azureEndpoint = s['azureEndpoint'];
  if (k['azureKey']) o.azureKey = k['azureKey'];
  if (k['azureSas']) o.azureSas = k['azureSas'];
  if (k['azureConnectionString']) o.azureConnectionString = k['azureConnectionString'];
  if (k['accessKeyId'] && k['secretAccessKey'])
    o.env = {
      ...process.env,
      AWS_ACCESS_KEY_ID: k['accessKeyId'],
      AWS_SECRET_ACCESS_KEY: k['secretAccessKey'],
    };
  return o;
}

/** URL of the repository: the profile URL plus the policy's repository path. */
export function repositoryUrl(p: LocationProfile, repositoryPath: string): string {
  const base = p.url.replace(/\/+$/, '');
  const sub = repositoryPath.replace(/^\/+|\/+$/g, '');
  return sub ? `${base}/${sub}` : base;
}

export async function openRepository(
  p: LocationProfile,
  repositoryPath: string,
  clock: Clock,
  create: boolean,
): Promise<{ repo: Repository; store: ObjectStore }> {
  const password = p.secrets['repositoryPassword'];
  if (!password) throw new InputError(`location profile "${p.name}" has no repositoryPassword secret`);
  const store = await openStore(repositoryUrl(p, repositoryPath), storeOptions(p));
  try {
    const exists = (await store.head('config')) !== undefined;
    if (!exists && !create) throw new NotFoundError(`no repository at ${store.location}`);
    const repo = exists
      ? await Repository.open(store, password, { clock })
      : await Repository.init(store, password, { clock });
    return { repo, store };
  } catch (err) {
    await store.close?.();
    throw err;
  }
}

export const datamoverExporter: Exporter = {
  kind: 'datamover',
  tierKind: 'repository',

  async export(ctx: ExportContext): Promise<ExportResult> {
    const exp = ctx.policy.export;
    if (exp?.mode !== 'datamover')
      throw new InputError(`policy "${ctx.policy.name}" has no datamover export`);
    const profile = await ctx.locationProfile(exp.locationProfile);
    const { repo, store } = await openRepository(profile, exp.repositoryPath, ctx.clock, true);
    const prevTier = ctx.previous?.tier.kind === 'repository' ? ctx.previous.tier : undefined;
    const snapshots: Record<string, string> = {};
    let bytesRead = 0;
    let bytesTransferred = 0;
    let incremental = false;
    const total = Object.values(ctx.snapshots).reduce((n, s) => n + s.sizeBytes, 0) || 1;
    try {
      for (const [volume, snap] of Object.entries(ctx.snapshots)) {
        if (!ctx.platform.openSnapshot)
          throw new InputError(`platform ${ctx.platform.provider} cannot read snapshots`);
        const reader = await ctx.platform.openSnapshot(snap, { signal: ctx.signal });
        try {
          if (!reader.path)
            throw new InputError(`snapshot ${snap.id} is not readable as a path on this host`);
          let parent: SnapshotManifest | undefined;
          const parentId = prevTier?.snapshots[volume];
          if (parentId)
            parent = await repo.loadSnapshotById(parentId, { signal: ctx.signal }).catch(() => undefined);
          let changedRanges: { offset: number; length: number }[] | undefined;
          const prevSnap = ctx.previous?.snapshots[volume];
          if (parent && prevSnap && snap.kind === 'block' && ctx.platform.changedRanges) {
            changedRanges = (await ctx.platform.changedRanges(prevSnap, snap, { signal: ctx.signal })).ranges;
          }
          if (parent) incremental = true;
          const started = ctx.clock.now().getTime();
          const baseRead = bytesRead;
          const baseSent = bytesTransferred;
          const session = await repo.startBackup();
          try {
            const onProgress = (p: { bytesRead: number; bytesTransferred: number }) =>
              ctx.onProgress({
                phase: `export ${volume}`,
                bytesRead: baseRead + p.bytesRead,
                bytesTransferred: baseSent + p.bytesTransferred,
                bytesTotal: total,
              });
            const common = {
              paths: [`${ctx.app.name}/${volume}`],
              tags: [`app:${ctx.app.name}`, `volume:${volume}`, `restore-point:${ctx.restorePoint.id}`],
              ...(parent ? { parent: parent.id } : {}),
            };
            let m: SnapshotManifest;
            if (snap.kind === 'fs') {
              // Directory trees: content-defined chunks; unchanged files (size, mtime, ctime, inode) reuse the parent's.
              const r = await backupTree(session, reader.path, {
                signal: ctx.signal,
                reader: repo,
                parentTree: parent?.root.kind === 'tree' ? parent.root.tree : undefined,
                onProgress,
              });
              m = await session.saveSnapshot({
                ...common,
                root: { kind: 'tree', tree: r.tree },
                summary: {
                  bytesRead: r.stats.bytesRead,
                  bytesAdded: r.stats.bytesAdded,
                  filesNew: r.stats.filesNew,
                  filesChanged: r.stats.filesChanged,
                  filesUnmodified: r.stats.filesUnmodified,
                  durationMs: ctx.clock.now().getTime() - started,
                },
              });
            } else {
              const r = await backupImage(session, reader.path, {
                signal: ctx.signal,
                reader: repo,
                parentMap: parent?.root.kind === 'image' ? parent.root.map : undefined,
                changedRanges: parent?.root.kind === 'image' ? changedRanges : undefined,
                onProgress,
              });
              m = await session.saveSnapshot({
                ...common,
                root: { kind: 'image', map: r.map, size: r.size },
                summary: {
                  bytesRead: r.bytesRead,
                  bytesAdded: r.bytesAdded,
                  durationMs: ctx.clock.now().getTime() - started,
                },
              });
            }
            bytesRead += m.summary.bytesRead;
            bytesTransferred += m.summary.bytesAdded;
            snapshots[volume] = m.id;
          } finally {
            await session.close();
          }
        } finally {
          await reader.close();
        }
      }
    } finally {
      await repo.close();
      await store.close?.();
    }
    const tier: Tier = {
      kind: 'repository',
      locationProfile: exp.locationProfile,
      repositoryPath: exp.repositoryPath,
      snapshots,
      bytesTransferred,
    };
    return { tier, bytesRead, bytesTransferred, incremental };
  },

  async expire(ctx: ExpireContext, tiers: Tier[]): Promise<void> {
    const groups = new Map<string, { profile: string; path: string; ids: string[] }>();
    for (const t of tiers) {
      if (t.kind !== 'repository') continue;
      const key = `${t.locationProfile}\0${t.repositoryPath}`;
      const g = groups.get(key) ?? { profile: t.locationProfile, path: t.repositoryPath, ids: [] };
      g.ids.push(...Object.values(t.snapshots));
      groups.set(key, g);
    }
    for (const g of groups.values()) {
      const profile = await ctx.locationProfile(g.profile);
      const { repo, store } = await openRepository(profile, g.path, ctx.clock, false);
      try {
        for (const id of g.ids) await store.delete(`snapshots/${id}`, { signal: ctx.signal });
        // Space is reclaimed by prune; a lock held by another writer only postpones it to a later run.
        await prune(repo, { signal: ctx.signal }).catch(() => undefined);
      } finally {
        await repo.close();
        await store.close?.();
      }
    }
  },
};

/**
 * Streams one repository snapshot onto a path: a block image (new file, or replacing one with `overwrite`) or a
 * directory tree (restored beside the target, then swapped in, so a failed restore leaves the old tree).
 */
export async function restoreFromRepository(
  profile: LocationProfile,
  repositoryPath: string,
  snapshotId: string,
  target: string,
  clock: Clock,
  opts: RunOptions & { overwrite?: boolean },
): Promise<{ bytesWritten: number; size: number }> {
  const { repo, store } = await openRepository(profile, repositoryPath, clock, false);
  try {
    const m = await repo.loadSnapshotById(snapshotId, opts);
    if (m.root.kind === 'image') {
      const r = await restoreImage(repo, m.root.map, target, opts);
      return { bytesWritten: r.bytesWritten, size: r.size };
    }
    const tmp = path.join(path.dirname(target), `.tmp-tern-restore-${crypto.randomBytes(4).toString('hex')}`);
    try {
      const r = await restoreTree(repo, m.root.tree, tmp, opts);
      const exists = await fsp
        .lstat(target)
        .then(() => true)
        .catch(() => false);
      if (exists && !opts.overwrite) throw new ConflictError(`${target} exists`);
      if (exists) {
        const old = `${tmp}.old`;
        await fsp.rename(target, old);
        await fsp.rename(tmp, target);
        await fsp.rm(old, { recursive: true, force: true });
      } else await fsp.rename(tmp, target);
      return { bytesWritten: r.bytes, size: r.bytes };
    } finally {
      await fsp.rm(tmp, { recursive: true, force: true });
    }
  } finally {
    await repo.close();
    await store.close?.();
  }
}
