/**
 * In-cluster reconciler for RestoreAction resources (deploy/crds): a RestoreAction names a RestorePoint
 * whose repository tier holds the exported backup; the reconciler loads the bundle from that repository
 * (location Profile + the Secret it references), restores it with the action's target namespace,
 * transforms and existing-object policy, and reports state, phases, plan and error in the status
 * subresource. Volumes come from the CSI snapshot handles the bundle records (`source: snapshot`).
 * Polling, one action at a time; with several replicas `tern server` runs it only while holding the leader
 * Lease (leader.ts). Datamover Jobs (`source: repository`) are not built.
 */
import type { Clock } from '../../core/index.ts';
import { PollLoop } from './poll-loop.ts';
import { InputError, NotFoundError, describeError, errorRecord, systemClock } from '../../core/index.ts';
import {
  loadExportedBundle,
  parseTransforms,
  restoreBundle,
  type KubeClient,
  type KubeObject,
  type ResourceType,
} from '../../platforms/kubernetes/index.ts';
import { Repository } from '../../repo/index.ts';
import { openStore, type StoreOptions } from '../../storage/index.ts';

const tern = (kind: string, plural: string): ResourceType => ({
  group: 'tern.io',
  version: 'v1alpha1',
  apiVersion: 'tern.io/v1alpha1',
  kind,
  plural,
  namespaced: true,
  verbs: [],
});
export const TernTypes = {
  profile: tern('Profile', 'profiles'),
  policy: tern('Policy', 'policies'),
  restorePoint: tern('RestorePoint', 'restorepoints'),
  restoreAction: tern('RestoreAction', 'restoreactions'),
  secret: {
    group: '',
    version: 'v1',
    apiVersion: 'v1',
    kind: 'Secret',
    plural: 'secrets',
    namespaced: true,
    verbs: [],
  } satisfies ResourceType,
};

export interface ReconcilerOptions {
  client: KubeClient;
  /** Namespace holding Tern's resources (Profiles, RestorePoints, RestoreActions and profile Secrets). */
  namespace: string;
  clock?: Clock;
  pollMs?: number;
  log?: (line: string) => void;
}

interface Phase {
  name: string;
  startedAt: string;
  endedAt?: string;
}

export class RestoreActionReconciler {
  private readonly o: ReconcilerOptions;
  private readonly clock: Clock;
  private readonly poller: PollLoop;

  constructor(o: ReconcilerOptions) {
    this.o = o;
    this.clock = o.clock ?? systemClock;
    this.poller = new PollLoop({
      label: 'reconcile',
      step: (signal) => this.reconcileOnce(signal),
      intervalMs: o.pollMs ?? 2000,
      clock: this.clock,
      log: o.log,
    });
  }

  start(): void {
    this.poller.start();
  }

  async stop(): Promise<void> {
    await this.poller.stop();
  }

  /** Runs every RestoreAction that has no state yet; returns how many ran. */
  async reconcileOnce(signal?: AbortSignal): Promise<number> {
    const { client, namespace } = this.o;
    const actions = await client.list(TernTypes.restoreAction, namespace, { signal });
    let n = 0;
    for (const a of actions.sort((x, y) => x.metadata.name.localeCompare(y.metadata.name))) {
      const state = (a['status'] as { state?: string } | undefined)?.state;
      if (state && state !== 'Pending') continue;
      await this.run(a, signal);
      n++;
    }
    return n;
  }

  private async setStatus(action: KubeObject, status: Record<string, unknown>): Promise<KubeObject> {
    const { client } = this.o;
    const cur = await client.get(TernTypes.restoreAction, action.metadata.namespace, action.metadata.name);
    return client.replaceStatus(TernTypes.restoreAction, { ...cur, status });
  }

