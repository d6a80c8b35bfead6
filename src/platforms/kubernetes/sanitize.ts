/**
 * What a captured object keeps: what a user (or their tooling) wrote, not what the server or controllers
 * filled in. Objects that the cluster makes by itself (default service account token secrets,
 * kube-root-ca.crt, events, endpoints, controller-owned ReplicaSets and Pods) are not captured at all:
 * restoring their owners makes them again.
 */
import type { KubeObject, ResourceType } from './client.ts';

/** Types never captured: derived, ephemeral or cluster machinery. */
const SKIP_TYPES = new Set([
  '/Event',
  'events.k8s.io/Event',
  '/Endpoints',
  'discovery.k8s.io/EndpointSlice',
  'coordination.k8s.io/Lease',
  'authorization.k8s.io/LocalSubjectAccessReview',
  '/Binding',
  'metrics.k8s.io/PodMetrics',
  // Tern's own snapshot objects are recorded in the backup, not as resources of the app.
  'snapshot.storage.k8s.io/VolumeSnapshot',
]);

export function isCapturable(t: ResourceType): boolean {
  return t.verbs.includes('list') && t.verbs.includes('create') && !SKIP_TYPES.has(`${t.group}/${t.kind}`);
}

const SERVER_ANNOTATIONS = [
  'deployment.kubernetes.io/revision',
  'pv.kubernetes.io/bind-completed',
  'pv.kubernetes.io/bound-by-controller',
  'pv.kubernetes.io/provisioned-by',
  'volume.beta.kubernetes.io/storage-provisioner',
  'volume.kubernetes.io/storage-provisioner',
  'volume.kubernetes.io/selected-node',
  'kubernetes.io/service-account.uid',
  'control-plane.alpha.kubernetes.io/leader',
];

/** Why an object is not captured, or undefined to capture it. `capturedUids` are the uids of every listed object. */
export function skipReason(obj: KubeObject, capturedUids: Set<string>): string | undefined {
  const md = obj.metadata;
  if (md.deletionTimestamp) return 'being deleted';
  if (obj.kind === 'ConfigMap' && md.name === 'kube-root-ca.crt') return 'published by the cluster';
  if (obj.kind === 'Secret' && obj['type'] === 'kubernetes.io/service-account-token')
    return 'service account token';
  if (md.labels?.['tern.io/backup']) return 'made by Tern';
  const controller = md.ownerReferences?.find((o) => o.controller);
  if (controller && capturedUids.has(controller.uid)) return `owned by ${controller.kind}/${controller.name}`;
  return undefined;
}

function clean<T extends Record<string, unknown>>(o: T | undefined, keys: string[]): void {
  if (!o) return;
  for (const k of keys) delete o[k];
}

/**
 * A copy of `obj` without server-populated fields. Owner references to objects not in the capture are
 * dropped (they cannot be resolved after a restore); the others keep their uid for remapping at restore.
 */
export function sanitize(obj: KubeObject, capturedUids: Set<string>): KubeObject {
  const o = structuredClone(obj);
  delete o['status'];
  const md = o.metadata;
  clean(md, [
    'uid',
    'resourceVersion',
    'managedFields',
    'creationTimestamp',
    'generation',
    'selfLink',
    'deletionTimestamp',
    'deletionGracePeriodSeconds',
    'generateName',
  ]);
  if (md.annotations) {
    for (const a of SERVER_ANNOTATIONS) delete md.annotations[a];
    if (Object.keys(md.annotations).length === 0) delete md.annotations;
  }
  if (md.ownerReferences) {
    md.ownerReferences = md.ownerReferences.filter((r) => capturedUids.has(r.uid));
    if (md.ownerReferences.length === 0) delete md.ownerReferences;
  }
  if (md.finalizers) {
    // Finalizers belong to the controllers of the source cluster (pvc-protection, ...), which add their own.
    md.finalizers = md.finalizers.filter(
      (f) => !f.startsWith('kubernetes.io/') && !f.startsWith('kubernetes'),
    );
    if (md.finalizers.length === 0) delete md.finalizers;
  }
  const spec = o['spec'] as Record<string, unknown> | undefined;
  switch (o.kind) {
    case 'Service':
      // Cluster IPs are allocated per cluster; a headless service keeps "None".
      if (spec && spec['clusterIP'] !== 'None') clean(spec, ['clusterIP', 'clusterIPs']);
      clean(spec, ['healthCheckNodePort']);
      break;
    case 'PersistentVolumeClaim':
      // The bound volume is the source cluster's; the restore binds a new one (from the snapshot).
      clean(spec, ['volumeName']);
      break;
    case 'Pod':
      clean(spec, ['nodeName']);
      break;
    case 'ServiceAccount':
      // Token secrets listed here are generated per cluster.
      if (Array.isArray(o['secrets'])) {
        o['secrets'] = (o['secrets'] as { name?: string }[]).filter(
          (s) => !/-token-[a-z0-9]{5}$/.test(s.name ?? ''),
        );
        if ((o['secrets'] as unknown[]).length === 0) delete o['secrets'];
      }
      break;
    case 'Job': {
      // Selector and pod labels are generated from the job's uid unless the user set manualSelector.
      if (spec && !spec['manualSelector']) {
        delete spec['selector'];
        const tpl = spec['template'] as { metadata?: { labels?: Record<string, string> } } | undefined;
        const labels = tpl?.metadata?.labels;
        if (labels) {
          for (const k of ['controller-uid', 'batch.kubernetes.io/controller-uid']) delete labels[k];
        }
      }
      break;
    }
  }
  return o;
}
