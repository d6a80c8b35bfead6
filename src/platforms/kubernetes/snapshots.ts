/**
 * CSI volume snapshots of a namespace's PVCs. The VolumeSnapshotClass is the one of the volume's driver
 * annotated `tern.io/is-snapshot-class: "true"`. Everything is checked before the first VolumeSnapshot is
 * made (bound claims, CSI volumes, a class per driver), and a failure part-way deletes what was made.
 * Once every snapshot is ready, its VolumeSnapshotContent is switched to `Retain`, so the snapshot outlives
 * the namespace (a restore after the namespace is gone binds a new content to the recorded handle).
 */
import type { Clock, RunOptions } from '../../core/index.ts';
import {
  ConflictError,
  TernError,
  NotFoundError,
  StorageError,
  UnavailableError,
  describeError,
  systemClock,
  throwIfAborted,
} from '../../core/index.ts';
import type { VolumeRecord } from './bundle.ts';
import { T, type KubeClient, type KubeObject } from './client.ts';

export const SNAPSHOT_CLASS_ANNOTATION = 'tern.io/is-snapshot-class';
export const BACKUP_LABEL = 'tern.io/backup';

export interface PlannedSnapshot {
  pvc: KubeObject;
  pv: KubeObject;
  driver: string;
  volumeHandle: string;
  snapshotClass: string;
}

interface PvcSpec {
  storageClassName?: string;
  volumeName?: string;
  accessModes?: string[];
  volumeMode?: string;
  resources?: { requests?: Record<string, string> };
}

/** Checks every claim and finds its snapshot class; throws before anything is created. */
export async function planSnapshots(
  client: KubeClient,
  pvcs: KubeObject[],
  signal?: AbortSignal,
): Promise<PlannedSnapshot[]> {
  if (pvcs.length === 0) return [];
  const classes = await client.list(T.volumeSnapshotClass, undefined, { signal }).catch((err: unknown) => {
    if (err instanceof NotFoundError)
      throw new NotFoundError(
        'the cluster serves no snapshot.storage.k8s.io/v1 VolumeSnapshotClass API (CSI snapshot CRDs missing)',
        {
          cause: err,
        },
      );
    throw err;
  });
  const problems: string[] = [];
  const out: PlannedSnapshot[] = [];
  const missingClass = new Set<string>();
  for (const pvc of pvcs) {
    const name = `${pvc.metadata.namespace}/${pvc.metadata.name}`;
    const spec = (pvc['spec'] ?? {}) as PvcSpec;
    const phase = (pvc['status'] as { phase?: string } | undefined)?.phase ?? 'Pending';
    if (phase !== 'Bound' || !spec.volumeName) {
      problems.push(`PVC ${name} is not bound (phase ${phase})`);
      continue;
    }
    const pv = await client.find(T.pv, undefined, spec.volumeName, signal);
    if (!pv) {
      problems.push(`PVC ${name} is bound to PersistentVolume ${spec.volumeName}, which does not exist`);
      continue;
    }
    const csi = (pv['spec'] as { csi?: { driver?: string; volumeHandle?: string } } | undefined)?.csi;
    if (!csi?.driver || !csi.volumeHandle) {
      problems.push(
        `PVC ${name}: PersistentVolume ${spec.volumeName} is not a CSI volume, so it cannot be snapshotted`,
      );
      continue;
    }
    const candidates = classes
      .filter(
        (c) => c['driver'] === csi.driver && c.metadata.annotations?.[SNAPSHOT_CLASS_ANNOTATION] === 'true',
      )
      .map((c) => c.metadata.name)
      .sort();
    if (candidates.length === 0) {
      missingClass.add(csi.driver);
      problems.push(
        `no VolumeSnapshotClass for CSI driver "${csi.driver}" (PVC ${name}) is annotated ${SNAPSHOT_CLASS_ANNOTATION}: "true"`,
      );
      continue;
    }
    out.push({ pvc, pv, driver: csi.driver, volumeHandle: csi.volumeHandle, snapshotClass: candidates[0]! });
  }
  if (problems.length > 0) {
    const msg = `cannot snapshot the volumes: ${problems.join('; ')}`;
    const details = { problems };
    // Only missing classes: a NotFoundError (something to create); anything else is a state conflict.
    const missingOnly = problems.every((p) => p.startsWith('no VolumeSnapshotClass'));
    if (missingOnly) throw new NotFoundError(msg, { details: { ...details, drivers: [...missingClass] } });
    throw new ConflictError(msg, { details });
  }
  return out;
}

