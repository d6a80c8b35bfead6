/**
 * Restore of a bundle into the same or another namespace.
 *
 * Plan first (types resolved, transforms applied, existing objects found, RBAC checked with
 * SelfSubjectAccessReviews), so that a restore that cannot finish fails before creating anything; then
 * create in dependency order: CRDs, StorageClasses and VolumeSnapshotClasses that are missing, the
 * Namespace, ServiceAccounts, Secrets, ConfigMaps, RBAC, PVCs (each from a VolumeSnapshot bound to a new
 * VolumeSnapshotContent carrying the recorded snapshot handle), then workloads, Services and the rest.
 * If a step fails, what this restore created is deleted again (newest first).
 */
import crypto from 'node:crypto';
import type { Clock, RunOptions } from '../../core/index.ts';
import {
  ForbiddenError,
  InputError,
  UnavailableError,
  describeError,
  systemClock,
  throwIfAborted,
} from '../../core/index.ts';
import { objectKey, type Bundle, type VolumeRecord } from './bundle.ts';
import { T, type KubeClient, type KubeObject, type ResourceType } from './client.ts';
import { discover, typeFor } from './discovery.ts';
import { parseQuantity, waitSnapshotReady } from './snapshots.ts';
import { applyTransforms, type Transform } from './transforms.ts';

export const RESTORE_LABEL = 'tern.io/restore';

export interface RestoreOptions extends RunOptions {
  targetNamespace?: string;
  transforms?: Transform[];
  /** What to do with objects that already exist: leave them (default) or replace them. PVCs are never replaced. */
  existing?: 'skip' | 'overwrite';
  dryRun?: boolean;
  restoreId?: string;
  clock?: Clock;
  /** Wait until every restored PVC is Bound (default true). */
  waitForVolumes?: boolean;
  timeoutMs?: number;
  pollMs?: number;
  /**
   * Restore volume data from elsewhere than CSI snapshots (the datamover repository at a DR site): claims are
   * made empty, and once bound, before any workload is created, this fills each one.
   */
  volumeData?: VolumeDataRestorer;
}

export interface VolumeDataRestorer {
  restore(
    volume: VolumeRecord,
    target: { namespace: string; pvc: KubeObject; pv: KubeObject },
    opts: RunOptions,
  ): Promise<{ bytesWritten: number }>;
}

export interface PlanItem {
  apiVersion: string;
  kind: string;
  name: string;
  namespace?: string;
  action: 'create' | 'skip' | 'overwrite';
  reason?: string;
  /** Indexes of the transforms that changed this object. */
  transforms: number[];
  /** For PVCs: the snapshot handle the claim is restored from. */
  fromSnapshotHandle?: string;
  /** For PVCs: filled by the volume data restorer (datamover) instead of a snapshot. */
  fromData?: boolean;
}

export interface RestoreResult {
  restoreId: string;
  namespace: string;
  dryRun: boolean;
  plan: PlanItem[];
  /** "apiVersion/kind/namespace/name" of every object created or replaced. */
  applied: string[];
  volumes: {
    pvc: string;
    source: 'snapshot' | 'data';
    volumeSnapshot?: string;
    volumeSnapshotContent?: string;
    bytesWritten?: number;
  }[];
  warnings: string[];
}

interface Step {
  type: ResourceType;
  object: KubeObject;
  item: PlanItem;
  sourceUid?: string;
  volume?: VolumeRecord;
  existing?: KubeObject;
}

const RANK: Record<string, number> = {
  CustomResourceDefinition: 0,
  StorageClass: 1,
  VolumeSnapshotClass: 2,
  Namespace: 3,
  ResourceQuota: 10,
  LimitRange: 11,
  ServiceAccount: 12,
  Secret: 13,
  ConfigMap: 14,
  Role: 15,
  RoleBinding: 16,
  PersistentVolumeClaim: 20,
  Deployment: 30,
  StatefulSet: 30,
  DaemonSet: 30,
  ReplicaSet: 31,
  Job: 32,
  CronJob: 32,
  Pod: 33,
  Service: 40,
};
const rank = (kind: string) => RANK[kind] ?? 50;

