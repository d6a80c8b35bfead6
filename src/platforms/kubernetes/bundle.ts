/**
 * The backup of one namespace: its manifests (sanitized), the cluster-scoped objects they depend on,
 * one record per volume snapshot (the CSI snapshot handle is what a restore needs) and the phases that ran.
 * A bundle is JSON; it is read back through `parseBundle` (validated, as any external input).
 */
import { z } from 'zod';
import { InputError } from '../../core/index.ts';
import type { KubeObject } from './client.ts';

export const BUNDLE_FORMAT = 'tern.kubernetes/v1';

export interface VolumeRecord {
  pvc: string;
  storageClassName?: string;
  accessModes?: string[];
  volumeMode?: string;
  /** Requested size (Kubernetes quantity) of the source claim. */
  requestedStorage?: string;
  driver: string;
  volumeHandle: string;
  volumeSnapshotClass: string;
  volumeSnapshot: string;
  volumeSnapshotContent: string;
  /** The CSI driver's id of the snapshot: enough to restore it in any namespace of a cluster that can reach it. */
  snapshotHandle: string;
  restoreSizeBytes: number;
  readyAt: string;
}

export interface PhaseRecord {
  name: string;
  startedAt: string;
  endedAt: string;
  status: 'ok' | 'failed';
  detail?: string;
}

export interface SkippedObject {
  kind: string;
  name: string;
  reason: string;
}

export interface Bundle {
  format: typeof BUNDLE_FORMAT;
  id: string;
  namespace: string;
  createdAt: string;
  serverVersion?: string;
  /** The Namespace first, then every captured object, sanitized. */
  resources: KubeObject[];
  /** uid each resource had in the source cluster ("apiVersion/kind/name" → uid), to remap owner references. */
  sourceUids: Record<string, string>;
  /** Cluster-scoped objects the namespace depends on: CRDs, StorageClasses, PersistentVolumes, VolumeSnapshotClasses. */
  clusterResources: KubeObject[];
  volumes: VolumeRecord[];
  skipped: SkippedObject[];
  phases: PhaseRecord[];
  warnings: string[];
}

export function objectKey(
  o: Pick<KubeObject, 'apiVersion' | 'kind'> & { metadata: { name: string } },
): string {
  return `${o.apiVersion}/${o.kind}/${o.metadata.name}`;
}

const kubeObject = z
  .object({
    apiVersion: z.string().min(1),
    kind: z.string().min(1),
    metadata: z.looseObject({ name: z.string().min(1), namespace: z.string().optional() }),
  })
  .loose();

const bundleSchema = z.object({
  format: z.literal(BUNDLE_FORMAT),
  id: z.string().min(1),
  namespace: z.string().min(1),
  createdAt: z.string(),
  serverVersion: z.string().optional(),
  resources: z.array(kubeObject),
  sourceUids: z.record(z.string(), z.string()),
  clusterResources: z.array(kubeObject),
  volumes: z.array(
    z.object({
      pvc: z.string().min(1),
      storageClassName: z.string().optional(),
      accessModes: z.array(z.string()).optional(),
      volumeMode: z.string().optional(),
      requestedStorage: z.string().optional(),
      driver: z.string().min(1),
      volumeHandle: z.string(),
      volumeSnapshotClass: z.string(),
      volumeSnapshot: z.string(),
      volumeSnapshotContent: z.string(),
      snapshotHandle: z.string().min(1),
      restoreSizeBytes: z.number().int().nonnegative(),
      readyAt: z.string(),
    }),
  ),
  skipped: z.array(z.object({ kind: z.string(), name: z.string(), reason: z.string() })),
  phases: z.array(
    z.object({
      name: z.string(),
      startedAt: z.string(),
      endedAt: z.string(),
      status: z.enum(['ok', 'failed']),
      detail: z.string().optional(),
    }),
  ),
  warnings: z.array(z.string()),
});

export function parseBundle(input: unknown): Bundle {
  const r = bundleSchema.safeParse(typeof input === 'string' ? safeJson(input) : input);
  if (!r.success) {
    const first = r.error.issues[0];
    throw new InputError(
      `not a Tern Kubernetes bundle: ${first ? `${first.path.join('.')}: ${first.message}` : 'invalid'}`,
      {
        cause: r.error,
        details: { field: first?.path.join('.') },
      },
    );
  }
  return r.data as Bundle;
}

function safeJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new InputError('the bundle is not valid JSON', { cause: err });
  }
}
