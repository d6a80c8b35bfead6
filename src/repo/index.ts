/** Public surface of the repository engine. */
export * from './api.ts';
export {
  Repository,
  BackupSession,
  type OpenOptions,
  type InitOptions,
  type SessionStats,
} from './repository.ts';
export { RepoLock, clearStaleLocks, listLocks, LOCK_STALE_MS, type LockInfo } from './lock.ts';
export {
  applyRetention,
  forget,
  prune,
  verify,
  stats,
  snapshotBlobs,
  type KeepPolicy,
} from './maintenance.ts';
export {
  backupImage,
  restoreImage,
  loadImageMap,
  imageMapBlobs,
  ImageMapView,
  SEGMENT_CHUNKS,
  parseRanges,
  DEFAULT_CHUNK_SIZE,
} from './image/index.ts';
