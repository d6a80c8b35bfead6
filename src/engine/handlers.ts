/**
 * What each action type does. A policy run is three actions in the app's queue:
 *   backup    (phase "snapshot": a platform snapshot of every volume → a restore point with a 'local' tier)
 *   export    (phase "export": the policy's Exporter adds a 'repository' or 'region-copy' tier)
 *   retention (phases "local retention", "export retention": GFS over each tier separately)
 * Each handler is safe to run again after a crash or a failed attempt: backup first deletes snapshots an
 * interrupted attempt of the same action left behind; export skips a restore point that already has its tier;
 * retention and restore are idempotent.
 */
import { ConflictError, InputError, NotFoundError, throwIfAborted } from '../core/index.ts';
import type { Application, Policy, RestorePoint, Tier } from '../core/model.ts';
import type { Platform, SnapshotRef, VolumeRef } from '../platforms/index.ts';
import { openRepository, restoreFromRepository } from './datamover.ts';
import type { Engine } from './engine.ts';
import type { ExportContext } from './exporter.ts';
import { selectRetention } from '../core/retention.ts';
import type { ActionHandler } from './runner.ts';
import type { RestorePlan, RestoreRequest } from './service.ts';

const ACTION_TAG = 'tern-action';

/** Platforms whose volumes are files on this host (local): the repository restore writes there. */
interface HostPaths {
  volumeDataPath(v: VolumeRef): string;
}
function hostPaths(p: Platform): HostPaths | undefined {
  return typeof (p as Partial<HostPaths>).volumeDataPath === 'function'
    ? (p as unknown as HostPaths)
    : undefined;
}

/**
 * The platform's refs of an app's volumes. With `allowMissing`, a volume that is gone (the disaster a restore is
 * for) gets a ref built from the app record, enough to find its snapshots and to restore it in place.
 */
async function appVolumes(
  platform: Platform,
  app: Application,
  allowMissing = false,
): Promise<Map<string, VolumeRef>> {
  const all = await platform.listVolumes(app.region);
  const out = new Map<string, VolumeRef>();
  for (const v of app.volumes) {
    const ref = all.find((x) => x.name === v.ref || x.id === v.ref);
    if (ref) out.set(v.name, ref);
    else if (allowMissing)
      out.set(v.name, {
        id: v.ref,
        region: app.region,
        name: v.ref,
        sizeBytes: v.sizeBytes ?? 0,
        kind: 'block',
      });
    else
      throw new NotFoundError(`volume "${v.ref}" of app "${app.name}" not found in region "${app.region}"`);
  }
  return out;
}

/** The platform's SnapshotRef for an id, or undefined when the snapshot is gone. */
async function findSnapshot(
  platform: Platform,
  vol: VolumeRef,
  id: string,
): Promise<SnapshotRef | undefined> {
  return (await platform.listSnapshots(vol)).find((s) => s.id === id);
}

function liveTier<K extends Tier['kind']>(rp: RestorePoint, kind: K): Extract<Tier, { kind: K }> | undefined {
  return rp.tiers.find((t) => t.kind === kind && !t.expiredAt) as Extract<Tier, { kind: K }> | undefined;
}

function policyOf(engine: Engine, name: string | undefined): Policy {
  if (!name) throw new InputError('action has no policy');
  return engine.catalog.getPolicy(name).policy;
}

