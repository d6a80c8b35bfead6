/** Capture of one namespace: list every namespaced type, sanitize, and note the cluster-scoped objects it needs. */
import type { RunOptions } from '../../core/index.ts';
import { ForbiddenError, NotFoundError, describeError, throwIfAborted } from '../../core/index.ts';
import { objectKey, type SkippedObject } from './bundle.ts';
import { T, type KubeClient, type KubeObject, type ResourceType } from './client.ts';
import { discover, type Discovery } from './discovery.ts';
import { isCapturable, sanitize, skipReason } from './sanitize.ts';

export interface Capture {
  namespace: string;
  /** The Namespace, then the captured objects, sanitized. */
  resources: KubeObject[];
  sourceUids: Record<string, string>;
  clusterResources: KubeObject[];
  skipped: SkippedObject[];
  warnings: string[];
  /** Captured PVCs as the server returned them (with status and volumeName), for the volume snapshot step. */
  rawPvcs: KubeObject[];
  discovery: Discovery;
}

async function mapLimit<T, R>(items: T[], limit: number, fn: (t: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array<R>(items.length);
  let i = 0;
  const worker = async (): Promise<void> => {
    while (i < items.length) {
      const n = i++;
      out[n] = await fn(items[n]!);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

function sanitizeClusterObject(o: KubeObject): KubeObject {
  const s = sanitize(o, new Set());
  if (o.kind === 'PersistentVolume') {
    const spec = s['spec'] as Record<string, unknown> | undefined;
    delete spec?.['claimRef'];
  }
  return s;
}

export async function captureNamespace(
  client: KubeClient,
  namespace: string,
  opts: RunOptions & { discovery?: Discovery } = {},
): Promise<Capture> {
  const ns = await client.find(T.namespace, undefined, namespace, opts.signal);
  if (!ns) throw new NotFoundError(`namespace "${namespace}" not found`, { details: { namespace } });
  const discovery = opts.discovery ?? (await discover(client, opts));
  const types = discovery.types.filter((t) => t.namespaced && isCapturable(t));
  const listed = await mapLimit(types, 4, async (t) => {
    throwIfAborted(opts.signal);
    try {
      return { t, items: await client.list(t, namespace, { signal: opts.signal }) };
    } catch (err) {
      if (err instanceof ForbiddenError)
        throw new ForbiddenError(
          `not allowed to list ${t.plural}.${t.group || 'core'} in namespace "${namespace}"`,
          {
            cause: err,
            details: { namespace, resource: t.plural, group: t.group },
          },
        );
      throw err;
    }
  });
  const uids = new Set<string>();
  for (const { items } of listed) for (const o of items) if (o.metadata.uid) uids.add(o.metadata.uid);
  const nsClean = sanitize({ ...ns, apiVersion: 'v1', kind: 'Namespace' }, uids);
  delete nsClean['spec'];
  const resources: KubeObject[] = [nsClean];
  const sourceUids: Record<string, string> = {};
  if (ns.metadata.uid) sourceUids[objectKey(nsClean)] = ns.metadata.uid;
  const skipped: SkippedObject[] = [];
  const rawPvcs: KubeObject[] = [];
  const usedTypes = new Map<string, ResourceType>();
  for (const { t, items } of listed) {
    for (const o of items.sort((a, b) => a.metadata.name.localeCompare(b.metadata.name))) {
      const why = skipReason(o, uids);
      if (why) {
        skipped.push({ kind: o.kind, name: o.metadata.name, reason: why });
        continue;
      }
      const clean = sanitize(o, uids);
      resources.push(clean);
      if (o.metadata.uid) sourceUids[objectKey(clean)] = o.metadata.uid;
      usedTypes.set(`${t.group}/${t.plural}`, t);
      if (t.group === '' && t.kind === 'PersistentVolumeClaim') rawPvcs.push(o);
    }
  }
  const warnings = [...discovery.warnings];
  const clusterResources: KubeObject[] = [];
  const addCluster = async (t: ResourceType, name: string, why: string, quietNotFound = false) => {
    if (clusterResources.some((c) => c.kind === t.kind && c.metadata.name === name)) return;
    try {
      const o = await client.get(t, undefined, name, opts.signal);
      clusterResources.push(sanitizeClusterObject({ ...o, apiVersion: t.apiVersion, kind: t.kind }));
    } catch (err) {
      if (err instanceof NotFoundError && quietNotFound) return;
      if (err instanceof NotFoundError || err instanceof ForbiddenError)
        warnings.push(`${t.kind} "${name}" (${why}) not recorded: ${describeError(err)}`);
      else throw err;
    }
  };
  // CRDs of the custom resources in the namespace (groups without a dot are all built in; a missing CRD
  // for a dotted group means a built-in or aggregated API).
  for (const t of usedTypes.values()) {
    if (t.group.includes('.'))
      await addCluster(T.crd, `${t.plural}.${t.group}`, `type of ${t.kind} objects`, true);
  }
  for (const pvc of rawPvcs) {
    const spec = pvc['spec'] as { storageClassName?: string; volumeName?: string } | undefined;
    if (spec?.storageClassName)
      await addCluster(T.storageClass, spec.storageClassName, `class of PVC ${pvc.metadata.name}`);
    if (spec?.volumeName) await addCluster(T.pv, spec.volumeName, `bound to PVC ${pvc.metadata.name}`);
  }
  return { namespace, resources, sourceUids, clusterResources, skipped, warnings, rawPvcs, discovery };
}
