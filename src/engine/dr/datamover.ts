/**
 * Datamover export: each volume snapshot goes into the repository as a block image (or a directory tree),
 * incremental against the stream's previous repository snapshot, reading only the ranges the platform
 * reports as changed since the previous source snapshot.
 */
import { InputError, NotFoundError, throwIfAborted } from '../../core/index.ts';
import type { RunOptions } from '../../core/index.ts';
import type { ByteRangeList, Platform, SnapshotRef } from '../../platforms/index.ts';
import { Repository, backupImage } from '../../repo/index.ts';
import type { BackupSession, SnapshotManifest } from '../../repo/index.ts';
import { backupTree } from '../../repo/tree/index.ts';
import { openStore } from '../../storage/index.ts';
import type { StoreOptions } from '../../storage/index.ts';
import type { ExportOutcome, ExportTarget, Exporter, SourceRestorePoint, VolumeExport } from './types.ts';

export interface DatamoverExporterOptions {
  platform: Platform;
  /** Repository URL without credentials (path, s3://, azblob://). */
  repository: string;
  password: string;
  profile?: string;
  /** Create the repository when none exists at the URL. */
  init?: boolean;
  chunkSize?: number;
}

export async function openRepository(
  url: string,
  password: string,
  init = false,
  storeOptions: StoreOptions = {},
): Promise<Repository> {
  const store = await openStore(url, storeOptions);
  try {
    return await Repository.open(store, password);
  } catch (err) {
    if (!(init && err instanceof NotFoundError)) throw err;
    return Repository.init(store, password);
  }
}

export class DatamoverExporter implements Exporter {
  readonly kind = 'datamover' as const;
  private readonly o: DatamoverExporterOptions;

  constructor(o: DatamoverExporterOptions) {
    this.o = o;
  }

  target(): ExportTarget {
    return {
      location: { profile: this.o.profile ?? 'repository', repository: this.o.repository },
      records: this.o.repository,
    };
  }

  repositoryPassword(): string {
    return this.o.password;
  }

  async exportRestorePoint(
    rp: SourceRestorePoint,
    previous: VolumeExport[] | undefined,
    opts: RunOptions = {},
  ): Promise<ExportOutcome> {
    const repo = await openRepository(this.o.repository, this.o.password, this.o.init);
    try {
      const session = await repo.startBackup();
      try {
        const volumes: VolumeExport[] = [];
        for (const { volume, snapshot } of rp.volumes) {
          throwIfAborted(opts.signal);
          const prev = previous?.find((v) => v.volume === volume.name && v.repositorySnapshot);
          const parent = prev?.repositorySnapshot
            ? await repo.loadSnapshotById(prev.repositorySnapshot, opts).catch((err: unknown) => {
                if (err instanceof NotFoundError) return undefined;
                throw err;
              })
            : undefined;
          const m = await this.backupOne(repo, session, rp, volume.name, snapshot, prev, parent, opts);
          volumes.push({
            volume: volume.name,
            kind: snapshot.kind,
            sizeBytes: snapshot.sizeBytes,
            source: snapshot,
            repositorySnapshot: m.id,
            bytesTransferred: m.summary.bytesAdded,
            incremental: parent !== undefined,
          });
        }
        return { volumes };
      } finally {
        await session.close();
      }
    } finally {
      await repo.close();
      await repo.store.close?.();
    }
  }

  private async changed(
    prev: VolumeExport | undefined,
    snapshot: SnapshotRef,
    opts: RunOptions,
  ): Promise<ByteRangeList | undefined> {
    const { platform } = this.o;
    if (!prev || !platform.changedRanges || snapshot.kind !== 'block') return undefined;
    try {
      return await platform.changedRanges(prev.source, snapshot, opts);
    } catch (err) {
      // The base snapshot is gone: read everything; unchanged chunks still deduplicate.
      if (err instanceof NotFoundError) return undefined;
      throw err;
    }
  }

  private async backupOne(
    repo: Repository,
    session: BackupSession,
    rp: SourceRestorePoint,
    volume: string,
    snapshot: SnapshotRef,
    prev: VolumeExport | undefined,
    parent: SnapshotManifest | undefined,
    opts: RunOptions,
  ): Promise<SnapshotManifest> {
    const { platform } = this.o;
    if (!platform.openSnapshot)
      throw new InputError(`platform "${platform.provider}" cannot open snapshots for the datamover`);
    const reader = await platform.openSnapshot(snapshot, opts);
    const started = Date.now();
    try {
      if (!reader.path)
        throw new InputError(`snapshot ${snapshot.id} is not readable on this host (no local path)`);
      const tags = [`tern:app=${rp.app}`, `tern:rp=${rp.id}`, `tern:volume=${volume}`];
      const paths = [`${rp.app}/${volume}`];
      if (snapshot.kind === 'block') {
        const parentMap = parent?.root.kind === 'image' ? parent.root.map : undefined;
        const ranges = parentMap ? await this.changed(prev, snapshot, opts) : undefined;
        const r = await backupImage(session, reader.path, {
          ...opts,
          reader: repo,
          parentMap,
          changedRanges: ranges?.ranges,
          chunkSize: this.o.chunkSize,
        });
        return session.saveSnapshot({
          paths,
          tags,
          parent: parentMap ? parent?.id : undefined,
          root: { kind: 'image', map: r.map, size: r.size },
          summary: { bytesRead: r.bytesRead, bytesAdded: r.bytesAdded, durationMs: Date.now() - started },
        });
      }
      const parentTree = parent?.root.kind === 'tree' ? parent.root.tree : undefined;
      const r = await backupTree(session, reader.path, { ...opts, reader: repo, parentTree });
      return session.saveSnapshot({
        paths,
        tags,
        parent: parentTree ? parent?.id : undefined,
        root: { kind: 'tree', tree: r.tree },
        summary: {
          bytesRead: r.stats.bytesRead,
          bytesAdded: r.stats.bytesAdded,
          filesNew: r.stats.filesNew,
          filesChanged: r.stats.filesChanged,
          filesUnmodified: r.stats.filesUnmodified,
          durationMs: Date.now() - started,
        },
      });
    } finally {
      await reader.close();
    }
  }
}
