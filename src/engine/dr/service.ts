/**
 * The DR facade a server or CLI calls: at the source, export details for an engine policy; at the DR site,
 * import, restore and the DR report. Holds the site's state directory and import secret; thin over the
 * functions of this folder.
 */
import path from 'node:path';
import type { Clock, RunOptions } from '../../core/index.ts';
import type { z } from 'zod';
import { systemClock } from '../../core/index.ts';
import type { Platform } from '../../platforms/index.ts';
import { openStore } from '../../storage/index.ts';
import type { StoreOptions } from '../../storage/index.ts';
import type { Engine } from '../engine.ts';
import type { ActionContext, NewAction } from '../runner.ts';
import { publishExportDetails } from './engine-publish.ts';
import type { PublishResult } from './engine-publish.ts';
import { importRestorePoints } from './import.ts';
import type { ImportOptions, ImportResult } from './import.ts';
import { listRecords, recordKey } from './records.ts';
import { drReport } from './report.ts';
import type { AppReport } from './report.ts';
import { restoreAtDr } from './restore.ts';
import type { RestoreOptions, RestoreResult } from './restore.ts';
import {
  ConflictError,
  describeError,
  frequencyToCron,
  InputError,
  NotFoundError,
  parseInput,
} from '../../core/index.ts';
import { latestDue } from '../scheduler.ts';
import { readStreamDetails } from './token.ts';
import { DrStateStore, ImportPolicySchema } from './state.ts';
import type { ImportPolicy, ImportStream } from './state.ts';
import type { RestorePointRecord } from './types.ts';

export interface DrServiceOptions {
  site: string;
  /** Directory of the site's DR manifest (and export details files). */
  stateDir: string;
  importSecret: string;
  /** The source side's engine, for export details of its policies. */
  engine?: Engine;
  /** The DR site's platform (default: opened from each stream's export details). */
  platform?: Platform;
  /**
   * Store options (endpoint, credentials) of one of this site's location profiles, by name: how the DR site
   * reads s3:// or azblob:// export locations (tokens never carry credentials). The server resolves them
   * from its catalog; throws NotFoundError for an unknown profile.
   */
  storeOptionsFor?: (locationProfile: string) => StoreOptions;
  clock?: Clock;
  /**
   * Records imports and restores as actions (the server passes its engine's `runner.track`): they show in
   * `tern actions` and the event stream. Without it they run unrecorded (CLI without a server).
   */
  track?: <T>(spec: NewAction, fn: (ctx: ActionContext) => Promise<T>, signal?: AbortSignal) => Promise<T>;
}

/** Core progress → action counters. */
function progressTo(ctx: ActionContext): RunOptions['onProgress'] {
  return (p) =>
    ctx.progress({
      bytesRead: p.bytesRead,
      bytesTransferred: p.bytesTransferred,
      ...(p.bytesTotal ? { progress: Math.min(1, p.bytesRead / p.bytesTotal) } : {}),
    });
}

export class DrService {
  readonly state: DrStateStore;
  private readonly o: DrServiceOptions;

  constructor(o: DrServiceOptions) {
    this.o = o;
    this.state = new DrStateStore(o.stateDir, o.site);
  }

  /** Source: publish records and issue export details for an engine policy. */
  exportDetails(policy: string, opts: RunOptions & { records?: string } = {}): Promise<PublishResult> {
    if (!this.o.engine) throw new Error('DrService.exportDetails needs the engine');
    return publishExportDetails(this.o.engine, {
      ...opts,
      site: this.o.site,
      policy,
      importSecret: this.o.importSecret,
      detailsDir: path.join(this.o.stateDir, 'export-details'),
    });
  }

  /** Store options for a location profile of this site (undefined: none named, the store reads its env). */
  storeOptions(locationProfile: string | undefined): StoreOptions | undefined {
    if (!locationProfile) return undefined;
    if (!this.o.storeOptionsFor)
      throw new InputError(
        `location profile "${locationProfile}" given, but this DR site has no catalog of profiles (run it in "tern server" or use AWS_*/AZURE_STORAGE_* env)`,
      );
    return this.o.storeOptionsFor(locationProfile);
  }