function snapshotName(backupId: string, pvc: string): string {
  const n = `tern-${backupId}-${pvc}`.toLowerCase().replace(/[^a-z0-9.-]/g, '-');
  return n.length <= 253 ? n : n.slice(0, 253).replace(/[-.]+$/, '');
}

function parseQuantity(q: unknown): number {
  if (typeof q === 'number') return q;
  if (typeof q !== 'string') return 0;
  const m = /^(\d+(?:\.\d+)?)([KMGTPE]i?|[km])?$/.exec(q);
  if (!m) return 0;
  const units: Record<string, number> = {
    '': 1, k: 1e3, K: 1e3, M: 1e6, G: 1e9, T: 1e12, P: 1e15, E: 1e18,
    Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40, Pi: 2 ** 50, Ei: 2 ** 60,
  }; // prettier-ignore
  return Math.round(Number(m[1]) * (units[m[2] ?? ''] ?? 1));
}

export interface SnapshotOptions extends RunOptions {
  backupId: string;
  clock?: Clock;
  /** How long to wait for each snapshot to become readyToUse. Default 10 minutes. */
  timeoutMs?: number;
  pollMs?: number;
}

/** Waits until a VolumeSnapshot is readyToUse (or reports an error); returns it. */
export async function waitSnapshotReady(
  client: KubeClient,
  ns: string,
  name: string,
  opts: { clock?: Clock; timeoutMs?: number; pollMs?: number; signal?: AbortSignal } = {},
): Promise<KubeObject> {
  const clock = opts.clock ?? systemClock;
  const deadline = clock.now().getTime() + (opts.timeoutMs ?? 600_000);
  for (;;) {
    throwIfAborted(opts.signal);
    const vs = await client.get(T.volumeSnapshot, ns, name, opts.signal);
    const st = vs['status'] as
      | { readyToUse?: boolean; error?: { message?: string }; boundVolumeSnapshotContentName?: string }
      | undefined;
    if (st?.readyToUse && st.boundVolumeSnapshotContentName) return vs;
    if (st?.error?.message)
      throw new StorageError(`VolumeSnapshot ${ns}/${name} failed: ${st.error.message}`, {
        details: { volumeSnapshot: name },
      });
    if (clock.now().getTime() > deadline)
      throw new UnavailableError(
        `VolumeSnapshot ${ns}/${name} not ready after ${Math.round((opts.timeoutMs ?? 600_000) / 1000)} s`,
      );
    await clock.sleep(opts.pollMs ?? 200, opts.signal);
  }
}

