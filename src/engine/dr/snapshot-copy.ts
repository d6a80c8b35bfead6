/**
 * Snapshot-copy export: each volume's snapshot is copied to the DR region by the platform, incrementally on
 * top of the stream's previous copy (the platform writes only the changed ranges into a clone of it).
 */
import { NotFoundError, throwIfAborted } from '../../core/index.ts';
import type { RunOptions } from '../../core/index.ts';
import type { CopyResult, Platform, SnapshotRef } from '../../platforms/index.ts';
import type { ExportOutcome, ExportTarget, Exporter, SourceRestorePoint, VolumeExport } from './types.ts';

export interface SnapshotCopyExporterOptions {
  platform: Platform;
  toRegion: string;
  /** Where the DR site finds the copies and the records: location profile name, records object store URL. */
  profile?: string;
  records: string;
  /** How the DR site opens the platform holding the copies (no secrets). */
  drPlatform: { type: string; config: Record<string, unknown> };
}

export class SnapshotCopyExporter implements Exporter {
  readonly kind = 'snapshot-copy' as const;
  private readonly o: SnapshotCopyExporterOptions;

  constructor(o: SnapshotCopyExporterOptions) {
    this.o = o;
  }

  target(): ExportTarget {
    return {
      location: {
        profile: this.o.profile ?? `${this.o.platform.provider}:${this.o.toRegion}`,
        repository: this.o.records,
      },
      records: this.o.records,
      platform: this.o.drPlatform,
    };
  }

  repositoryPassword(): undefined {
    return undefined;
  }

  async exportRestorePoint(
    rp: SourceRestorePoint,
    previous: VolumeExport[] | undefined,
    opts: RunOptions = {},
  ): Promise<ExportOutcome> {
    const volumes: VolumeExport[] = [];
    for (const { volume, snapshot } of rp.volumes) {
      throwIfAborted(opts.signal);
      const prev = previous?.find((v) => v.volume === volume.name && v.copy);
      const r = await this.copy(snapshot, prev, opts);
      volumes.push({
        volume: volume.name,
        kind: snapshot.kind,
        sizeBytes: snapshot.sizeBytes,
        source: snapshot,
        copy: r.snapshot,
        bytesTransferred: r.bytesTransferred,
        incremental: r.incremental,
      });
    }
    return { volumes };
  }

  private async copy(
    snapshot: SnapshotRef,
    prev: VolumeExport | undefined,
    opts: RunOptions,
  ): Promise<CopyResult> {
    const { platform, toRegion } = this.o;
    if (!prev?.copy) return platform.copySnapshot(snapshot, toRegion, opts);
    try {
      return await platform.copySnapshot(snapshot, toRegion, {
        ...opts,
        previousCopy: prev.copy,
        baseSnapshot: prev.source,
      });
    } catch (err) {
      // The previous copy or its source snapshot is gone (retention, DR-side cleanup): copy in full.
      if (!(err instanceof NotFoundError)) throw err;
      return platform.copySnapshot(snapshot, toRegion, opts);
    }
  }
}