export function makeHandlers(
  engine: Engine,
): Record<'backup' | 'export' | 'retention' | 'restore', ActionHandler> {
  const { catalog } = engine;

  const backup: ActionHandler = async (ctx) => {
    const policy = policyOf(engine, ctx.action.policy);
    const app = catalog.getApp(policy.app);
    const platform = await engine.platformFor(app.infraProfile);
    const run = typeof ctx.action.params['run'] === 'string' ? ctx.action.params['run'] : ctx.action.id;
    const follow = (rpId: string) => {
      const common = { app: app.name, policy: policy.name, restorePoint: rpId, params: { run } };
      return { next: [{ type: policy.export ? ('export' as const) : ('retention' as const), ...common }] };
    };
    // An earlier attempt recorded its restore point (with the action, in one transaction): only the follow-on is left.
    if (ctx.action.restorePoint) return follow(ctx.action.restorePoint);
    const vols = await appVolumes(platform, app);
    if (ctx.action.attempt > 1)
      await ctx.phase('cleanup', async () => {
        for (const v of vols.values())
          for (const s of await platform.listSnapshots(v))
            if (s.details?.[`tag.${ACTION_TAG}`] === ctx.action.id) await platform.deleteSnapshot(s);
      });
    const rp = await ctx.phase('snapshot', async () => {
      const consistentAt = engine.clock.now().toISOString();
      const made: SnapshotRef[] = [];
      try {
        let size = 0;
        const snapshots: Record<string, string> = {};
        for (const [name, vol] of vols) {
          throwIfAborted(ctx.signal);
          const s = await platform.snapshot(vol, {
            signal: ctx.signal,
            tags: { [ACTION_TAG]: ctx.action.id, 'tern-app': app.name, 'tern-volume': name },
          });
          made.push(s);
          snapshots[name] = s.id;
          size += s.sizeBytes;
          ctx.progress({ progress: made.length / vols.size });
        }
        throwIfAborted(ctx.signal);
        const point: RestorePoint = {
          id: catalog.newId('rp'),
          app: app.name,
          policy: policy.name,
          consistentAt,
          sizeBytes: size,
          tiers: [{ kind: 'local', region: app.region, snapshots }],
        };
        catalog.tx(() => {
          catalog.insertRestorePoint(point);
          ctx.update({ restorePoint: point.id });
        });
        return point;
      } catch (err) {
        for (const s of made) await platform.deleteSnapshot(s).catch(() => undefined);
        throw err;
      }
    });
    return follow(rp.id);
  };

  const exportH: ActionHandler = async (ctx) => {
    const policy = policyOf(engine, ctx.action.policy);
    if (!policy.export) throw new InputError(`policy "${policy.name}" has no export`);
    const exporter = engine.exporter(policy.export.mode);
    const rpId = ctx.action.restorePoint;
    if (!rpId) throw new InputError('export action has no restore point');
    const rp = catalog.getRestorePoint(rpId);
    const app = catalog.getApp(rp.app);
    const next = {
      next: [
        {
          type: 'retention' as const,
          app: app.name,
          policy: policy.name,
          restorePoint: rp.id,
          params: { run: ctx.action.params['run'] ?? ctx.action.id },
        },
      ],
    };
    if (liveTier(rp, exporter.tierKind)) return next; // an earlier attempt finished the export
    const local = liveTier(rp, 'local');
    if (!local) throw new NotFoundError(`restore point ${rp.id} has no local snapshots left to export`);
    const platform = await engine.platformFor(app.infraProfile);
    const vols = await appVolumes(platform, app);
    const snaps = async (t: { snapshots: Record<string, string> }, required: boolean) => {
      const out: Record<string, SnapshotRef> = {};
      for (const [name, id] of Object.entries(t.snapshots)) {
        const vol = vols.get(name);
        const s = vol ? await findSnapshot(platform, vol, id) : undefined;
        if (s) out[name] = s;
        else if (required) throw new NotFoundError(`local snapshot ${id} of volume "${name}" is gone`);
      }
      return out;
    };
    const snapshots = await snaps(local, true);
    let previous: ExportContext['previous'];
    const prevRp = catalog
      .listRestorePoints({ app: app.name, policy: policy.name })
      .find((p) => p.id !== rp.id && p.consistentAt <= rp.consistentAt && liveTier(p, exporter.tierKind));
    if (prevRp) {
      const prevLocal = liveTier(prevRp, 'local');
      previous = {
        restorePoint: prevRp,
        tier: liveTier(prevRp, exporter.tierKind)!,
        snapshots: prevLocal ? await snaps(prevLocal, false) : {},
      };
    }
    const started = engine.clock.now().getTime();
    const res = await ctx.phase('export', () =>
      exporter.export({
        app,
        policy,
        restorePoint: rp,
        platform,
        snapshots,
        ...(previous ? { previous } : {}),
        locationProfile: (name) => Promise.resolve(engine.locationProfile(name)),
        clock: engine.clock,
        signal: ctx.signal,
        onProgress: (p) =>
          ctx.progress({
            bytesRead: p.bytesRead,
            bytesTransferred: p.bytesTransferred,
            ...(p.bytesTotal ? { progress: p.bytesRead / p.bytesTotal } : {}),
          }),
      }),
    );
    throwIfAborted(ctx.signal);
    ctx.progress({ bytesRead: res.bytesRead, bytesTransferred: res.bytesTransferred, progress: 1 });
    const fresh = catalog.getRestorePoint(rp.id);
    fresh.tiers.push(res.tier);
    fresh.exportCompletedAt = engine.clock.now().toISOString();
    catalog.updateRestorePoint(fresh);
    ctx.update({
      params: { incremental: res.incremental, exportMs: engine.clock.now().getTime() - started },
    });
    return next;
  };

  const retention: ActionHandler = async (ctx) => {
    const policy = policyOf(engine, ctx.action.policy);
    const app = catalog.getApp(policy.app);
    const platform = await engine.platformFor(app.infraProfile);
    const vols = await appVolumes(platform, app, true);
    const now = () => engine.clock.now().toISOString();
    const points = catalog.listRestorePoints({ app: app.name, policy: policy.name });
    const removed: { local: string[]; export: string[] } = { local: [], export: [] };

    await ctx.phase('local retention', async () => {
      const live = points.filter((p) => liveTier(p, 'local'));
      const d = selectRetention(
        live.map((p) => ({ id: p.id, time: p.consistentAt, p })),
        policy.retention,
      );
      for (const { p } of d.remove) {
        throwIfAborted(ctx.signal);
        const t = liveTier(p, 'local')!;
        for (const [name, id] of Object.entries(t.snapshots)) {
          const vol = vols.get(name);
          const s = vol ? await findSnapshot(platform, vol, id) : undefined;
          if (s) await platform.deleteSnapshot(s, { signal: ctx.signal });
        }
        t.expiredAt = now();
        catalog.updateRestorePoint(p);
        removed.local.push(p.id);
      }
    });

    if (policy.export) {
      const exporter = engine.exporter(policy.export.mode);
      await ctx.phase('export retention', async () => {
        const fresh = catalog.listRestorePoints({ app: app.name, policy: policy.name });
        const live = fresh.filter((p) => liveTier(p, exporter.tierKind));
        const d = selectRetention(
          live.map((p) => ({ id: p.id, time: p.consistentAt, p })),
          policy.exportRetention ?? policy.retention,
        );
        if (d.remove.length === 0) return;
        const tiers = d.remove.map(({ p }) => liveTier(p, exporter.tierKind)!);
        await exporter.expire(
          {
            app,
            platform,
            locationProfile: (name) => Promise.resolve(engine.locationProfile(name)),
            clock: engine.clock,
            signal: ctx.signal,
          },
          tiers,
        );
        for (const { p } of d.remove) {
          liveTier(p, exporter.tierKind)!.expiredAt = now();
          catalog.updateRestorePoint(p);
          removed.export.push(p.id);
        }
      });
    }
    ctx.update({ params: { expiredLocal: removed.local.length, expiredExport: removed.export.length } });
  };

  const restore: ActionHandler = async (ctx) => {
    const plan = ctx.action.params['plan'] as RestorePlan;
    const rp = catalog.getRestorePoint(plan.restorePoint);
    const app = catalog.getApp(plan.app);
    const platform = await engine.platformFor(app.infraProfile);
    const retry = ctx.action.attempt > 1;
    let done = 0;
    const total = plan.totalBytes || 1;
    for (const v of plan.volumes) {
      throwIfAborted(ctx.signal);
      await ctx.phase(`restore ${v.volume}`, async () => {
        if (plan.source === 'snapshot') {
          const vols = await appVolumes(platform, app, true);
          const vol = vols.get(v.volume);
          const s = vol ? await findSnapshot(platform, vol, v.from) : undefined;
          if (!s) throw new NotFoundError(`local snapshot ${v.from} of volume "${v.volume}" is gone`);
          await platform.restoreVolume(
            s,
            { name: v.to, region: v.region, overwrite: v.overwrite || retry },
            { signal: ctx.signal },
          );
        } else {
          const tier = liveTier(rp, 'repository');
          if (!tier) throw new NotFoundError(`restore point ${rp.id} has no repository copy`);
          const hp = hostPaths(platform);
          if (!hp) throw new InputError(`platform ${platform.provider} cannot receive a streamed restore`);
          const target = hp.volumeDataPath({
            id: `${v.region}/${v.to}`,
            region: v.region,
            name: v.to,
            sizeBytes: 0,
            kind: 'block',
          });
          await restoreFromRepository(
            engine.locationProfile(tier.locationProfile),
            tier.repositoryPath,
            v.from,
            target,
            engine.clock,
            {
              signal: ctx.signal,
              overwrite: true,
              onProgress: (p) =>
                ctx.progress({ bytesRead: done + p.bytesRead, progress: (done + p.bytesRead) / total }),
            },
          );
        }
      });
      done += v.sizeBytes;
      ctx.progress({ bytesRead: done, progress: done / total });
    }
    if (!plan.inPlace && !catalog.hasApp(plan.targetApp)) {
      catalog.insertApp(
        {
          ...app,
          name: plan.targetApp,
          volumes: plan.volumes.map((v) => ({ name: v.volume, ref: v.to, sizeBytes: v.sizeBytes })),
          labels: { ...app.labels, 'tern.restored-from': rp.id },
        },
        engine.clock.now().toISOString(),
      );
    }
  };

  return { backup, export: exportH, retention, restore };
}