  private async run(action: KubeObject, signal?: AbortSignal): Promise<void> {
    const now = () => this.clock.now().toISOString();
    const spec = (action['spec'] ?? {}) as {
      restorePoint?: string;
      targetNamespace?: string;
      existing?: 'skip' | 'overwrite';
      dryRun?: boolean;
      source?: string;
      transforms?: unknown[];
    };
    const phases: Phase[] = [];
    const startedAt = now();
    const phase = async <R>(name: string, fn: () => Promise<R>): Promise<R> => {
      const p: Phase = { name, startedAt: now() };
      phases.push(p);
      await this.setStatus(action, { state: 'Running', attempt: 1, startedAt, phases });
      const r = await fn();
      p.endedAt = now();
      return r;
    };
    this.o.log?.(`restore action ${action.metadata.name}: running`);
    try {
      if (spec.source === 'repository')
        throw new InputError(
          'source "repository" needs datamover Jobs, which this reconciler does not run yet',
        );
      const transforms = parseTransforms(spec.transforms ?? []);
      const { repo, backupId } = await phase('open-repository', () =>
        openRestorePointRepository(this.o.client, this.o.namespace, spec.restorePoint ?? ''),
      );
      let result;
      try {
        const bundle = await phase('load-bundle', () => loadExportedBundle(repo, backupId, { signal }));
        result = await phase('restore', () =>
          restoreBundle(this.o.client, bundle, {
            targetNamespace: spec.targetNamespace,
            transforms,
            existing: spec.existing,
            dryRun: spec.dryRun,
            clock: this.clock,
            signal,
          }),
        );
      } finally {
        await repo.close();
      }
      await this.setStatus(action, {
        state: 'Complete',
        attempt: 1,
        startedAt,
        endedAt: now(),
        phases,
        plan: result.plan.map((p) => ({ kind: p.kind, name: p.name, action: p.action, reason: p.reason })),
      });
      this.o.log?.(`restore action ${action.metadata.name}: complete (${result.applied.length} objects)`);
    } catch (err) {
      const last = phases.at(-1);
      if (last && !last.endedAt) last.endedAt = now();
      await this.setStatus(action, {
        state: 'Failed',
        attempt: 1,
        startedAt,
        endedAt: now(),
        phases,
        error: errorRecord(err),
      });
      this.o.log?.(`restore action ${action.metadata.name}: failed: ${describeError(err)}`);
    }
  }
}

/** The repository tier of a RestorePoint, opened through its location Profile. */
export async function openRestorePointRepository(
  client: KubeClient,
  namespace: string,
  name: string,
): Promise<{ repo: Repository; backupId: string }> {
  const rp = await client.find(TernTypes.restorePoint, namespace, name);
  if (!rp) throw new NotFoundError(`RestorePoint "${name}" not found in namespace "${namespace}"`);
  const backupId = (rp['spec'] as { backupId?: string }).backupId;
  if (!backupId) throw new InputError(`RestorePoint "${name}" has no backupId`);
  const tiers = ((rp['status'] as { tiers?: unknown[] } | undefined)?.tiers ?? []) as {
    kind: string;
    locationProfile?: string;
    repositoryPath?: string;
  }[];
  const tier = tiers.find((t) => t.kind === 'repository' && t.locationProfile);
  if (!tier) throw new NotFoundError(`RestorePoint "${name}" has no repository tier`);
  return {
    repo: await openProfileRepository(client, namespace, tier.locationProfile!, tier.repositoryPath),
    backupId,
  };
}

/** A repository at a location Profile (+ path), with the passphrase and credentials from the Profile's Secret. */
export async function openProfileRepository(
  client: KubeClient,
  namespace: string,
  profileName: string,
  repositoryPath?: string,
): Promise<Repository> {
  const profile = await client.find(TernTypes.profile, namespace, profileName);
  if (!profile) throw new NotFoundError(`location Profile "${profileName}" not found`);
  const pspec = profile['spec'] as {
    url?: string;
    settings?: Record<string, string>;
    secretRef?: { name: string };
  };
  if (!pspec.url) throw new InputError(`Profile "${profileName}" has no url`);
  const secrets: Record<string, string> = {};
  if (pspec.secretRef) {
    const s = await client.find(TernTypes.secret, namespace, pspec.secretRef.name);
    if (!s) throw new NotFoundError(`Secret "${pspec.secretRef.name}" of Profile "${profileName}" not found`);
    for (const [k, v] of Object.entries((s['data'] ?? {}) as Record<string, string>))
      secrets[k] = Buffer.from(v, 'base64').toString('utf8');
  }
  const passphrase = secrets['passphrase'];
  if (!passphrase) throw new InputError(`Secret of Profile "${profileName}" has no "passphrase" key`);
  const settings = pspec.settings ?? {};
  const opts: StoreOptions = {
    s3Endpoint: settings['s3Endpoint'],
    s3Region: settings['s3Region'],
    azureEndpoint: settings['azureEndpoint'],
    azureKey: secrets['azureKey'],
    // Upper-case secret keys are credentials in environment form (AWS_ACCESS_KEY_ID, ...).
    env: {
      ...process.env,
      ...Object.fromEntries(Object.entries(secrets).filter(([k]) => /^[A-Z][A-Z0-9_]*$/.test(k))),
    },
  };
  const base = pspec.url.replace(/\/+$/, '');
  const store = await openStore(repositoryPath ? `${base}/${repositoryPath}` : base, opts);
  return Repository.open(store, passphrase);
}
