/**
 * Engine: the TernService implementation. Holds the catalog, the action runner, the scheduler and the opened
 * platforms; the action handlers (backup, export, retention, restore) live in ./handlers.ts.
 */
import crypto from 'node:crypto';
import { ConflictError, InputError, systemClock, type Clock } from '../core/index.ts';
import {
  ApplicationSchema,
  frequencyToCron,
  isTerminal,
  NameSchema,
  parseInput,
  PolicySchema,
  ProfileSchema,
  redactProfile,
  type ActionRun,
  type Application,
  type InfraProfile,
  type LocationProfile,
  type Policy,
  type RedactedProfile,
  type RestorePoint,
} from '../core/model.ts';
import { Catalog, type PolicyRow } from '../catalog/index.ts';
import { openPlatform, type Platform } from '../platforms/index.ts';
import { openStore } from '../storage/index.ts';
import { datamoverExporter, storeOptions } from './datamover.ts';
import { getExporter, registerExporter, type Exporter, type ExporterKind } from './exporter.ts';
import { makeHandlers, planRestore } from './handlers.ts';
import { ActionRunner, type RetryPolicy } from './runner.ts';
import { Scheduler } from './scheduler.ts';
import type {
  ActionEvent,
  ActionFilter,
  ApplicationInput,
  MetricsSnapshot,
  PolicyInput,
  PolicyPatch,
  PolicyRunHandle,
  PolicyView,
  ProfileInput,
  RestorePointFilter,
  RestoreRequest,
  RestoreResult,
  TernService,
} from './service.ts';

registerExporter(datamoverExporter);

export interface EngineOptions {
  /** A catalog file path (':memory:' for tests) or an open Catalog (then the caller closes it). */
  catalog: string | Catalog;
  clock?: Clock;
  retry?: Partial<RetryPolicy>;
  /** Actions running at once across apps; default 2 (the data paths use worker threads of their own). */
  concurrency?: number;
  /** Extra exporters (in addition to the registered ones). */
  exporters?: Exporter[];
  /** Start the scheduler loop in start(); default true. Tests drive `scheduler.tick()` instead. */
  scheduler?: boolean;
  env?: NodeJS.ProcessEnv;
}

/** Infra profile settings "a.b=c" become nested platform config { a: { b: c } }; secrets are merged in. */
export function platformConfig(p: InfraProfile): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries({ ...p.settings, ...p.secrets })) {
    const parts = k.split('.');
    let cur = out;
    for (const part of parts.slice(0, -1)) {
      const next = cur[part];
      if (typeof next !== 'object' || next === null) cur[part] = {};
      cur = cur[part] as Record<string, unknown>;
    }
    cur[parts[parts.length - 1]!] = v;
  }
  return out;
}

export class Engine implements TernService {
  readonly catalog: Catalog;
  readonly clock: Clock;
  readonly runner: ActionRunner;
  readonly scheduler: Scheduler;
  private readonly ownsCatalog: boolean;
  private readonly useScheduler: boolean;
  private readonly exporters = new Map<ExporterKind, Exporter>();
  private readonly platforms = new Map<string, Promise<Platform>>();
  private readonly listeners = new Set<(e: ActionEvent) => void>();
  /** What the last start() recovered (for the server's log and tests). */
  lastRecovery: { resumed: string[]; failed: string[] } = { resumed: [], failed: [] };

  constructor(o: EngineOptions) {
    this.ownsCatalog = typeof o.catalog === 'string';
    this.catalog = typeof o.catalog === 'string' ? Catalog.open(o.catalog, { env: o.env }) : o.catalog;
    this.clock = o.clock ?? systemClock;
    this.useScheduler = o.scheduler ?? true;
    for (const e of o.exporters ?? []) this.exporters.set(e.kind, e);
    this.runner = new ActionRunner({
      catalog: this.catalog,
      clock: this.clock,
      retry: o.retry,
      concurrency: o.concurrency,
      handlers: makeHandlers(this),
      onChange: (a) => this.emit(a),
    });
    this.scheduler = new Scheduler({
      catalog: this.catalog,
      clock: this.clock,
      fire: (policy, at) => {
        this.startRun(policy, { scheduledAt: at.toISOString() });
      },
    });
  }

  // ---------- internals used by handlers ----------