/** Takes one VolumeSnapshot per planned claim, waits for all, records their handles. */
export async function takeSnapshots(
  client: KubeClient,
  planned: PlannedSnapshot[],
  opts: SnapshotOptions,
): Promise<VolumeRecord[]> {
  const clock = opts.clock ?? systemClock;
  const created: { ns: string; name: string }[] = [];
  try {
    for (const p of planned) {
      throwIfAborted(opts.signal);
      const ns = p.pvc.metadata.namespace!;
      const name = snapshotName(opts.backupId, p.pvc.metadata.name);
      await client.create(
        T.volumeSnapshot,
        {
          apiVersion: T.volumeSnapshot.apiVersion,
          kind: 'VolumeSnapshot',
          metadata: { name, namespace: ns, labels: { [BACKUP_LABEL]: opts.backupId } },
          spec: {
            volumeSnapshotClassName: p.snapshotClass,
            source: { persistentVolumeClaimName: p.pvc.metadata.name },
          },
        },
        { signal: opts.signal },
      );
      created.push({ ns, name });
    }
    const records: VolumeRecord[] = [];
    for (const [i, p] of planned.entries()) {
      const { ns, name } = created[i]!;
      opts.onProgress?.({
        phase: 'snapshot',
        bytesRead: 0,
        bytesTransferred: 0,
        items: i,
        itemsTotal: planned.length,
      });
      const vs = await waitSnapshotReady(client, ns, name, { ...opts, clock });
      const st = vs['status'] as { boundVolumeSnapshotContentName: string; restoreSize?: unknown };
      const content = await client.get(
        T.volumeSnapshotContent,
        undefined,
        st.boundVolumeSnapshotContentName,
        opts.signal,
      );
      const cst = content['status'] as { snapshotHandle?: string; restoreSize?: number } | undefined;
      if (!cst?.snapshotHandle)
        throw new StorageError(
          `VolumeSnapshotContent ${content.metadata.name} is ready but has no snapshotHandle`,
        );
      const spec = (p.pvc['spec'] ?? {}) as PvcSpec;
      records.push({
        pvc: p.pvc.metadata.name,
        storageClassName: spec.storageClassName,
        accessModes: spec.accessModes,
        volumeMode: spec.volumeMode,
        requestedStorage: spec.resources?.requests?.['storage'],
        driver: p.driver,
        volumeHandle: p.volumeHandle,
        volumeSnapshotClass: p.snapshotClass,
        volumeSnapshot: name,
        volumeSnapshotContent: content.metadata.name,
        snapshotHandle: cst.snapshotHandle,
        restoreSizeBytes: cst.restoreSize ?? parseQuantity(st.restoreSize),
        readyAt: clock.now().toISOString(),
      });
    }
    for (const r of records)
      await client.mergePatch(
        T.volumeSnapshotContent,
        undefined,
        r.volumeSnapshotContent,
        { spec: { deletionPolicy: 'Retain' } },
        opts.signal,
      );
    opts.onProgress?.({
      phase: 'snapshot',
      bytesRead: 0,
      bytesTransferred: 0,
      items: planned.length,
      itemsTotal: planned.length,
    });
    return records;
  } catch (err) {
    // Contents still have the class's policy (normally Delete): deleting the snapshot objects removes all.
    const leftovers: string[] = [];
    for (const c of created) {
      await client
        .delete(T.volumeSnapshot, c.ns, c.name)
        .catch((e: unknown) => leftovers.push(`${c.ns}/${c.name} (${describeError(e)})`));
    }
    if (leftovers.length > 0 && err instanceof TernError) {
      const orphanedSnapshots: OrphanedSnapshot[] = created
        .filter((c) => leftovers.some((l) => l.startsWith(`${c.ns}/${c.name} `)))
        .map((c) => ({ namespace: c.ns, volumeSnapshot: c.name }));
      throw new (err.constructor as typeof StorageError)(
        `${err.message}; VolumeSnapshots left behind (delete them when the API is back): ${leftovers.join(', ')}`,
        { cause: err, details: { leftovers, orphanedSnapshots } },
      );
    }
    throw err;
  }
}

/**
 * A CSI snapshot a failed backup could not delete (the API server was gone): the caller records it and
 * deletes it on the next successful contact (`deleteOrphanedSnapshots`). Without the content name, the
 * content still has its class's deletion policy, so deleting the VolumeSnapshot removes both.
 */
export interface OrphanedSnapshot {
  namespace: string;
  volumeSnapshot: string;
  volumeSnapshotContent?: string;
}

/** The orphaned snapshots an error (or one of its causes) reports in `details.orphanedSnapshots`. */
export function orphanedSnapshotsOf(err: unknown): OrphanedSnapshot[] {
  for (let e: unknown = err; e instanceof Error; e = e.cause) {
    const o = e instanceof TernError ? e.details['orphanedSnapshots'] : undefined;
    if (Array.isArray(o)) return o as OrphanedSnapshot[];
  }
  return [];
}