function typeFromCrd(crd: KubeObject, apiVersion: string, kind: string): ResourceType | undefined {
  const spec = crd['spec'] as
    { group?: string; scope?: string; names?: { kind?: string; plural?: string } } | undefined;
  const [group, version] = apiVersion.includes('/') ? apiVersion.split('/') : ['', apiVersion];
  if (
    !spec ||
    group === undefined ||
    spec.group !== group ||
    spec.names?.kind !== kind ||
    !spec.names.plural ||
    !version
  )
    return undefined;
  return {
    group,
    version,
    apiVersion,
    kind,
    plural: spec.names.plural,
    namespaced: spec.scope === 'Namespaced',
    verbs: [],
  };
}

function displayKey(o: KubeObject): string {
  return `${o.apiVersion}/${o.kind}/${o.metadata.namespace ? `${o.metadata.namespace}/` : ''}${o.metadata.name}`;
}

function shortId(clock: Clock): string {
  return `${clock.now().getTime().toString(36)}${crypto.randomBytes(2).toString('hex')}`;
}

export async function planRestore(
  client: KubeClient,
  bundle: Bundle,
  opts: RestoreOptions = {},
): Promise<{ steps: Step[]; warnings: string[]; namespace: string }> {
  const source = bundle.namespace;
  const target = opts.targetNamespace ?? source;
  const transforms = opts.transforms ?? [];
  const { types, warnings } = await discover(client, opts);
  const crds = bundle.clusterResources.filter((c) => c.kind === 'CustomResourceDefinition');
  const resolve = (o: KubeObject): ResourceType => {
    const t =
      typeFor(types, o.apiVersion, o.kind) ??
      crds.map((c) => typeFromCrd(c, o.apiVersion, o.kind)).find(Boolean);
    if (!t)
      throw new InputError(
        `the cluster serves no ${o.apiVersion} ${o.kind} (object ${o.metadata.name}) and the backup has no CRD for it`,
      );
    return t;
  };
  const steps: Step[] = [];
  // Cluster-scoped dependencies, created only when missing.
  for (const c of bundle.clusterResources) {
    if (!['CustomResourceDefinition', 'StorageClass', 'VolumeSnapshotClass'].includes(c.kind)) continue;
    const type = resolve(c);
    steps.push({
      type,
      object: structuredClone(c),
      item: {
        apiVersion: c.apiVersion,
        kind: c.kind,
        name: c.metadata.name,
        action: 'create',
        transforms: [],
      },
    });
  }
  const restoreId = opts.restoreId ?? shortId(opts.clock ?? systemClock);
  for (const r of bundle.resources) {
    let o = structuredClone(r);
    const sourceUid = bundle.sourceUids[objectKey(r)];
    if (o.kind === 'Namespace' && o.apiVersion === 'v1') {
      o.metadata.name = target;
      if (o.metadata.labels?.['kubernetes.io/metadata.name'])
        o.metadata.labels['kubernetes.io/metadata.name'] = target;
    } else {
      o.metadata.namespace = target;
    }
    if (o.kind === 'RoleBinding' && Array.isArray(o['subjects'])) {
      for (const s of o['subjects'] as { namespace?: string }[])
        if (s.namespace === source) s.namespace = target;
    }
    let volume: VolumeRecord | undefined;
    if (o.kind === 'PersistentVolumeClaim' && o.apiVersion === 'v1') {
      volume = bundle.volumes.find((v) => v.pvc === r.metadata.name);
      if (volume) {
        const spec = (o['spec'] ??= {}) as Record<string, unknown>;
        const vsName = `tern-${restoreId}-${r.metadata.name}`.slice(0, 253);
        delete spec['dataSourceRef'];
        delete spec['dataSource'];
        if (!opts.volumeData)
          spec['dataSource'] = { apiGroup: T.volumeSnapshot.group, kind: 'VolumeSnapshot', name: vsName };
        // A claim smaller than the snapshot's restore size is refused by CSI provisioners.
        const res = (spec['resources'] ??= {}) as { requests?: Record<string, string> };
        const requests = (res.requests ??= {});
        if (parseQuantity(requests['storage']) < volume.restoreSizeBytes)
          requests['storage'] = String(volume.restoreSizeBytes);
      }
    }
    const t = applyTransforms(o, transforms);
    o = t.object;
    if (o.kind !== 'Namespace' && o.metadata.namespace !== target)
      throw new InputError(
        `transforms may not move ${o.kind} ${o.metadata.name} out of namespace "${target}"`,
      );
    const item: PlanItem = {
      apiVersion: o.apiVersion,
      kind: o.kind,
      name: o.metadata.name,
      namespace: o.kind === 'Namespace' ? undefined : target,
      action: 'create',
      transforms: t.applied,
      fromSnapshotHandle: opts.volumeData ? undefined : volume?.snapshotHandle,
      fromData: volume && opts.volumeData ? true : undefined,
    };
    steps.push({ type: resolve(o), object: o, item, sourceUid, volume });
  }
  steps.sort(
    (a, b) =>
      rank(a.object.kind) - rank(b.object.kind) ||
      a.object.kind.localeCompare(b.object.kind) ||
      a.object.metadata.name.localeCompare(b.object.metadata.name),
  );
  // What exists already.
  const readDenied = new Set<string>();
  for (const s of steps) {
    throwIfAborted(opts.signal);
    const ns = s.type.namespaced ? target : undefined;
    const existing = await client
      .find(s.type, ns, s.object.metadata.name, opts.signal)
      .catch((err: unknown) => {
        // Reported with every other missing permission by checkAccess, below.
        if (err instanceof ForbiddenError) return 'forbidden' as const;
        throw err;
      });
    if (existing === 'forbidden') {
      readDenied.add(`get ${s.type.plural}${s.type.group ? `.${s.type.group}` : ''}${ns ? ` in ${ns}` : ''}`);
      continue;
    }
    if (!existing) continue;
    s.existing = existing;
    const clusterDep = !s.type.namespaced && s.object.kind !== 'Namespace';
    if (clusterDep || s.object.kind === 'Namespace') s.item = { ...s.item, action: 'skip', reason: 'exists' };
    else if (s.object.kind === 'PersistentVolumeClaim')
      s.item = {
        ...s.item,
        action: 'skip',
        reason: 'exists (a claim is never replaced: its volume holds data)',
      };
    else if (opts.existing === 'overwrite') s.item = { ...s.item, action: 'overwrite', reason: 'exists' };
    else s.item = { ...s.item, action: 'skip', reason: 'exists' };
  }
  await checkAccess(client, steps, target, readDenied, opts.signal);
  return { steps, warnings, namespace: target };
}