  exporter(kind: ExporterKind): Exporter {
    const e = this.exporters.get(kind) ?? getExporter(kind);
    if (!e) throw new InputError(`export mode "${kind}" is not available in this build`);
    return e;
  }

  locationProfile(name: string): LocationProfile {
    const p = this.catalog.getProfile(name);
    if (p.kind !== 'location') throw new InputError(`profile "${name}" is not a location profile`);
    return p;
  }

  platformFor(infraProfile: string): Promise<Platform> {
    let p = this.platforms.get(infraProfile);
    if (!p) {
      const prof = this.catalog.getProfile(infraProfile);
      if (prof.kind !== 'infra') throw new InputError(`profile "${infraProfile}" is not an infra profile`);
      p = openPlatform(prof.platform, platformConfig(prof));
      p.catch(() => this.platforms.delete(infraProfile));
      this.platforms.set(infraProfile, p);
    }
    return p;
  }

  private emit(a: ActionRun): void {
    for (const l of this.listeners) {
      try {
        l({ kind: 'action', action: a });
      } catch {
        // a listener's failure is its own business
      }
    }
  }

  private startRun(policy: Policy, params: Record<string, unknown> = {}): string {
    const a = this.runner.create({ type: 'backup', app: policy.app, policy: policy.name, params });
    this.runner.enqueue(a.id);
    return a.id;
  }

  /** Resolves when every queued action has settled (tests, graceful shutdown). */
  idle(): Promise<void> {
    return this.runner.idle();
  }

  // ---------- applications ----------

  async createApp(input: ApplicationInput): Promise<Application> {
    const app = parseInput(ApplicationSchema, input, 'application');
    if (!this.catalog.hasProfile(app.infraProfile, 'infra'))
      throw new InputError(`unknown infra profile "${app.infraProfile}"`, {
        details: { fields: [{ path: 'infraProfile', message: 'unknown infra profile' }] },
      });
    if (this.catalog.hasApp(app.name)) throw new ConflictError(`application "${app.name}" already exists`);
    const names = new Set<string>();
    for (const v of app.volumes) {
      if (names.has(v.name)) throw new InputError(`volume name "${v.name}" appears twice`);
      names.add(v.name);
    }
    const platform = await this.platformFor(app.infraProfile);
    const vols = await platform.listVolumes(app.region).catch((err: unknown) => {
      throw new InputError(`region "${app.region}" cannot be listed`, { cause: err });
    });
    for (const v of app.volumes)
      if (!vols.some((x) => x.name === v.ref || x.id === v.ref))
        throw new InputError(`volume "${v.ref}" not found in region "${app.region}"`, {
          details: { fields: [{ path: 'volumes', message: `unknown volume ${v.ref}` }] },
        });
    this.catalog.insertApp(app, this.clock.now().toISOString());
    return app;
  }

  async getApp(name: string): Promise<Application> {
    return this.catalog.getApp(name);
  }

  async listApps(): Promise<Application[]> {
    return this.catalog.listApps();
  }

  async deleteApp(name: string): Promise<void> {
    this.catalog.deleteApp(name);
    return;
  }

  // ---------- profiles ----------

  async createProfile(input: ProfileInput, opts: { signal?: AbortSignal } = {}): Promise<RedactedProfile> {
    const p = parseInput(ProfileSchema, input, 'profile');
    if (this.catalog.hasProfile(p.name)) throw new ConflictError(`profile "${p.name}" already exists`);
    if (p.kind === 'location') {
      if (!p.secrets['repositoryPassword'])
        p.secrets['repositoryPassword'] = crypto.randomBytes(32).toString('base64url');
      await validateLocation(p, opts.signal);
    } else {
      try {
        const platform = await openPlatform(p.platform, platformConfig(p));
        await platform.info({ signal: opts.signal });
      } catch (err) {
        throw new InputError(`infra profile "${p.name}": the platform cannot be opened`, { cause: err });
      }
    }
    this.catalog.insertProfile(p, this.clock.now().toISOString());
    return redactProfile(p);
  }

  async getProfile(name: string): Promise<RedactedProfile> {
    return redactProfile(this.catalog.getProfile(name));
  }

  async listProfiles(kind?: 'location' | 'infra'): Promise<RedactedProfile[]> {
    return this.catalog.listProfiles(kind);
  }

  async deleteProfile(name: string): Promise<void> {
    this.catalog.deleteProfile(name);
    this.platforms.delete(name);
    return;
  }

