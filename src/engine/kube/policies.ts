/**
 * In-cluster Policy reconciler: when a Policy is due (its frequency as UTC cron, one catch-up run however
 * many times were missed), back up the application's namespace (CSI snapshots), export the bundle to the
 * Policy's datamover location, record a RestorePoint (local tier = the snapshot handles, repository tier =
 * the bundle), and retire the RestorePoints the Policy's retention (latest + GFS tiers, the engine's
 * `selectRetention`) no longer keeps, with their CSI snapshots. Snapshots of a failed run that could not be
 * deleted (API server gone) are recorded on the Policy (`status.orphanedSnapshots`) at the next successful
 * contact and deleted then. Volume data stays in the CSI snapshots: copying it into the repository needs
 * datamover Jobs (not built).
 */
import type { Clock } from '../../core/index.ts';
import { PollLoop } from './poll-loop.ts';
import { InputError, describeError, frequencyToCron, isValidCron, systemClock } from '../../core/index.ts';
import type { Frequency } from '../../core/index.ts';
import type { Retention } from '../../core/model.ts';
import {
  backupNamespace,
  deleteBackupSnapshots,
  deleteOrphanedSnapshots,
  exportBackup,
  orphanedSnapshotsOf,
  orphansOfVolumes,
  type OrphanedSnapshot,
  type HookRunner,
  type HookSpec,
  type KubeClient,
  type KubeObject,
  type VolumeRecord,
} from '../../platforms/kubernetes/index.ts';
import { selectRetention } from '../../core/retention.ts';
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
  retention?: Partial<Retention>;
  export?: { mode: string; locationProfile?: string; repositoryPath?: string };
  hooks?: HookSpec[];
  paused?: boolean;
}

export class PolicyReconciler {
  private readonly o: PolicyReconcilerOptions;
  private readonly clock: Clock;

  private readonly poller: PollLoop;
  /** Orphaned snapshots not yet recorded on their Policy (the API server was gone), by Policy name. */
  private readonly pendingOrphans = new Map<string, OrphanedSnapshot[]>();

  constructor(o: PolicyReconcilerOptions) {
    this.o = o;
    this.clock = o.clock ?? systemClock;
    this.poller = new PollLoop({
      label: 'policies',
      step: (signal) => this.reconcileOnce(signal),
      intervalMs: o.pollMs ?? 30_000,
      clock: systemClock,
      log: o.log,
    });
  }

  start(): void {
    this.poller.start();
  }

  async stop(): Promise<void> {
    await this.poller.stop();
  }

  /** Runs every due Policy once; returns the RestorePoints made. */
  async reconcileOnce(signal?: AbortSignal): Promise<string[]> {
    const made: string[] = [];
    const policies = await this.o.client.list(TernTypes.policy, this.o.namespace, { signal });
    // The API server answers again: first record and delete what failed runs left behind.
    for (const p of policies) await this.cleanOrphans(p, signal);
    for (const [name, orphans] of this.pendingOrphans) {
      if (policies.some((p) => p.metadata.name === name)) continue;
      const { left } = await deleteOrphanedSnapshots(this.o.client, orphans, signal);
      if (left.length > 0) this.pendingOrphans.set(name, left);
      else this.pendingOrphans.delete(name);
    }
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
    const prev = (cur['status'] ?? {}) as { orphanedSnapshots?: OrphanedSnapshot[] };
    const orphans = 'orphanedSnapshots' in status ? status['orphanedSnapshots'] : prev.orphanedSnapshots;
    const next: Record<string, unknown> = { ...status, observedGeneration: cur.metadata['generation'] };
    if (Array.isArray(orphans) && orphans.length > 0) next['orphanedSnapshots'] = orphans;
    else delete next['orphanedSnapshots'];
    await this.o.client.replaceStatus(TernTypes.policy, { ...cur, status: next });
    p['status'] = next;
  }

  private addOrphans(policy: string, orphans: OrphanedSnapshot[]): void {
    if (orphans.length === 0) return;
    this.pendingOrphans.set(policy, [...(this.pendingOrphans.get(policy) ?? []), ...orphans]);
    this.o.log?.(
      `policy ${policy}: ${orphans.length} snapshot(s) could not be deleted; recorded and deleted at the next contact: ${orphans.map((o) => `${o.namespace}/${o.volumeSnapshot}`).join(', ')}`,
    );
  }