/** Every create/update the restore needs, asked of the API server up front; all denials in one error. */
async function checkAccess(
  client: KubeClient,
  steps: Step[],
  ns: string,
  readDenied: Set<string>,
  signal?: AbortSignal,
): Promise<void> {
  const wanted = new Map<string, { group: string; resource: string; verb: string; namespace?: string }>();
  const want = (t: ResourceType, verb: string) => {
    const namespace = t.namespaced ? ns : undefined;
    wanted.set(`${t.group}/${t.plural}/${verb}/${namespace ?? ''}`, {
      group: t.group,
      resource: t.plural,
      verb,
      namespace,
    });
  };
  for (const s of steps) {
    if (s.item.action === 'create') want(s.type, 'create');
    if (s.item.action === 'overwrite') want(s.type, 'update');
    if (s.volume && s.item.action === 'create' && s.item.fromSnapshotHandle) {
      want(T.volumeSnapshot, 'create');
      want(T.volumeSnapshotContent, 'create');
    }
  }
  const denied: string[] = [...readDenied];
  await Promise.all(
    [...wanted.values()].map(async (attrs) => {
      const r = await client.request<{ status?: { allowed?: boolean } }>(
        'POST',
        '/apis/authorization.k8s.io/v1/selfsubjectaccessreviews',
        {
          body: {
            apiVersion: 'authorization.k8s.io/v1',
            kind: 'SelfSubjectAccessReview',
            spec: { resourceAttributes: attrs },
          },
          signal,
        },
      );
      if (!r.status?.allowed)
        denied.push(
          `${attrs.verb} ${attrs.resource}${attrs.group ? `.${attrs.group}` : ''}${attrs.namespace ? ` in ${attrs.namespace}` : ''}`,
        );
    }),
  );
  if (denied.length > 0)
    throw new ForbiddenError(`the restore is not allowed to: ${denied.sort().join(', ')}`, {
      details: { denied },
    });
}

