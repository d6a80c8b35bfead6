/**
 * Cross-region DR: the shapes shared by exporters (source site), the records they publish at the export
 * location, and the importer/restorer (DR site). Domain logic only: platforms and object stores are reached
 * through their interfaces, so the same code serves the local platform and the clouds.
 */
import { z } from 'zod';
import type { RunOptions } from '../../core/index.ts';
import type { SnapshotRef, VolumeRef } from '../../platforms/index.ts';

export type ExportKind = 'datamover' | 'snapshot-copy';
export type RestorePath = 'repository' | 'snapshot-copy';

/** A restore point at the source: local snapshots of an application's volumes, taken together. */
export interface SourceRestorePoint {
  id: string;
  app: string;
  /** When the data was consistent: the snapshot time. */
  consistentAt: string;
  volumes: { volume: VolumeRef; snapshot: SnapshotRef }[];
}

export const SnapshotRefSchema = z.object({
  id: z.string().min(1),
  volumeId: z.string(),
  region: z.string().min(1),
  sizeBytes: z.number().int().nonnegative(),
  createdAt: z.string(),
  kind: z.enum(['block', 'fs']),
  parentId: z.string().optional(),
  details: z.record(z.string(), z.string()).optional(),
});

/** What an export produced for one volume. `source` is the local snapshot it read (the next incremental's base). */
export const VolumeExportSchema = z.object({
  volume: z.string().min(1),
  kind: z.enum(['block', 'fs']),
  sizeBytes: z.number().int().nonnegative(),
  source: SnapshotRefSchema,
  repositorySnapshot: z.string().optional(),
  copy: SnapshotRefSchema.optional(),
  bytesTransferred: z.number().int().nonnegative(),
  incremental: z.boolean(),
});
export type VolumeExport = z.infer<typeof VolumeExportSchema>;

export interface ExportOutcome {
  volumes: VolumeExport[];
}

/** Where an export stream lives, as named in its export details (never a secret). */
export interface ExportTarget {
  /** Location profile + repository URL (datamover), or the DR region's location (snapshot copy). */
  location: { profile: string; repository: string };
  /** Object store URL where restore point records are published. */
  records: string;
  /** How the DR site opens the platform holding the copies (snapshot copy). */
  platform?: { type: string; config: Record<string, unknown> };
}

/** The export step of a policy, pluggable: 'datamover' (repository) or 'snapshot-copy'. */
export interface Exporter {
  readonly kind: ExportKind;
  target(): ExportTarget;
  /** Repository passphrase to wrap into the export details (datamover); never stored or logged in clear. */
  repositoryPassword(): string | undefined;
  /** Copy the restore point off-site, incrementally on top of `previous` (the stream's last export). */
  exportRestorePoint(
    rp: SourceRestorePoint,
    previous: VolumeExport[] | undefined,
    opts?: RunOptions,
  ): Promise<ExportOutcome>;
}

/** A restore point as published at the export location (signed) and recorded at the DR site. */
export const RestorePointRecordSchema = z.object({
  v: z.literal(1),
  id: z.string().min(1),
  app: z.string().min(1),
  stream: z.string().min(1),
  kind: z.enum(['datamover', 'snapshot-copy']),
  sourceSite: z.string().min(1),
  consistentAt: z.iso.datetime(),
  exportStartedAt: z.iso.datetime(),
  exportCompletedAt: z.iso.datetime(),
  exportDurationMs: z.number().nonnegative(),
  bytesTransferred: z.number().int().nonnegative(),
  incremental: z.boolean(),
  volumes: z.array(VolumeExportSchema.omit({ source: true }).extend({ sourceSnapshot: z.string() })),
});
export type RestorePointRecord = z.infer<typeof RestorePointRecordSchema>;
