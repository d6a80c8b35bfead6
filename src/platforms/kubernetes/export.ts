/**
 * Datamover export of a Kubernetes backup: each volume snapshot's data goes into the repository as a block
 * image (or a directory tree), and the bundle (manifests + snapshot records) as a small tree snapshot, all
 * tagged with the backup id. How snapshot data is reached is pluggable (`SnapshotDataAccess`): in a cluster
 * a datamover Job mounts a claim made from the snapshot; on one host the CSI driver's snapshots are paths.
 */
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { RunOptions } from '../../core/index.ts';
import { IntegrityError, NotFoundError, throwIfAborted } from '../../core/index.ts';
import type { Repository, SnapshotManifest } from '../../repo/index.ts';
import { backupImage, restoreImage } from '../../repo/index.ts';
import { backupTree, restoreTree } from '../../repo/tree/index.ts';
import { parseBundle, type Bundle, type VolumeRecord } from './bundle.ts';
import type { KubeObject } from './client.ts';
import type { VolumeDataRestorer } from './restore.ts';

export interface SnapshotDataAccess {
  /** A path on this host holding the snapshot's data (a file = block image, a directory = tree). */
  open(volume: VolumeRecord, opts?: RunOptions): Promise<{ path: string; release(): Promise<void> }>;
}

export interface ExportResult {
  backupId: string;
  bundleSnapshot: string;
  volumes: { pvc: string; snapshot: string; bytesRead: number; bytesAdded: number }[];
}

export const BUNDLE_TAG = 'tern-kube-bundle';
export const tagFor = (backupId: string) => `tern-kube:${backupId}`;

/**
 * Without `data`, only the bundle is exported (manifests + snapshot records): the volumes then stay in their
 * CSI snapshots, which is what a controller without datamover Jobs can do.
 */
export async function exportBackup(
  repo: Repository,
  bundle: Bundle,
  data: SnapshotDataAccess | undefined,
  opts: RunOptions = {},
): Promise<ExportResult> {
  const session = await repo.startBackup();
  const tag = tagFor(bundle.id);
  const out: ExportResult = { backupId: bundle.id, bundleSnapshot: '', volumes: [] };
  const tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'tern-kube-bundle-'));
  try {
    for (const v of data ? bundle.volumes : []) {
      throwIfAborted(opts.signal);
      const src = await data!.open(v, opts);
      const started = Date.now();
      try {
        const st = await fsp.stat(src.path);
        let m: SnapshotManifest;
        if (st.isDirectory()) {
          const r = await backupTree(session, src.path, { ...opts, reader: repo });
          m = await session.saveSnapshot({
            paths: [`pvc/${bundle.namespace}/${v.pvc}`],
            tags: [tag, `pvc:${v.pvc}`],
            root: { kind: 'tree', tree: r.tree },
            summary: {
              bytesRead: r.stats.bytesRead,
              bytesAdded: r.stats.bytesAdded,
              durationMs: Date.now() - started,
            },
          });
        } else {
          const r = await backupImage(session, src.path, { ...opts, reader: repo });
          m = await session.saveSnapshot({
            paths: [`pvc/${bundle.namespace}/${v.pvc}`],
            tags: [tag, `pvc:${v.pvc}`],
            root: { kind: 'image', map: r.map, size: r.size },
            summary: { bytesRead: r.bytesRead, bytesAdded: r.bytesAdded, durationMs: Date.now() - started },
          });
        }
        out.volumes.push({
          pvc: v.pvc,
          snapshot: m.id,
          bytesRead: m.summary.bytesRead,
          bytesAdded: m.summary.bytesAdded,
        });
      } finally {
        await src.release();
      }
    }
    // The bundle last: an export whose bundle is in the repository is complete.
    await fsp.writeFile(path.join(tmp, 'bundle.json'), JSON.stringify(bundle, null, 1));
    const started = Date.now();
    const r = await backupTree(session, tmp, opts);
    const m = await session.saveSnapshot({
      paths: [`kubernetes/${bundle.namespace}/${bundle.id}`],
      tags: [tag, BUNDLE_TAG],
      root: { kind: 'tree', tree: r.tree },
      summary: {
        bytesRead: r.stats.bytesRead,
        bytesAdded: r.stats.bytesAdded,
        durationMs: Date.now() - started,
      },
    });
    out.bundleSnapshot = m.id;
    return out;
  } finally {
    await session.close();
    await fsp.rm(tmp, { recursive: true, force: true });
  }
}

/** The bundle of an exported backup (validated). */
export async function loadExportedBundle(
  repo: Repository,
  backupId: string,
  opts: RunOptions = {},
): Promise<Bundle> {
  const snaps = await repo.listSnapshots(opts);
  const m = snaps.find((s) => s.tags.includes(BUNDLE_TAG) && s.tags.includes(tagFor(backupId)));
  if (!m) throw new NotFoundError(`no exported Kubernetes backup "${backupId}" in the repository`);
  if (m.root.kind !== 'tree') throw new IntegrityError(`bundle snapshot ${m.id} is not a tree`);
  const tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'tern-kube-bundle-'));
  try {
    await restoreTree(repo, m.root.tree, path.join(tmp, 'out'), opts);
    return parseBundle(await fsp.readFile(path.join(tmp, 'out', 'bundle.json'), 'utf8'));
  } finally {
    await fsp.rm(tmp, { recursive: true, force: true });
  }
}

/** The repository snapshot holding one PVC's data in an exported backup. */
export async function findVolumeExport(
  repo: Repository,
  backupId: string,
  pvc: string,
  opts: RunOptions = {},
): Promise<SnapshotManifest> {
  const snaps = await repo.listSnapshots(opts);
  const m = snaps.find((s) => s.tags.includes(tagFor(backupId)) && s.tags.includes(`pvc:${pvc}`));
  if (!m) throw new NotFoundError(`no exported data for PVC "${pvc}" of backup "${backupId}"`);
  return m;
}

/** Where a bound claim's volume can be written on this host (in a cluster: a datamover Job mounting it). */
export interface VolumeDataTarget {
  /** A file (block image target) or a directory (tree target) holding the volume of `pv`. */
  volumePath(pv: KubeObject, opts?: RunOptions): Promise<string>;
}

/** Fills restored claims from an exported backup in the repository (the DR path: no CSI snapshot needed). */
export function repositoryVolumeRestorer(
  repo: Repository,
  backupId: string,
  target: VolumeDataTarget,
): VolumeDataRestorer {
  return {
    async restore(volume, { pv }, opts) {
      const m = await findVolumeExport(repo, backupId, volume.pvc, opts);
      const dst = await target.volumePath(pv, opts);
      if (m.root.kind === 'image') {
        const r = await restoreImage(repo, m.root.map, dst, { ...opts, overwrite: true });
        return { bytesWritten: r.bytesWritten };
      }
      const r = await restoreTree(repo, m.root.tree, dst, { ...opts, overwrite: true });
      return { bytesWritten: r.bytes };
    },
  };
}
