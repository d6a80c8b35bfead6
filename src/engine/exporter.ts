/**
 * The export step of a policy run is pluggable. A policy's `export.mode` names an Exporter kind:
 *   - 'datamover'     (./datamover.ts, built in): image backup of each local snapshot into the repository of a
 *                     location profile, incremental via the previous export's repository snapshot (`parent`) and
 *                     the platform's changedRanges.
 *   - 'snapshot-copy' (to be built in src/engine/dr/): platform.copySnapshot of each local snapshot to
 *                     `policy.export.region`, incremental via the previous copy.
 *
 * For whoever writes another exporter (snapshot-copy, import, …):
 *   1. implement `Exporter` below; `export` returns the Tier it produced (kind 'region-copy' for snapshot copy),
 *      which the engine appends to the restore point; the engine records bytes/duration on the export action and
 *      sets `exportCompletedAt`.
 *   2. `expire` deletes what one of your tiers holds; the engine calls it from export retention
 *      (`policy.exportRetention`, GFS over the restore points that still have a tier of your kind) and then marks
 *      the tier `expiredAt`.
 *   3. register it: `registerExporter(myExporter)` at module load, and import your module once from
 *      `src/engine/index.ts` (one line), or pass it in `EngineOptions.exporters`.
 * Use `ctx.signal` (cancel at any point), `ctx.onProgress` (bytes), and `ctx.clock` for times. Throw typed errors
 * from core/errors.ts; a thrown error fails the attempt and the engine retries with backoff.
 */
import type { Clock, ProgressFn } from '../core/index.ts';
import type { Application, LocationProfile, Policy, RestorePoint, Tier } from '../core/model.ts';
import type { Platform, SnapshotRef } from '../platforms/index.ts';

export type ExporterKind = 'datamover' | 'snapshot-copy';

export interface ExportContext {
  app: Application;
  policy: Policy;
  /** The restore point being exported (it has a 'local' tier). */
  restorePoint: RestorePoint;
  /** The platform the app lives on (opened from its infra profile). */
  platform: Platform;
  /** The local snapshot of each volume, by volume name. */
  snapshots: Record<string, SnapshotRef>;
  /**
   * The newest earlier restore point of the same app and policy with a live tier of this exporter's kind, and its
   * local snapshots when they still exist (for changed-range hints).
   */
  previous?: { restorePoint: RestorePoint; tier: Tier; snapshots: Record<string, SnapshotRef | undefined> };
  /** Location profile with decrypted secrets (incl. `repositoryPassword`). Never log or return it. */
  locationProfile(name: string): Promise<LocationProfile>;
  clock: Clock;
  signal: AbortSignal;
  onProgress: ProgressFn;
}

export interface ExportResult {
  tier: Tier;
  bytesRead: number;
  bytesTransferred: number;
  incremental: boolean;
}

export interface ExpireContext {
  app: Application;
  platform: Platform;
  locationProfile(name: string): Promise<LocationProfile>;
  clock: Clock;
  signal: AbortSignal;
}

export interface Exporter {
  readonly kind: ExporterKind;
  /** Which tier kind `export` produces ('repository' or 'region-copy'). */
  readonly tierKind: Tier['kind'];
  export(ctx: ExportContext): Promise<ExportResult>;
  /** Deletes the data of tiers (of this exporter's kind) that retention dropped. Deleting what is gone is not an error. */
  expire(ctx: ExpireContext, tiers: Tier[]): Promise<void>;
}

const exporters = new Map<ExporterKind, Exporter>();

export function registerExporter(e: Exporter): void {
  exporters.set(e.kind, e);
}

export function getExporter(kind: ExporterKind): Exporter | undefined {
  return exporters.get(kind);
}

export function exporterKinds(): ExporterKind[] {
  return [...exporters.keys()];
}