export async function restoreBundle(
  client: KubeClient,
  bundle: Bundle,
  opts: RestoreOptions = {},
): Promise<RestoreResult> {
  const clock = opts.clock ?? systemClock;
  const restoreId = opts.restoreId ?? shortId(clock);
  const { steps, warnings, namespace } = await planRestore(client, bundle, { ...opts, restoreId });
  const result: RestoreResult = {
    restoreId,
    namespace,
    dryRun: !!opts.dryRun,
    plan: steps.map((s) => s.item),
    applied: [],
    volumes: [],
    warnings,
  };
  if (opts.dryRun) return result;
  const created: { type: ResourceType; ns?: string; name: string }[] = [];
  const uidMap = new Map<string, string>();
  const create = async (type: ResourceType, obj: KubeObject): Promise<KubeObject> => {
    const out = await client.create(type, obj, { signal: opts.signal });
    created.push({ type, ns: type.namespaced ? obj.metadata.namespace : undefined, name: obj.metadata.name });
    return out;
  };
  const pvcs: string[] = [];
  const toFill: { name: string; volume: VolumeRecord }[] = [];
  // Data goes in once the claims are bound and before anything that would mount them is created.
  const fillVolumes = async (): Promise<void> => {
    while (toFill.length > 0) {
      const { name, volume } = toFill.shift()!;
      const pvc = await waitBound(client, namespace, name, clock, opts);
      const pvName = (pvc['spec'] as { volumeName?: string } | undefined)?.volumeName ?? '';
      const pv = await client.get(T.pv, undefined, pvName, opts.signal);
      opts.onProgress?.({ phase: 'restore-data', bytesRead: 0, bytesTransferred: 0 });
      const r = await opts.volumeData!.restore(volume, { namespace, pvc, pv }, opts);
      result.volumes.push({ pvc: name, source: 'data', bytesWritten: r.bytesWritten });
    }
  };
  try {
    for (const s of steps) {
      throwIfAborted(opts.signal);
      opts.onProgress?.({
        phase: 'restore',
        bytesRead: 0,
        bytesTransferred: 0,
        items: result.applied.length,
        itemsTotal: steps.length,
      });
      if (s.item.action === 'skip') {
        if (s.sourceUid && s.existing?.metadata.uid) uidMap.set(s.sourceUid, s.existing.metadata.uid);
        continue;
      }
      const obj = structuredClone(s.object);
      if (obj.metadata.ownerReferences) {
        obj.metadata.ownerReferences = obj.metadata.ownerReferences.flatMap((ref) => {
          const uid = uidMap.get(ref.uid);
          if (uid) return [{ ...ref, uid }];
          warnings.push(
            `${obj.kind} ${obj.metadata.name}: owner ${ref.kind}/${ref.name} not restored, reference dropped`,
          );
          return [];
        });
        if (obj.metadata.ownerReferences.length === 0) delete obj.metadata.ownerReferences;
      }
      let out: KubeObject;
      if (s.item.action === 'overwrite' && s.existing) {
        obj.metadata.resourceVersion = s.existing.metadata.resourceVersion;
        if (obj.kind === 'Service') {
          // Cluster IPs are immutable: keep the ones the existing service has.
          const cur = s.existing['spec'] as Record<string, unknown> | undefined;
          const spec = (obj['spec'] ??= {}) as Record<string, unknown>;
          for (const k of ['clusterIP', 'clusterIPs'])
            if (cur?.[k] !== undefined && spec[k] === undefined) spec[k] = cur[k];
        }
        out = await client.replace(s.type, obj, { signal: opts.signal });
      } else {
        if (s.volume && !opts.volumeData) {
          const v = await provisionSnapshot(client, s.volume, obj, restoreId, create, opts);
          result.volumes.push({ ...v, source: 'snapshot' });
        }
        if (rank(obj.kind) > rank('PersistentVolumeClaim')) await fillVolumes();
        out = await create(s.type, obj);
        if (s.volume && opts.volumeData) toFill.push({ name: obj.metadata.name, volume: s.volume });
        if (obj.kind === 'CustomResourceDefinition')
          await waitEstablished(client, obj.metadata.name, clock, opts);
        if (obj.kind === 'PersistentVolumeClaim') pvcs.push(obj.metadata.name);
      }
      if (s.sourceUid && out.metadata.uid) uidMap.set(s.sourceUid, out.metadata.uid);
      result.applied.push(displayKey(obj));
    }
    await fillVolumes();
    if (opts.waitForVolumes ?? true) {
      for (const name of pvcs) await waitBound(client, namespace, name, clock, opts);
    }
    return result;
  } catch (err) {
    const leftovers: string[] = [];
    for (const c of created.reverse()) {
      await client
        .delete(c.type, c.ns, c.name)
        .catch((e: unknown) =>
          leftovers.push(`${c.type.kind} ${c.ns ? `${c.ns}/` : ''}${c.name}: ${describeError(e)}`),
        );
    }
    if (err instanceof Error && 'details' in err && err.details && typeof err.details === 'object') {
      try {
        Object.assign(err.details, { rolledBack: created.length - leftovers.length, leftovers });
      } catch {
        // details frozen: nothing to add
      }
    }
    throw err;
  }
}

