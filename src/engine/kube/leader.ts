/**
 * Leader election through a coordination.k8s.io/v1 Lease (client-go's algorithm): the holder renews
 * `spec.renewTime` every retry period; another candidate takes the lease over only when it has seen the
 * same lease record unchanged for a whole lease duration, measured on its own clock (no trust in the
 * holder's clock). Updates carry the lease's resourceVersion, so two candidates cannot both win. A leader
 * that cannot renew within the renew deadline (shorter than the lease duration) stops leading before
 * anyone may take over. `stop()` releases the lease (empty holder), so a successor starts at once.
 */
import os from 'node:os';
import { randomBytes } from 'node:crypto';
import type { Clock } from '../../core/index.ts';
import { ConflictError, InputError, describeError, systemClock } from '../../core/index.ts';
import type { KubeClient, ResourceType } from '../../platforms/kubernetes/index.ts';

export const LeaseType: ResourceType = {
  group: 'coordination.k8s.io',
  version: 'v1',
  apiVersion: 'coordination.k8s.io/v1',
  kind: 'Lease',
  plural: 'leases',
  namespaced: true,
  verbs: [],
};

export interface LeaderElectorOptions {
  client: KubeClient;
  namespace: string;
  /** Lease name; default `tern-reconciler`. */
  name?: string;
  /** This candidate; default `$POD_NAME` or the host name, plus a random suffix. */
  identity?: string;
  /** How long a lease not renewed stays with its holder; default 15 s. */
  leaseDurationMs?: number;
  /** The leader gives up when it could not renew for this long; default 2/3 of the lease duration. */
  renewDeadlineMs?: number;
  /** How often to try to acquire or renew; default 2 s. */
  retryPeriodMs?: number;
  clock?: Clock;
  log?: (line: string) => void;
  /** Called when this candidate becomes leader. */
  onStartedLeading?: () => void | Promise<void>;
  /** Called when it stops leading (lost the lease, could not renew, or `stop()`); awaited before release. */
  onStoppedLeading?: () => void | Promise<void>;
}

interface LeaseSpec {
  holderIdentity?: string;
  leaseDurationSeconds?: number;
  acquireTime?: string;
  renewTime?: string;
  leaseTransitions?: number;
}

/** Kubernetes MicroTime: RFC 3339 with microseconds. */
function microTime(d: Date): string {
  return d.toISOString().replace(/\.(\d{3})Z$/, '.$1000Z');
}

export function defaultIdentity(): string {
  return `${process.env['POD_NAME'] || os.hostname()}_${randomBytes(4).toString('hex')}`;
}

export class LeaderElector {
  readonly identity: string;
  readonly name: string;
  private readonly o: LeaderElectorOptions;
  private readonly clock: Clock;
  private readonly leaseMs: number;
  private readonly renewDeadlineMs: number;
  private leading = false;
  /** The last lease record seen (holder + renewTime + resourceVersion) and when, on our clock. */
  private observed: { key: string; at: number } | undefined;
  private lastRenew = 0;
  private loop: Promise<void> | undefined;
  private ac: AbortController | undefined;

  constructor(o: LeaderElectorOptions) {
    this.o = o;
    this.clock = o.clock ?? systemClock;
    this.name = o.name ?? 'tern-reconciler';
    this.identity = o.identity ?? defaultIdentity();
    this.leaseMs = o.leaseDurationMs ?? 15_000;
    this.renewDeadlineMs = o.renewDeadlineMs ?? Math.floor((this.leaseMs * 2) / 3);
    if (this.renewDeadlineMs >= this.leaseMs)
      throw new InputError('the renew deadline must be shorter than the lease duration');
  }

  get isLeader(): boolean {
    return this.leading;
  }

  start(): void {
    this.ac = new AbortController();
    const signal = this.ac.signal;
    this.loop = (async () => {
      while (!signal.aborted) {
        await this.tick(signal);
        await this.clock.sleep(this.o.retryPeriodMs ?? 2000, signal).catch(() => undefined);
      }
    })();
  }

  /**
   * Stops trying. A leader first stops its work (`onStoppedLeading`), then releases the lease. With
   * `release: false` the lease is left to expire (what a crashed leader does; tests use it).
   */
  async stop(opts: { release?: boolean } = {}): Promise<void> {
    this.ac?.abort(new Error('stopped'));
    await this.loop;
    if (!this.leading) return;
    await this.stepDown('stopping');
    if (opts.release === false) return;
    try {
      const lease = await this.o.client.get(LeaseType, this.o.namespace, this.name);
      const spec = (lease['spec'] ?? {}) as LeaseSpec;
      if (spec.holderIdentity !== this.identity) return;
      const now = microTime(this.clock.now());
      await this.o.client.replace(LeaseType, {
        ...lease,
        spec: { ...spec, holderIdentity: '', leaseDurationSeconds: 1, renewTime: now, acquireTime: now },
      });
      this.o.log?.(`leader election: ${this.identity} released lease ${this.o.namespace}/${this.name}`);
    } catch (err) {
      this.o.log?.(`leader election: release failed (the lease expires instead): ${describeError(err)}`);
    }
  }