/** Resolves a restore request into a plan; throws (changing nothing) when it cannot be carried out. */
export async function planRestore(engine: Engine, req: RestoreRequest): Promise<RestorePlan> {
  const { catalog } = engine;
  const rp = catalog.getRestorePoint(req.restorePoint);
  const app = catalog.getApp(rp.app);
  const local = liveTier(rp, 'local');
  const repo = liveTier(rp, 'repository');
  const want = req.source ?? 'auto';
  if (!['auto', 'snapshot', 'repository'].includes(want))
    throw new InputError(`source must be snapshot, repository or auto (got "${want}")`);
  let source: 'snapshot' | 'repository';
  if (want === 'snapshot' || (want === 'auto' && local)) {
    if (!local)
      throw new NotFoundError(`restore point ${rp.id} has no local snapshots left (use the repository)`);
    source = 'snapshot';
  } else {
    if (!repo) throw new NotFoundError(`restore point ${rp.id} has no repository copy`);
    source = 'repository';
  }
  const tier = source === 'snapshot' ? local! : repo!;
  const names = req.volumes?.length ? req.volumes : Object.keys(tier.snapshots);
  for (const n of names)
    if (!tier.snapshots[n])
      throw new InputError(
        `restore point ${rp.id} has no volume "${n}" (it has: ${Object.keys(tier.snapshots).join(', ')})`,
      );
  const platform = await engine.platformFor(app.infraProfile);
  const inPlace = req.targetApp === undefined || req.targetApp === app.name;
  const targetApp = req.targetApp ?? app.name;
  const existing = await platform.listVolumes(app.region);
  if (!inPlace && catalog.hasApp(targetApp))
    throw new ConflictError(`application "${targetApp}" already exists`);

  const sizes = new Map<string, number>();
  if (source === 'snapshot') {
    const vols = await appVolumes(platform, app, true);
    for (const n of names) {
      const vol = vols.get(n);
      const s = vol ? await findSnapshot(platform, vol, tier.snapshots[n]!) : undefined;
      if (!s) throw new NotFoundError(`local snapshot ${tier.snapshots[n]} of volume "${n}" is gone`);
      sizes.set(n, s.sizeBytes);
    }
  } else {
    const t = tier as Extract<Tier, { kind: 'repository' }>;
    const { repo: r, store } = await openRepository(
      engine.locationProfile(t.locationProfile),
      t.repositoryPath,
      engine.clock,
      false,
    );
    try {
      for (const n of names) {
        const m = await r.loadSnapshotById(tier.snapshots[n]!);
        sizes.set(n, m.root.kind === 'image' ? m.root.size : m.summary.bytesRead);
      }
    } finally {
      await r.close();
      await store.close?.();
    }
  }

  const volumes = names.map((n) => {
    const appVol = app.volumes.find((v) => v.name === n);
    const to = inPlace ? (appVol?.ref ?? n) : `${targetApp}-${n}`;
    const exists = existing.some((x) => x.name === to || x.id === to);
    if (!inPlace && exists)
      throw new ConflictError(`volume "${to}" already exists in region "${app.region}"`);
    return {
      volume: n,
      from: tier.snapshots[n]!,
      to,
      region: app.region,
      sizeBytes: sizes.get(n) ?? 0,
      overwrite: exists,
    };
  });
  return {
    restorePoint: rp.id,
    app: app.name,
    targetApp,
    inPlace,
    source,
    consistentAt: rp.consistentAt,
    volumes,
    totalBytes: volumes.reduce((n, v) => n + v.sizeBytes, 0),
  };
}