  // ---------- policies ----------

  private view(row: PolicyRow): PolicyView {
    const v: PolicyView = { ...row.policy, cron: frequencyToCron(row.policy.frequency) };
    const next = this.scheduler.nextRun(row.policy, row.createdAt, row.lastRunAt);
    if (next) v.nextRunAt = next.toISOString();
    if (row.lastRunAt) v.lastRunAt = row.lastRunAt;
    return v;
  }

  private checkPolicyRefs(p: Policy): void {
    if (!this.catalog.hasApp(p.app))
      throw new InputError(`unknown application "${p.app}"`, {
        details: { fields: [{ path: 'app', message: 'unknown application' }] },
      });
    if (p.export?.mode === 'datamover' && !this.catalog.hasProfile(p.export.locationProfile, 'location'))
      throw new InputError(`unknown location profile "${p.export.locationProfile}"`, {
        details: { fields: [{ path: 'export.locationProfile', message: 'unknown location profile' }] },
      });
    if (p.export) this.exporter(p.export.mode);
  }

  async createPolicy(input: PolicyInput): Promise<PolicyView> {
    const p = parseInput(PolicySchema, input, 'policy');
    this.checkPolicyRefs(p);
    this.catalog.insertPolicy(p, this.clock.now().toISOString());
    this.scheduler.wake();
    return this.getPolicy(p.name);
  }

  async updatePolicy(name: string, patch: PolicyPatch): Promise<PolicyView> {
    const cur = this.catalog.getPolicy(name).policy;
    const body = { ...cur, ...(patch as object), name: cur.name, app: cur.app };
    const p = parseInput(PolicySchema, body, 'policy');
    this.checkPolicyRefs(p);
    this.catalog.updatePolicy(p);
    this.scheduler.wake();
    return this.getPolicy(name);
  }

  async getPolicy(name: string): Promise<PolicyView> {
    return this.view(this.catalog.getPolicy(name));
  }

  async listPolicies(filter: { app?: string } = {}): Promise<PolicyView[]> {
    return this.catalog.listPolicies(filter.app).map((r) => this.view(r));
  }

  async deletePolicy(name: string): Promise<void> {
    this.catalog.deletePolicy(name);
    this.scheduler.wake();
    return;
  }

  async pausePolicy(name: string): Promise<PolicyView> {
    const p = this.catalog.getPolicy(name).policy;
    this.catalog.updatePolicy({ ...p, paused: true });
    this.scheduler.wake();
    return this.getPolicy(name);
  }

  async resumePolicy(name: string): Promise<PolicyView> {
    const row = this.catalog.getPolicy(name);
    // Runs missed while paused are not replayed: the schedule restarts from now.
    this.catalog.tx(() => {
      this.catalog.updatePolicy({ ...row.policy, paused: false });
      if (row.policy.paused) this.catalog.setPolicyLastRun(name, this.clock.now().toISOString());
    });
    this.scheduler.wake();
    return this.getPolicy(name);
  }

  async runPolicy(name: string): Promise<PolicyRunHandle> {
    const p = this.catalog.getPolicy(name).policy;
    return { actionId: this.startRun(p, { onDemand: true }) };
  }

  // ---------- restore points ----------

  async listRestorePoints(filter: RestorePointFilter = {}): Promise<RestorePoint[]> {
    const all = this.catalog.listRestorePoints({ app: filter.app, policy: filter.policy });
    return all.filter((rp) => {
      const live = rp.tiers.filter((t) => !t.expiredAt);
      if (filter.tier) return live.some((t) => t.kind === filter.tier);
      return filter.includeExpired || live.length > 0;
    });
  }

  async getRestorePoint(id: string): Promise<RestorePoint> {
    return this.catalog.getRestorePoint(id);
  }

  async restore(req: RestoreRequest): Promise<RestoreResult> {
    if (req.targetApp !== undefined) parseInput(NameSchema, req.targetApp, 'target application name');
    const plan = await planRestore(this, req);
    if (req.dryRun) return { plan };
    // Queued with the source app: its policy runs (and their retention) wait, so the snapshots being read stay.
    const a = this.runner.create({
      type: 'restore',
      app: plan.app,
      restorePoint: plan.restorePoint,
      params: { plan },
    });
    this.runner.enqueue(a.id);
    return { plan, actionId: a.id };
  }

  // ---------- actions ----------