  /**
   * Records this Policy's pending orphaned snapshots in its status (so they survive a restart of Tern),
   * then deletes every recorded one; those that still cannot be deleted stay recorded.
   */
  private async cleanOrphans(p: KubeObject, signal?: AbortSignal): Promise<void> {
    const name = p.metadata.name;
    const recorded =
      ((p['status'] ?? {}) as { orphanedSnapshots?: OrphanedSnapshot[] }).orphanedSnapshots ?? [];
    const pending = this.pendingOrphans.get(name) ?? [];
    if (recorded.length === 0 && pending.length === 0) return;
    const key = (o: OrphanedSnapshot) => `${o.namespace}/${o.volumeSnapshot}`;
    const all = [...new Map([...recorded, ...pending].map((o) => [key(o), o])).values()];
    const status = (p['status'] ?? {}) as Record<string, unknown>;
    if (pending.length > 0) {
      await this.setStatus(p, { ...status, orphanedSnapshots: all });
      this.pendingOrphans.delete(name);
      this.o.log?.(`policy ${name}: recorded ${all.length} orphaned snapshot(s) in its status`);
    }
    const { deleted, left, errors } = await deleteOrphanedSnapshots(this.o.client, all, signal);
    if (deleted.length > 0) {
      await this.setStatus(p, { ...status, orphanedSnapshots: left });
      this.o.log?.(
        `policy ${name}: deleted ${deleted.length} orphaned snapshot(s): ${deleted.map(key).join(', ')}`,
      );
    }
    if (errors.length > 0)
      this.o.log?.(`policy ${name}: orphaned snapshots still there: ${errors.join('; ')}`);
  }

  private async run(policy: KubeObject, spec: PolicySpec, due: Date, signal?: AbortSignal): Promise<string> {
    const { client, namespace } = this.o;
    let bundle;
    try {
      bundle = await backupNamespace(client, spec.app.namespace, {
        hooks: spec.hooks,
        hookRunner: this.o.hookRunner,
        signal,
      });
    } catch (err) {
      this.addOrphans(policy.metadata.name, orphanedSnapshotsOf(err));
      throw err;
    }
    const made = orphansOfVolumes(bundle.namespace, bundle.volumes);
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
      await deleteBackupSnapshots(client, bundle).catch(() => this.addOrphans(policy.metadata.name, made));
      throw err;
    }
    const name = `${policy.metadata.name}-${bundle.id}`.slice(0, 253);
    const rp = await client
      .create(TernTypes.restorePoint, {
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
      })
      .catch(async (err: unknown) => {
        // No restore point records these snapshots: they go again (the bundle stays in the repository).
        await deleteBackupSnapshots(client, bundle).catch(() => this.addOrphans(policy.metadata.name, made));
        throw err;
      });
    await client.replaceStatus(TernTypes.restorePoint, {
      ...rp,
      status: { tiers, scheduledAt: due.toISOString() },
    });
    await this.applyRetention(policy.metadata.name, spec.retention, signal);
    return name;
  }

  /**
   * Applies the Policy's retention to its RestorePoints with the engine's `selectRetention` (latest + GFS
   * tiers; periods counted on each point's `status.scheduledAt`, else `spec.consistentAt`). Points no longer
   * kept are retired: their CSI snapshots deleted, then the RestorePoint. An all-zero retention keeps the
   * newest one. Returns the names kept and removed.
   */
  async applyRetention(
    policyName: string,
    retention: Partial<Retention> | undefined,
    signal?: AbortSignal,
  ): Promise<{ kept: string[]; removed: string[] }> {
    const { client, namespace } = this.o;
    const r: Retention = {
      latest: retention?.latest ?? 1,
      hourly: retention?.hourly ?? 0,
      daily: retention?.daily ?? 0,
      weekly: retention?.weekly ?? 0,
      monthly: retention?.monthly ?? 0,
      yearly: retention?.yearly ?? 0,
    };
    if (r.latest + r.hourly + r.daily + r.weekly + r.monthly + r.yearly === 0) r.latest = 1;
    const points = await client.list(TernTypes.restorePoint, namespace, {
      labelSelector: `${POLICY_LABEL}=${policyName}`,
      signal,
    });
    const decision = selectRetention(
      points.map((rp) => ({
        id: rp.metadata.name,
        time: new Date(
          ((rp['status'] ?? {}) as { scheduledAt?: string }).scheduledAt ??
            (rp['spec'] as { consistentAt: string }).consistentAt,
        ).toISOString(),
        rp,
      })),
      r,
    );
    for (const { rp } of decision.remove) {
      const s = rp['spec'] as { app: string; volumes?: (VolumeRecord & Record<string, unknown>)[] };
      await deleteBackupSnapshots(client, { namespace: s.app, volumes: s.volumes ?? [] }, signal);
      await client.delete(TernTypes.restorePoint, namespace, rp.metadata.name, signal);
      this.o.log?.(`policy ${policyName}: retired ${rp.metadata.name}`);
    }
    return { kept: decision.keep.map((p) => p.id), removed: decision.remove.map((p) => p.id) };
  }
}
