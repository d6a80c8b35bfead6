/** Kubernetes: namespace capture, CSI volume snapshots, restore with transforms, datamover export. */
export { KubeClient, T as KubeTypes } from './client.ts';
export type { KubeObject, ObjectMeta, ResourceType } from './client.ts';
export { discover, typeFor, type Discovery } from './discovery.ts';
export { sanitize, skipReason, isCapturable } from './sanitize.ts';
export { captureNamespace, type Capture } from './capture.ts';
export { BUNDLE_FORMAT, parseBundle, objectKey } from './bundle.ts';
export type { Bundle, VolumeRecord, PhaseRecord, SkippedObject } from './bundle.ts';
export {
  planSnapshots,
  takeSnapshots,
  waitSnapshotReady,
  deleteBackupSnapshots,
  deleteOrphanedSnapshots,
  orphanedSnapshotsOf,
  orphansOfVolumes,
  withOrphanedSnapshots,
  type OrphanedSnapshot,
  SNAPSHOT_CLASS_ANNOTATION,
  BACKUP_LABEL,
} from './snapshots.ts';
export { backupNamespace, newBackupId, phasesOf, type BackupOptions } from './backup.ts';
export { LocalCommandRunner, runHooks, parseHooks, hookSchema } from './hooks.ts';
export type { HookRunner, HookSpec, HookResult } from './hooks.ts';
export {
  applyTransforms,
  parseTransforms,
  transformSchema,
  type Transform,
  type PatchOp,
} from './transforms.ts';
export { planRestore, restoreBundle, RESTORE_LABEL } from './restore.ts';
export type { RestoreOptions, RestoreResult, PlanItem, VolumeDataRestorer } from './restore.ts';
export {
  exportBackup,
  loadExportedBundle,
  findVolumeExport,
  repositoryVolumeRestorer,
  BUNDLE_TAG,
} from './export.ts';
export type { SnapshotDataAccess, ExportResult, VolumeDataTarget } from './export.ts';