/** A VolumeSnapshotContent bound to the recorded handle, and the VolumeSnapshot the claim's dataSource names. */
async function provisionSnapshot(
  client: KubeClient,
  v: VolumeRecord,
  pvc: KubeObject,
  restoreId: string,
  create: (t: ResourceType, o: KubeObject) => Promise<KubeObject>,
  opts: RestoreOptions,
): Promise<{ pvc: string; volumeSnapshot: string; volumeSnapshotContent: string }> {
  const ns = pvc.metadata.namespace!;
  const vsName = (pvc['spec'] as { dataSource: { name: string } }).dataSource.name;
  const contentName = `tern-${restoreId}-${ns}-${v.pvc}`.slice(0, 253).replace(/[-.]+$/, '');
  const labels = { [RESTORE_LABEL]: restoreId };
  await create(T.volumeSnapshotContent, {
    apiVersion: T.volumeSnapshotContent.apiVersion,
    kind: 'VolumeSnapshotContent',
    metadata: { name: contentName, labels },
    spec: {
      deletionPolicy: 'Retain',
      driver: v.driver,
      source: { snapshotHandle: v.snapshotHandle },
      volumeSnapshotClassName: v.volumeSnapshotClass,
      volumeSnapshotRef: { name: vsName, namespace: ns },
    },
  });
  await create(T.volumeSnapshot, {
    apiVersion: T.volumeSnapshot.apiVersion,
    kind: 'VolumeSnapshot',
    metadata: { name: vsName, namespace: ns, labels },
    spec: {
      volumeSnapshotClassName: v.volumeSnapshotClass,
      source: { volumeSnapshotContentName: contentName },
    },
  });
  await waitSnapshotReady(client, ns, vsName, {
    clock: opts.clock,
    timeoutMs: opts.timeoutMs,
    pollMs: opts.pollMs,
    signal: opts.signal,
  });
  return { pvc: pvc.metadata.name, volumeSnapshot: vsName, volumeSnapshotContent: contentName };
}

async function waitEstablished(
  client: KubeClient,
  name: string,
  clock: Clock,
  opts: RestoreOptions,
): Promise<void> {
  const deadline = clock.now().getTime() + (opts.timeoutMs ?? 60_000);
  for (;;) {
    const crd = await client.get(T.crd, undefined, name, opts.signal);
    const conds =
      (crd['status'] as { conditions?: { type: string; status: string }[] } | undefined)?.conditions ?? [];
    if (conds.some((c) => c.type === 'Established' && c.status === 'True')) return;
    if (clock.now().getTime() > deadline) throw new UnavailableError(`CRD ${name} not established in time`);
    await clock.sleep(opts.pollMs ?? 200, opts.signal);
  }
}

async function waitBound(
  client: KubeClient,
  ns: string,
  name: string,
  clock: Clock,
  opts: RestoreOptions,
): Promise<KubeObject> {
  const deadline = clock.now().getTime() + (opts.timeoutMs ?? 600_000);
  for (;;) {
    const pvc = await client.get(T.pvc, ns, name, opts.signal);
    const phase = (pvc['status'] as { phase?: string } | undefined)?.phase;
    if (phase === 'Bound') return pvc;
    if (clock.now().getTime() > deadline)
      throw new UnavailableError(
        `restored PVC ${ns}/${name} not bound in time (phase ${phase ?? 'unknown'})`,
      );
    await clock.sleep(opts.pollMs ?? 200, opts.signal);
  }
}