  private streamStoreOptions(stream: ImportStream): StoreOptions | undefined {
    return this.storeOptions(stream.locationProfile);
  }

  /** DR site: import every new restore point named by the token's stream (an `import` action when tracked). */
  import(
    token: string,
    opts: Omit<ImportOptions, 'state' | 'token' | 'importSecret'> & { policy?: string } = {},
  ): Promise<ImportResult> {
    const { policy, ...rest } = opts;
    const run = (o: typeof rest): Promise<ImportResult> => {
      const storeOptions = o.storeOptions ?? this.storeOptions(o.locationProfile);
      return importRestorePoints({
        ...o,
        ...(storeOptions ? { storeOptions } : {}),
        state: this.state,
        token,
        importSecret: this.o.importSecret,
        ...(this.o.platform && !o.platform ? { platform: this.o.platform } : {}),
        clock: o.clock ?? this.o.clock ?? systemClock,
      });
    };
    if (!this.o.track) return run(rest);
    let stream: { id: string; app: string } | undefined;
    try {
      const d = readStreamDetails(token, this.o.importSecret);
      stream = { id: d.stream.id, app: d.payload.source.app };
    } catch {
      // A bad token fails inside the import, recorded on the action.
    }
    return this.o.track(
      {
        type: 'import',
        ...(stream ? { app: stream.app } : {}),
        ...(policy ? { policy } : {}),
        params: { ...(stream ? { stream: stream.id } : {}), site: this.o.site },
      },
      async (ctx) => {
        const r = await ctx.phase('import', () =>
          run({ ...rest, signal: ctx.signal, onProgress: progressTo(ctx) }),
        );
        ctx.update({
          ...(r.imported.length ? { restorePoint: r.imported.at(-1) } : {}),
          params: {
            stream: r.stream,
            imported: r.imported.length,
            alreadyImported: r.alreadyImported,
            missing: r.missing.length,
            rejected: r.rejected.length,
            forgotten: r.forgotten.length,
            ...(r.standby ? { standby: r.standby.restorePoint } : {}),
          },
        });
        return r;
      },
      rest.signal,
    );
  }

  /** DR site: restore an app from an imported restore point (a `restore` action when tracked). */
  restore(
    app: string,
    opts: Omit<RestoreOptions, 'state' | 'app' | 'importSecret'> = {},
  ): Promise<RestoreResult> {
    const run = (o: typeof opts): Promise<RestoreResult> =>
      restoreAtDr({
        storeOptions: (stream) => this.streamStoreOptions(stream),
        ...o,
        state: this.state,
        app,
        importSecret: this.o.importSecret,
        ...(this.o.platform && !o.platform ? { platform: this.o.platform } : {}),
        clock: o.clock ?? this.o.clock ?? systemClock,
      });
    if (!this.o.track) return run(opts);
    return this.o.track(
      {
        type: 'restore',
        app,
        ...(opts.restorePoint ? { restorePoint: opts.restorePoint } : {}),
        params: {
          dr: true,
          site: this.o.site,
          path: opts.path ?? 'auto',
          ...(opts.region ? { region: opts.region } : {}),
        },
      },
      async (ctx) => {
        const r = await ctx.phase('restore', () =>
          run({ ...opts, signal: ctx.signal, onProgress: progressTo(ctx) }),
        );
        ctx.progress({ bytesTransferred: r.bytesTransferred });
        ctx.update({
          restorePoint: r.restorePoint,
          params: {
            stream: r.stream,
            path: r.path,
            durationMs: r.durationMs,
            volumes: r.volumes.map((v) => ({ volume: v.volume, restoredAs: v.restoredAs, region: v.region })),
          },
        });
        return r;
      },
      opts.signal,
    );
  }

  // ---- import policies: scheduled imports (catch-up, retention, warm standby) ----