  async listActions(filter: ActionFilter = {}): Promise<ActionRun[]> {
    return this.catalog.listActions(filter);
  }

  async getAction(id: string): Promise<ActionRun> {
    return this.catalog.getAction(id);
  }

  async cancelAction(id: string): Promise<ActionRun> {
    return this.runner.cancel(id);
  }

  waitForAction(id: string, opts: { signal?: AbortSignal } = {}): Promise<ActionRun> {
    return new Promise((resolve, reject) => {
      const done = (a: ActionRun) => {
        unsubscribe();
        opts.signal?.removeEventListener('abort', onAbort);
        resolve(a);
      };
      const onAbort = () => {
        unsubscribe();
        reject(opts.signal?.reason as Error);
      };
      const unsubscribe = this.subscribe((e) => {
        if (e.action.id === id && isTerminal(e.action.state)) done(e.action);
      });
      opts.signal?.addEventListener('abort', onAbort, { once: true });
      try {
        const a = this.catalog.getAction(id);
        if (isTerminal(a.state)) done(a);
      } catch (err) {
        unsubscribe();
        reject(err as Error);
      }
    });
  }

  subscribe(listener: (e: ActionEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  // ---------- metrics ----------

  async metrics(): Promise<MetricsSnapshot> {
    const now = this.clock.now();
    const stats = this.catalog.actionStats();
    const actions: MetricsSnapshot['actions'] = [];
    const bytes = new Map<string, { read: number; transferred: number }>();
    for (const s of stats) {
      actions.push({ type: s.type, state: s.state, count: s.count });
      const b = bytes.get(s.type) ?? { read: 0, transferred: 0 };
      b.read += s.bytesRead;
      b.transferred += s.bytesTransferred;
      bytes.set(s.type, b);
    }
    const durations = stats
      .filter((s) => isTerminal(s.state))
      .map((s) => ({
        type: s.type,
        state: s.state,
        count: s.count,
        sumSeconds: s.sumSeconds,
        lastSeconds: s.lastSeconds,
      }));
    const newest = new Map<
      string,
      { app: string; tier: RestorePoint['tiers'][number]['kind']; at: string }
    >();
    for (const rp of this.catalog.listRestorePoints()) {
      for (const t of rp.tiers) {
        if (t.expiredAt) continue;
        const at = rp.consistentAt;
        const key = `${rp.app}\0${t.kind}`;
        const cur = newest.get(key);
        if (!cur || cur.at < at) newest.set(key, { app: rp.app, tier: t.kind, at });
      }
    }
    const policies = this.catalog.listPolicies();
    return {
      at: now.toISOString(),
      actions,
      durations,
      bytes: [...bytes].map(([type, b]) => ({ type: type as ActionRun['type'], ...b })),
      lastRestorePoint: [...newest.values()].map((n) => ({
        app: n.app,
        tier: n.tier,
        consistentAt: n.at,
        ageSeconds: Math.max(0, (now.getTime() - new Date(n.at).getTime()) / 1000),
      })),
      policies: { total: policies.length, paused: policies.filter((p) => p.policy.paused).length },
    };
  }

  // ---------- lifecycle ----------

  async start(): Promise<void> {
    this.lastRecovery = this.runner.recover();
    if (this.useScheduler) this.scheduler.start();
    return;
  }

  async close(): Promise<void> {
    await this.scheduler.close();
    await this.runner.shutdown();
    if (this.ownsCatalog) this.catalog.close();
  }
}

/** Writes, reads back and deletes a test object; any failure is an InputError naming the profile. */
async function validateLocation(p: LocationProfile, signal?: AbortSignal): Promise<void> {
  const key = `.tern-profile-check/${crypto.randomBytes(8).toString('hex')}`;
  const data = crypto.randomBytes(64);
  let store;
  try {
    store = await openStore(p.url, storeOptions(p));
    await store.put(key, data, { signal });
    const back = await store.get(key, { signal });
    if (!back.equals(data)) throw new Error('the test object read back differs from what was written');
    await store.delete(key, { signal });
  } catch (err) {
    throw new InputError(
      `location profile "${p.name}": cannot write and read a test object at ${p.url.replace(/\?.*$/, '')}`,
      {
        cause: err,
      },
    );
  } finally {
    await store?.close?.();
  }
}

export function openEngine(o: EngineOptions): Engine {
  return new Engine(o);
}
