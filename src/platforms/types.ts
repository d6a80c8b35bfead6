/**
 * Where volumes and their snapshots live. One small interface; implementations: local (regions are
 * directories/filesystems on this host), azure (ARM compute + page blobs), aws (EBS), kubernetes (CSI).
 * The engine only talks to this interface; a provider registry maps infra profile types to implementations.
 */
import type { RunOptions } from '../core/index.ts';

export interface VolumeRef {
  /** Provider-specific id (local: "<region>/<name>"; azure: disk resource id; aws: vol-…). */
  id: string;
  region: string;
  name: string;
  sizeBytes: number;
  /** 'block' = a file/device read as a block image; 'fs' = a directory tree. */
  kind: 'block' | 'fs';
}

export interface SnapshotRef {
  id: string;
  volumeId: string;
  region: string;
  sizeBytes: number;
  createdAt: string;
  kind: 'block' | 'fs';
  /** The snapshot this one is incremental to on the provider side, if any. */
  parentId?: string;
  /** Provider facts worth recording (method used: btrfs-subvolume, reflink, copy; azure resource ids…). */
  details?: Record<string, string>;
}

export interface ByteRangeList {
  /** Byte ranges [offset, offset+length) that may differ between base and target; sorted, non-overlapping. */
  ranges: { offset: number; length: number }[];
  /** How the ranges were found: 'fiemap', 'btrfs', 'page-ranges', 'compare', 'full'. */
  method: string;
}

export interface CopyResult {
  snapshot: SnapshotRef;
  bytesTransferred: number;
  incremental: boolean;
}

export interface PlatformInfo {
  provider: string;
  regions: { name: string; snapshotMethod: string; details?: Record<string, string> }[];
}

export interface Platform {
  readonly provider: string;
  info(opts?: RunOptions): Promise<PlatformInfo>;
  listVolumes(region: string, opts?: RunOptions): Promise<VolumeRef[]>;
  snapshot(volume: VolumeRef, opts?: RunOptions & { tags?: Record<string, string> }): Promise<SnapshotRef>;
  listSnapshots(volume: VolumeRef, opts?: RunOptions): Promise<SnapshotRef[]>;
  deleteSnapshot(snapshot: SnapshotRef, opts?: RunOptions): Promise<void>;
  /** Copy a snapshot to another region. With `previousCopy` (an earlier copy of an ancestor in toRegion), copy only what changed. */
  copySnapshot(
    snapshot: SnapshotRef,
    toRegion: string,
    opts?: RunOptions & { previousCopy?: SnapshotRef; baseSnapshot?: SnapshotRef },
  ): Promise<CopyResult>;
  /** Create (or overwrite, with `overwrite`) a volume from a snapshot, in the snapshot's region. */
  restoreVolume(
    snapshot: SnapshotRef,
    target: { name: string; region?: string; overwrite?: boolean },
    opts?: RunOptions,
  ): Promise<VolumeRef>;
  /** Ranges changed between two snapshots of the same volume, when the provider can tell cheaply. */
  changedRanges?(base: SnapshotRef, target: SnapshotRef, opts?: RunOptions): Promise<ByteRangeList>;
  /** Open a snapshot for reading as a block image (a path on this host, or a readable source). */
  openSnapshot?(snapshot: SnapshotRef, opts?: RunOptions): Promise<SnapshotReader>;
}

export interface SnapshotReader {
  size: number;
  /** Local path to read from when the snapshot is visible on this host (fast path). */
  path?: string;
  read(offset: number, length: number): Promise<Buffer>;
  close(): Promise<void>;
}
