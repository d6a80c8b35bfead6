/**
 * In-cluster Policy reconciler: when a Policy is due (its frequency as UTC cron, one catch-up run however
 * many times were missed), back up the application's namespace (CSI snapshots), export the bundle to the
 * Policy's datamover location, record a RestorePoint (local tier = the snapshot handles, repository tier =
 * the bundle), and retire RestorePoints beyond `retention.latest` (their CSI snapshots deleted).
 * Volume data stays in the CSI snapshots: copying it into the repository needs datamover Jobs (not built).
 */
import type { Clock } from '../../core/index.ts';
import { InputError, describeError, frequencyToCron, isValidCron, systemClock } from '../../core/index.ts';
import type { Frequency } from '../../core/index.ts';
import {
  backupNamespace,
  deleteBackupSnapshots,
  exportBackup,
  type HookRunner,
  type HookSpec,
  type KubeClient,
  type KubeObject,
  type VolumeRecord,
} from '../../platforms/kubernetes/index.ts';
import { latestDue, nextCronTime } from '../scheduler.ts';
import { TernTypes, openProfileRepository } from './reconciler.ts';

export const POLICY_LABEL = 'tern.io/policy';

export interface PolicyReconcilerOptions {
  client: KubeClient;
  /** Namespace holding Tern's resources. */
  namespace: string;
  /** Decides what is due (tests use a ManualClock); the backup's own waits use real time. */
  clock?: Clock;
  hookRunner?: HookRunner;
  log?: (line: string) => void;
  /** How often `start` looks for due policies; default 30 s. */
  pollMs?: number;
}

interface PolicySpec {
  app: { namespace: string };
  frequency: string;
  retention?: { latest?: number };
  export?: { mode: string; locationProfile?: string; repositoryPath?: string };
  hooks?: HookSpec[];
  paused?: boolean;
}

export class PolicyReconciler {
  private readonly o: PolicyReconcilerOptions;
  private readonly clock: Clock;

  private loop: Promise<void> | undefined;
  private ac: AbortController | undefined;

  constructor(o: PolicyReconcilerOptions) {
    this.o = o;
    this.clock = o.clock ?? systemClock;
  }

  start(): void {
    this.ac = new AbortController();
    const signal = this.ac.signal;
    this.loop = (async () => {
      while (!signal.aborted) {
        try {
          await this.reconcileOnce(signal);
        } catch (err) {
          this.o.log?.(`policies: ${describeError(err)}`);
        }
        await systemClock.sleep(this.o.pollMs ?? 30_000, signal).catch(() => undefined);
      }
    })();
  }

  async stop(): Promise<void> {
    this.ac?.abort(new Error('stopped'));
    await this.loop;
  }

  /** Runs every due Policy once; returns the RestorePoints made. */
  async reconcileOnce(signal?: AbortSignal): Promise<string[]> {
    const made: string[] = [];
    const policies = await this.o.client.list(TernTypes.policy, this.o.namespace, { signal });
    for (const p of policies) {
      const spec = p['spec'] as PolicySpec;
      if (spec.paused) continue;
      const status = (p['status'] ?? {}) as { lastRunAt?: string };
      const since = new Date(status.lastRunAt ?? String(p.metadata['creationTimestamp']));
      const now = this.clock.now();
      let cron: string;
      try {
        if (!spec.frequency.startsWith('@') && !isValidCron(spec.frequency))
          throw new InputError(`invalid frequency "${spec.frequency}"`);
        cron = frequencyToCron(spec.frequency as Frequency);
      } catch (err) {
        await this.setStatus(p, { ...status, lastError: describeError(err) });
        continue;
      }
      const due = latestDue(cron, since, now);
      if (!due) continue;
      const next = nextCronTime(cron, now).toISOString();
      try {
        const rp = await this.run(p, spec, due, signal);
        made.push(rp);
        await this.setStatus(p, { lastRunAt: due.toISOString(), nextRunAt: next, lastRestorePoint: rp });
        this.o.log?.(`policy ${p.metadata.name}: restore point ${rp}`);
      } catch (err) {
        // The run for this time failed: recorded, and the next scheduled time tries again.
        await this.setStatus(p, {
          lastRunAt: due.toISOString(),
          nextRunAt: next,
          lastError: describeError(err),
        });
        this.o.log?.(`policy ${p.metadata.name}: failed: ${describeError(err)}`);
      }
    }
    return made;
  }