  /** One attempt to acquire or renew; returns whether this candidate leads afterwards. */
  async tick(signal?: AbortSignal): Promise<boolean> {
    let ok = false;
    try {
      ok = await this.tryAcquireOrRenew(signal);
    } catch (err) {
      if (!signal?.aborted) this.o.log?.(`leader election: ${describeError(err)}`);
    }
    const now = this.clock.now().getTime();
    if (ok) {
      this.lastRenew = now;
      if (!this.leading) {
        this.leading = true;
        this.o.log?.(`leader election: ${this.identity} leads (lease ${this.o.namespace}/${this.name})`);
        try {
          await this.o.onStartedLeading?.();
        } catch (err) {
          this.o.log?.(`leader election: starting work failed: ${describeError(err)}`);
        }
      }
    } else if (this.leading && now - this.lastRenew >= this.renewDeadlineMs) {
      await this.stepDown('could not renew the lease within the renew deadline');
    }
    return this.leading;
  }

  private async stepDown(why: string): Promise<void> {
    this.leading = false;
    this.o.log?.(`leader election: ${this.identity} stops leading: ${why}`);
    try {
      await this.o.onStoppedLeading?.();
    } catch (err) {
      this.o.log?.(`leader election: stopping work failed: ${describeError(err)}`);
    }
  }

  private async tryAcquireOrRenew(signal?: AbortSignal): Promise<boolean> {
    const { client, namespace } = this.o;
    const nowDate = this.clock.now();
    const now = nowDate.getTime();
    const mine: LeaseSpec = {
      holderIdentity: this.identity,
      leaseDurationSeconds: Math.max(1, Math.ceil(this.leaseMs / 1000)),
      renewTime: microTime(nowDate),
    };
    const lease = await client.find(LeaseType, namespace, this.name, signal);
    if (!lease) {
      try {
        await client.create(
          LeaseType,
          {
            apiVersion: LeaseType.apiVersion,
            kind: LeaseType.kind,
            metadata: { name: this.name, namespace },
            spec: { ...mine, acquireTime: mine.renewTime, leaseTransitions: 0 },
          },
          { signal },
        );
        return true;
      } catch (err) {
        if (err instanceof ConflictError) return false; // someone else created it first
        throw err;
      }
    }
    const spec = (lease['spec'] ?? {}) as LeaseSpec;
    const holder = spec.holderIdentity ?? '';
    const key = `${holder}|${spec.renewTime ?? ''}|${String(lease.metadata['resourceVersion'])}`;
    if (this.observed?.key !== key) this.observed = { key, at: now };
    if (holder !== '' && holder !== this.identity && now < this.observed.at + this.leaseMs) return false;
    const taking = holder !== this.identity;
    const next: LeaseSpec = taking
      ? {
          ...spec,
          ...mine,
          acquireTime: mine.renewTime,
          leaseTransitions: (spec.leaseTransitions ?? 0) + (holder === '' ? 0 : 1),
        }
      : { ...spec, ...mine };
    try {
      const updated = await client.replace(LeaseType, { ...lease, spec: next }, { signal });
      const u = (updated['spec'] ?? {}) as LeaseSpec;
      this.observed = {
        key: `${u.holderIdentity ?? ''}|${u.renewTime ?? ''}|${String(updated.metadata['resourceVersion'])}`,
        at: now,
      };
      if (taking && holder !== '')
        this.o.log?.(`leader election: ${this.identity} took over the lease from ${holder}`);
      return true;
    } catch (err) {
      if (err instanceof ConflictError) return false; // changed under us: someone else renewed or won
      throw err;
    }
  }
}

/** Runs `start`/`stop` of the given reconcilers only while this elector leads. */
export function leaderGated(
  o: Omit<LeaderElectorOptions, 'onStartedLeading' | 'onStoppedLeading'>,
  workers: { start(): void; stop(): Promise<void> }[],
): LeaderElector {
  return new LeaderElector({
    ...o,
    onStartedLeading: () => {
      for (const w of workers) w.start();
    },
    onStoppedLeading: async () => {
      await Promise.all(workers.map((w) => w.stop()));
    },
  });
}