  async createImportPolicy(input: z.input<typeof ImportPolicySchema>): Promise<ImportPolicy> {
    const p = parseInput(ImportPolicySchema, input, 'import policy');
    readStreamDetails(p.token, this.o.importSecret); // rejects a bad token before it is stored
    this.storeOptions(p.locationProfile); // and an unknown location profile
    return this.state.update((s) => {
      if (s.policies[p.name]) throw new ConflictError(`import policy "${p.name}" exists`);
      s.policies[p.name] = p;
      return p;
    });
  }

  async listImportPolicies(): Promise<ImportPolicy[]> {
    return Object.values((await this.state.read()).policies);
  }

  async deleteImportPolicy(name: string): Promise<void> {
    await this.state.update((s) => {
      if (!s.policies[name]) throw new NotFoundError(`no import policy "${name}"`);
      delete s.policies[name];
    });
  }

  /** Run one import policy now (also when paused). */
  async runImportPolicy(name: string, opts: RunOptions = {}): Promise<ImportResult> {
    const p = (await this.state.read()).policies[name];
    if (!p) throw new NotFoundError(`no import policy "${name}"`);
    const at = (this.o.clock ?? systemClock).now().toISOString();
    try {
      const r = await this.import(p.token, {
        ...opts,
        policy: p.name,
        ...(p.keepLast ? { keepLast: p.keepLast } : {}),
        ...(p.locationProfile ? { locationProfile: p.locationProfile } : {}),
        restoreAfterImport: p.restoreAfterImport,
        ...(p.standby
          ? {
              restore: {
                ...(p.standby.region ? { region: p.standby.region } : {}),
                ...(p.standby.prefix ? { nameFor: (v: string) => `${p.standby?.prefix ?? ''}${v}` } : {}),
              },
            }
          : {}),
      });
      await this.recordRun(name, { at, imported: r.imported.length });
      return r;
    } catch (err) {
      await this.recordRun(name, { at, imported: 0, error: describeError(err) });
      throw err;
    }
  }

  private async recordRun(name: string, result: NonNullable<ImportPolicy['lastResult']>): Promise<void> {
    await this.state.update((s) => {
      const cur = s.policies[name];
      if (!cur) return;
      cur.lastRunAt = result.at;
      cur.lastResult = result;
    });
  }

  /**
   * Run every unpaused import policy that is due: never run, or a scheduled time passed since its last run.
   * Missed times make one run (an import catches up on every restore point anyway). Errors are recorded on the
   * policy and reported, not thrown.
   */
  async tick(opts: RunOptions = {}): Promise<{ policy: string; result?: ImportResult; error?: string }[]> {
    const now = (this.o.clock ?? systemClock).now();
    const out: { policy: string; result?: ImportResult; error?: string }[] = [];
    for (const p of await this.listImportPolicies()) {
      if (p.paused) continue;
      const due =
        !p.lastRunAt || latestDue(frequencyToCron(p.frequency), new Date(p.lastRunAt), now) !== undefined;
      if (!due) continue;
      try {
        out.push({ policy: p.name, result: await this.runImportPolicy(p.name, opts) });
      } catch (err) {
        out.push({ policy: p.name, error: describeError(err) });
      }
    }
    return out;
  }

  /**
   * Per app and path: achieved RPO (now − the newest importable restore point, counting records already at
   * the export locations but not imported yet), export durations, RTO, 3-2-1.
   */
  async report(opts: RunOptions & { refresh?: boolean } = {}): Promise<AppReport[]> {
    const st = await this.state.read();
    const importable: Record<string, RestorePointRecord[]> = {};
    if (opts.refresh !== false)
      for (const s of Object.values(st.imports)) {
        const known = new Set([...s.restorePoints.map((r) => r.id), ...s.forgotten]);
        try {
          const store = await openStore(s.records, this.streamStoreOptions(s));
          try {
            const { records } = await listRecords(store, s.id, recordKey(this.o.importSecret, s.id), opts);
            importable[s.id] = records.filter((r) => !known.has(r.id));
          } finally {
            await store.close?.();
          }
        } catch {
          // The export location is unreachable: the report stands on what was imported.
        }
      }
    return drReport(st, { clock: this.o.clock ?? systemClock, importable });
  }
}