  private async setStatus(p: KubeObject, status: Record<string, unknown>): Promise<void> {
    const cur = await this.o.client.get(TernTypes.policy, p.metadata.namespace, p.metadata.name);
    await this.o.client.replaceStatus(TernTypes.policy, {
      ...cur,
      status: { ...status, observedGeneration: cur.metadata['generation'] },
    });
  }

  private async run(policy: KubeObject, spec: PolicySpec, due: Date, signal?: AbortSignal): Promise<string> {
    const { client, namespace } = this.o;
    const bundle = await backupNamespace(client, spec.app.namespace, {
      hooks: spec.hooks,
      hookRunner: this.o.hookRunner,
      signal,
    });
    const tiers: Record<string, unknown>[] = [
      {
        kind: 'local',
        region: 'cluster',
        snapshots: Object.fromEntries(bundle.volumes.map((v) => [v.pvc, v.snapshotHandle])),
      },
    ];
    try {
      if (spec.export?.mode === 'datamover') {
        const repo = await openProfileRepository(
          client,
          namespace,
          spec.export.locationProfile ?? '',
          spec.export.repositoryPath,
        );
        try {
          const r = await exportBackup(repo, bundle, undefined, { signal });
          tiers.push({
            kind: 'repository',
            locationProfile: spec.export.locationProfile,
            repositoryPath: spec.export.repositoryPath ?? '',
            snapshots: { bundle: r.bundleSnapshot },
          });
        } finally {
          await repo.close();
        }
      } else if (spec.export) {
        throw new InputError(`export mode "${spec.export.mode}" is not supported in the cluster yet`);
      }
    } catch (err) {
      // No restore point without its export: the snapshots of this run go again.
      await deleteBackupSnapshots(client, bundle).catch(() => undefined);
      throw err;
    }
    const name = `${policy.metadata.name}-${bundle.id}`.slice(0, 253);
    const rp = await client.create(TernTypes.restorePoint, {
      apiVersion: TernTypes.restorePoint.apiVersion,
      kind: 'RestorePoint',
      metadata: { name, namespace, labels: { [POLICY_LABEL]: policy.metadata.name } },
      spec: {
        app: spec.app.namespace,
        policy: policy.metadata.name,
        backupId: bundle.id,
        consistentAt: bundle.volumes[0]?.readyAt ?? bundle.createdAt,
        sizeBytes: bundle.volumes.reduce((n, v) => n + v.restoreSizeBytes, 0),
        volumes: bundle.volumes.map((v) => ({
          pvc: v.pvc,
          driver: v.driver,
          volumeSnapshotClass: v.volumeSnapshotClass,
          volumeSnapshot: v.volumeSnapshot,
          volumeSnapshotContent: v.volumeSnapshotContent,
          snapshotHandle: v.snapshotHandle,
          restoreSizeBytes: v.restoreSizeBytes,
        })),
      },
    });
    await client.replaceStatus(TernTypes.restorePoint, {
      ...rp,
      status: { tiers, scheduledAt: due.toISOString() },
    });
    await this.retire(policy, spec);
    return name;
  }

  /** Keeps the newest `retention.latest` (default 1) RestorePoints of the policy; the rest lose their snapshots. */
  private async retire(policy: KubeObject, spec: PolicySpec): Promise<void> {
    const { client, namespace } = this.o;
    const keep = Math.max(1, spec.retention?.latest ?? 1);
    const points = await client.list(TernTypes.restorePoint, namespace, {
      labelSelector: `${POLICY_LABEL}=${policy.metadata.name}`,
    });
    const newestFirst = points.sort((a, b) =>
      String((b['spec'] as { consistentAt: string }).consistentAt).localeCompare(
        String((a['spec'] as { consistentAt: string }).consistentAt),
      ),
    );
    for (const rp of newestFirst.slice(keep)) {
      const s = rp['spec'] as { app: string; volumes?: (VolumeRecord & Record<string, unknown>)[] };
      await deleteBackupSnapshots(client, { namespace: s.app, volumes: s.volumes ?? [] });
      await client.delete(TernTypes.restorePoint, namespace, rp.metadata.name);
      this.o.log?.(`policy ${policy.metadata.name}: retired ${rp.metadata.name}`);
    }
  }
}