/** The same error (same class and code) with `orphans` added to `details.orphanedSnapshots`. */
export function withOrphanedSnapshots(err: unknown, orphans: OrphanedSnapshot[]): unknown {
  if (orphans.length === 0) return err;
  const names = orphans.map((o) => `${o.namespace}/${o.volumeSnapshot}`).join(', ');
  const all = [...orphanedSnapshotsOf(err), ...orphans];
  if (err instanceof TernError)
    return new (err.constructor as typeof StorageError)(
      `${err.message}; snapshots left behind (delete them when the API is back): ${names}`,
      { cause: err, details: { ...err.details, orphanedSnapshots: all } },
    );
  return new StorageError(`${describeError(err)}; snapshots left behind: ${names}`, {
    cause: err,
    details: { orphanedSnapshots: all },
  });
}

/**
 * Deletes orphaned snapshots: a recorded content goes back to `Delete` (and is deleted itself when its
 * VolumeSnapshot is already gone), then the VolumeSnapshot is deleted. Returns those that could not be.
 */
export async function deleteOrphanedSnapshots(
  client: KubeClient,
  orphans: OrphanedSnapshot[],
  signal?: AbortSignal,
): Promise<{ deleted: OrphanedSnapshot[]; left: OrphanedSnapshot[]; errors: string[] }> {
  const deleted: OrphanedSnapshot[] = [];
  const left: OrphanedSnapshot[] = [];
  const errors: string[] = [];
  for (const o of orphans) {
    try {
      const vs = await client.find(T.volumeSnapshot, o.namespace, o.volumeSnapshot, signal);
      if (o.volumeSnapshotContent) {
        const c = await client.find(T.volumeSnapshotContent, undefined, o.volumeSnapshotContent, signal);
        if (c) {
          await client.mergePatch(
            T.volumeSnapshotContent,
            undefined,
            o.volumeSnapshotContent,
            { spec: { deletionPolicy: 'Delete' } },
            signal,
          );
          if (!vs) await client.delete(T.volumeSnapshotContent, undefined, o.volumeSnapshotContent, signal);
        }
      }
      if (vs) await client.delete(T.volumeSnapshot, o.namespace, o.volumeSnapshot, signal);
      deleted.push(o);
    } catch (err) {
      left.push(o);
      errors.push(`${o.namespace}/${o.volumeSnapshot}: ${describeError(err)}`);
    }
  }
  return { deleted, left, errors };
}

/** The orphan records of a backup's volumes. */
export function orphansOfVolumes(namespace: string, volumes: VolumeRecord[]): OrphanedSnapshot[] {
  return volumes.map((v) => ({
    namespace,
    volumeSnapshot: v.volumeSnapshot,
    volumeSnapshotContent: v.volumeSnapshotContent,
  }));
}

export { parseQuantity };

/**
 * Retires the CSI snapshots of a backup: each recorded VolumeSnapshotContent is switched back to `Delete`
 * so the driver removes the snapshot, then the content and its VolumeSnapshot (if still there) are deleted.
 * Returns the contents that were already gone.
 */
export async function deleteBackupSnapshots(
  client: KubeClient,
  bundle: { namespace: string; volumes: VolumeRecord[] },
  signal?: AbortSignal,
): Promise<{ missing: string[] }> {
  const missing: string[] = [];
  for (const v of bundle.volumes) {
    const content = await client.find(T.volumeSnapshotContent, undefined, v.volumeSnapshotContent, signal);
    if (!content) {
      missing.push(v.volumeSnapshotContent);
      continue;
    }
    await client.mergePatch(
      T.volumeSnapshotContent,
      undefined,
      v.volumeSnapshotContent,
      { spec: { deletionPolicy: 'Delete' } },
      signal,
    );
    await client.delete(T.volumeSnapshot, bundle.namespace, v.volumeSnapshot, signal);
  }
  return { missing };
}
