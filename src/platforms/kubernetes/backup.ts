/**
 * Backup of one namespace: check the volumes can be snapshotted, run pre-snapshot hooks, capture the
 * manifests, take the CSI snapshots, run post-snapshot hooks (always, once pre hooks ran: an app frozen by
 * a pre hook must be thawed even when a snapshot fails). Every step is a phase with start and end times.
 */
import crypto from 'node:crypto';
import type { Clock, RunOptions } from '../../core/index.ts';
import { describeError, systemClock } from '../../core/index.ts';
import { BUNDLE_FORMAT, type Bundle, type PhaseRecord } from './bundle.ts';
import { captureNamespace } from './capture.ts';
import { T, type KubeClient } from './client.ts';
import { runHooks, type HookRunner, type HookSpec } from './hooks.ts';
import { sanitize } from './sanitize.ts';
import type { VolumeRecord } from './bundle.ts';
import {
  deleteBackupSnapshots,
  orphansOfVolumes,
  planSnapshots,
  takeSnapshots,
  withOrphanedSnapshots,
} from './snapshots.ts';

export interface BackupOptions extends RunOptions {
  backupId?: string;
  clock?: Clock;
  hooks?: HookSpec[];
  hookRunner?: HookRunner;
  /** Per snapshot wait for readyToUse. */
  snapshotTimeoutMs?: number;
  pollMs?: number;
}

export function newBackupId(clock: Clock = systemClock): string {
  const t = clock.now().toISOString().replace(/[-:]/g, '').replace('T', '-').slice(0, 15).toLowerCase();
  return `${t}-${crypto.randomBytes(3).toString('hex')}`;
}

async function phase<R>(
  phases: PhaseRecord[],
  clock: Clock,
  name: string,
  fn: () => Promise<R>,
  detail?: (r: R) => string,
): Promise<R> {
  const startedAt = clock.now().toISOString();
  try {
    const r = await fn();
    phases.push({ name, startedAt, endedAt: clock.now().toISOString(), status: 'ok', detail: detail?.(r) });
    return r;
  } catch (err) {
    phases.push({
      name,
      startedAt,
      endedAt: clock.now().toISOString(),
      status: 'failed',
      detail: describeError(err),
    });
    throw err;
  }
}

/** Error thrown by backupNamespace carries the phases that ran (for the action's run record). */
export function phasesOf(err: unknown): PhaseRecord[] | undefined {
  const d = (err as { details?: { phases?: PhaseRecord[] } } | undefined)?.details;
  return d?.phases;
}

export async function backupNamespace(
  client: KubeClient,
  namespace: string,
  opts: BackupOptions = {},
): Promise<Bundle> {
  const clock = opts.clock ?? systemClock;
  const backupId = opts.backupId ?? newBackupId(clock);
  const hooks = opts.hooks ?? [];
  const phases: PhaseRecord[] = [];
  const createdAt = clock.now().toISOString();
  let made: VolumeRecord[] | undefined;
  try {
    const capture = await phase(
      phases,
      clock,
      'capture',
      () => captureNamespace(client, namespace, opts),
      (c) => `${c.resources.length} objects, ${c.skipped.length} skipped`,
    );
    const planned = await phase(
      phases,
      clock,
      'plan-snapshots',
      () => planSnapshots(client, capture.rawPvcs, opts.signal),
      (p) => `${p.length} volumes`,
    );
    let preRan = false;
    let volumes;
    try {
      preRan = true;
      await runHooks(hooks, 'pre-snapshot', opts.hookRunner, {
        namespace,
        signal: opts.signal,
        clock,
        phases,
      });
      volumes = await phase(
        phases,
        clock,
        'snapshot',
        () =>
          takeSnapshots(client, planned, {
            backupId,
            clock,
            timeoutMs: opts.snapshotTimeoutMs,
            pollMs: opts.pollMs,
            signal: opts.signal,
            onProgress: opts.onProgress,
          }),
        (v) => `${v.length} snapshots ready`,
      );
      made = volumes;
    } finally {
      if (preRan) {
        // Post hooks run even after a failure; their own failure is recorded, and reported if nothing else failed.
        await runHooks(hooks, 'post-snapshot', opts.hookRunner, {
          namespace,
          signal: undefined,
          clock,
          phases,
        });
      }
    }
    for (const name of new Set(volumes.map((v) => v.volumeSnapshotClass))) {
      const c = await client.find(T.volumeSnapshotClass, undefined, name, opts.signal);
      if (c)
        capture.clusterResources.push(
          sanitize(
            { ...c, apiVersion: T.volumeSnapshotClass.apiVersion, kind: 'VolumeSnapshotClass' },
            new Set(),
          ),
        );
    }
    const version = await client.version(opts.signal).catch(() => undefined);
    return {
      format: BUNDLE_FORMAT,
      id: backupId,
      namespace,
      createdAt,
      serverVersion: version?.gitVersion,
      resources: capture.resources,
      sourceUids: capture.sourceUids,
      clusterResources: capture.clusterResources,
      volumes,
      skipped: capture.skipped,
      phases,
      warnings: capture.warnings,
    };
  } catch (caught) {
    let err = caught;
    if (made && made.length > 0) {
      // Snapshots are made (and retained) but there is no backup: they go again, or are reported as orphans.
      const volumes = made;
      await deleteBackupSnapshots(client, { namespace, volumes }).catch(() => {
        err = withOrphanedSnapshots(err, orphansOfVolumes(namespace, volumes));
      });
    }
    if (err instanceof Error && 'details' in err && typeof err.details === 'object' && err.details) {
      try {
        (err.details as Record<string, unknown>)['phases'] = phases;
      } catch {
        // frozen details: the phases are lost, the error stays
      }
    }
    throw err;
  }
}
