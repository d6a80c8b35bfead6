/**
 * DR in `tern server`: the site's DrService (state in <data-dir>/dr), a timer that calls its `tick()` so import
 * policies poll their export locations, and the /v1/dr routes. Location profiles of this server's catalog give
 * the credentials for s3:// and azblob:// export locations. The import secret of the site comes from the
 * server's environment or a file; the one for issuing export details comes in the request body. Neither is
 * stored, logged or returned.
 */
import path from 'node:path';
import {
  describeError,
  InputError,
  NotFoundError,
  parseInput,
  systemClock,
  UnavailableError,
} from '../core/index.ts';
import type { Clock } from '../core/index.ts';
import { DrService, DrStateStore, drReport } from '../engine/dr/index.ts';
import type { ImportPolicy } from '../engine/dr/index.ts';
import { readStreamDetails } from '../engine/dr/index.ts';
import { storeOptions } from '../engine/datamover.ts';
import type { Engine } from '../engine/engine.ts';
import type { StoreOptions } from '../storage/index.ts';
import { API } from './constants.ts';
import {
  DrRestoreRequestSchema,
  ExportDetailsQuerySchema,
  ExportDetailsRequestSchema,
  ImportPolicyInputSchema,
  ImportRequestSchema,
} from './dr-schemas.ts';
import type { DrMetrics } from './metrics.ts';
import type { RequestContext, Router, RouteSpec } from './router.ts';

export interface DrRuntimeOptions {
  /** This site's name (part of the stream ids of the export details it issues). */
  site: string;
  /** DR state directory (dr-site.json, export details files). */
  stateDir: string;
  /** Import secret of this DR site (import policies, imports, restores). Without it those routes answer 503. */
  importSecret?: string;
  engine: Engine;
  /** Interval between import-policy ticks (ms); 0 disables the timer. */
  intervalMs: number;
  clock?: Clock;
  log?: (line: string) => void;
}

export class DrRuntime {
  readonly site: string;
  readonly state: DrStateStore;
  readonly service: DrService | undefined;
  private readonly o: DrRuntimeOptions;
  private readonly clock: Clock;
  private readonly stopping = new AbortController();
  private loop: Promise<void> | undefined;
  /** Ticks completed since start (tests and /metrics-style introspection). */
  ticks = 0;

  constructor(o: DrRuntimeOptions) {
    this.o = o;
    this.site = o.site;
    this.clock = o.clock ?? systemClock;
    this.state = new DrStateStore(o.stateDir, o.site);
    this.service = o.importSecret ? this.serviceWith(o.importSecret) : undefined;
  }

  storeOptionsFor(locationProfile: string): StoreOptions {
    return storeOptions(this.o.engine.locationProfile(locationProfile));
  }

  /** A DrService for this site under a given import secret (export details are issued per request). */
  serviceWith(importSecret: string): DrService {
    return new DrService({
      site: this.o.site,
      stateDir: this.o.stateDir,
      importSecret,
      engine: this.o.engine,
      storeOptionsFor: (name) => this.storeOptionsFor(name),
      clock: this.clock,
      track: (spec, fn, signal) => this.o.engine.runner.track(spec, fn, signal),
    });
  }

  /**
   * The site's DR report for /metrics: with the import secret, records waiting at the export locations count
   * (listing them gets at most `listMs`; past that, or unreachable, the report stands on what was imported).
   */
  async metrics(signal?: AbortSignal, listMs = 5_000): Promise<DrMetrics> {
    if (!this.service)
      return { site: this.site, report: drReport(await this.state.read(), { clock: this.clock }) };
    const timeout = AbortSignal.timeout(listMs);
    return {
      site: this.site,
      report: await this.service.report({ signal: signal ? AbortSignal.any([signal, timeout]) : timeout }),
    };
  }

  /** An import policy as shown: without its token, with the stream it imports. */
  policyView(p: ImportPolicy): Record<string, unknown> {
    const { token, ...rest } = p;
    const d = readStreamDetails(token, this.o.importSecret ?? '');
    return { ...rest, stream: d.stream.id, app: d.payload.source.app, sourceSite: d.payload.source.site };
  }

  /** The site's DrService; 503 when the server was started without an import secret. */
  requireService(): DrService {
    if (!this.service)
      throw new UnavailableError(
        'this server has no DR import secret: start it with TERN_IMPORT_SECRET or --import-secret-file',
      );
    return this.service;
  }

  /** Starts the tick loop: one tick at once (catch-up after a restart), then one per interval. */
  start(): void {
    if (!this.service || this.o.intervalMs <= 0 || this.loop) return;
    const svc = this.service;
    const signal = this.stopping.signal;
    // Clocks need not honour the signal (a test clock only wakes when advanced): race it.
    const stopped = new Promise<void>((resolve) =>
      signal.addEventListener('abort', () => resolve(), { once: true }),
    );
    this.loop = (async () => {
      while (!signal.aborted) {
        try {
          for (const r of await svc.tick({ signal }))
            this.o.log?.(
              r.error
                ? `dr import policy ${r.policy}: error: ${r.error}`
                : `dr import policy ${r.policy}: ${r.result?.imported.length ?? 0} imported`,
            );
        } catch (err) {
          if (!signal.aborted) this.o.log?.(`dr tick failed: ${describeError(err)}`);
        }
        this.ticks++;
        await Promise.race([this.clock.sleep(this.o.intervalMs, signal).catch(() => undefined), stopped]);
      }
    })();
  }

  async stop(): Promise<void> {
    this.stopping.abort(new Error('server stopping'));
    await this.loop;
  }
}

export function registerDrRoutes(router: Router, dr: DrRuntime): void {
  const add = (r: RouteSpec): void => void router.add(r);
  const name = (ctx: RequestContext): string => ctx.params.name ?? '';

  add({
    method: 'POST',
    path: `${API}/dr/export-details`,
    doc: {
      summary:
        'source site: publish restore point records of an engine policy at its export location and issue export details (the import secret goes in the body)',
      tag: 'dr',
      query: { policy: 'policy name (required)' },
      body: 'ExportDetailsRequest',
      responses: { 200: 'ExportDetailsResult' },
    },
    handler: async (ctx) => {
      const q = parseInput(ExportDetailsQuerySchema, Object.fromEntries(ctx.query.entries()), 'query');
      const b = parseInput(ExportDetailsRequestSchema, ctx.body ?? {}, 'export details request');
      const r = await dr
        .serviceWith(b.importSecret)
        .exportDetails(q.policy, { signal: ctx.signal, ...(b.records ? { records: b.records } : {}) });
      return {
        status: 200,
        body: { token: r.token, stream: r.stream, published: r.published, restorePoints: r.restorePoints },
      };
    },
  });
  add({
    method: 'GET',
    path: `${API}/dr/report`,
    doc: {
      summary:
        'DR site: per app and path the achieved RPO, export durations (first, incremental), restore time (RTO) and 3-2-1',
      tag: 'dr',
      query: { refresh: 'false: only what is imported (default: also records waiting at the locations)' },
      responses: { 200: ['DrAppReport'] },
    },
    handler: async (ctx) => {
      const refresh = ctx.query.get('refresh');
      if (refresh !== null && refresh !== 'true' && refresh !== 'false')
        throw new InputError('refresh must be true or false');
      const body = dr.service
        ? await dr.service.report({ signal: ctx.signal, refresh: refresh !== 'false' })
        : drReport(await dr.state.read());
      return { status: 200, body };
    },
  });
  add({
    method: 'GET',
    path: `${API}/dr/import-policies`,
    doc: { summary: 'DR site: list import policies', tag: 'dr', responses: { 200: ['ImportPolicy'] } },
    handler: async () => {
      const svc = dr.requireService();
      const ps = await svc.listImportPolicies();
      return { status: 200, body: ps.map((p) => dr.policyView(p)) };
    },
  });
  add({
    method: 'POST',
    path: `${API}/dr/import-policies`,
    doc: {
      summary:
        'DR site: import a stream on a schedule (the token is checked with the site import secret before it is stored)',
      tag: 'dr',
      body: 'ImportPolicyInput',
      responses: { 201: 'ImportPolicy' },
    },
    handler: async (ctx) => {
      const svc = dr.requireService();
      const input = parseInput(ImportPolicyInputSchema, ctx.body, 'import policy');
      const p = await svc.createImportPolicy({ ...input, token: input.token.trim() });
      return { status: 201, body: dr.policyView(p) };
    },
  });
  add({
    method: 'GET',
    path: `${API}/dr/import-policies/:name`,
    doc: { summary: 'DR site: one import policy', tag: 'dr', responses: { 200: 'ImportPolicy' } },
    handler: async (ctx) => {
      const svc = dr.requireService();
      const p = (await svc.listImportPolicies()).find((x) => x.name === name(ctx));
      if (!p) throw new NotFoundError(`no import policy "${name(ctx)}"`);
      return { status: 200, body: dr.policyView(p) };
    },
  });
  add({
    method: 'DELETE',
    path: `${API}/dr/import-policies/:name`,
    doc: {
      summary: 'DR site: delete an import policy (imported restore points stay)',
      tag: 'dr',
      responses: { 204: 'none' },
    },
    handler: async (ctx) => {
      await dr.requireService().deleteImportPolicy(name(ctx));
      return { status: 204 };
    },
  });
  add({
    method: 'POST',
    path: `${API}/dr/import-policies/:name/run`,
    doc: {
      summary: 'DR site: run an import policy now (also when paused); waits for the import',
      tag: 'dr',
      responses: { 200: 'ImportPolicyRun' },
    },
    handler: async (ctx) => {
      const r = await dr.requireService().runImportPolicy(name(ctx), { signal: ctx.signal });
      return { status: 200, body: { policy: name(ctx), result: r } };
    },
  });
  add({
    method: 'POST',
    path: `${API}/dr/import`,
    doc: {
      summary: 'DR site: import every new restore point named by export details, once',
      tag: 'dr',
      body: 'ImportRequest',
      responses: { 200: 'ImportResult' },
    },
    handler: async (ctx) => {
      const b = parseInput(ImportRequestSchema, ctx.body, 'import request');
      const r = await dr.requireService().import(b.token.trim(), {
        signal: ctx.signal,
        ...(b.keepLast ? { keepLast: b.keepLast } : {}),
        ...(b.locationProfile ? { locationProfile: b.locationProfile } : {}),
      });
      return { status: 200, body: r };
    },
  });
  add({
    method: 'POST',
    path: `${API}/dr/restores`,
    doc: {
      summary:
        'DR site: restore an app from its newest imported restore point (copied snapshot when present, else the repository); waits for it',
      tag: 'dr',
      body: 'DrRestoreRequest',
      responses: { 200: 'DrRestoreResult' },
    },
    handler: async (ctx) => {
      const b = parseInput(DrRestoreRequestSchema, ctx.body, 'DR restore request');
      const r = await dr.requireService().restore(b.app, {
        path: b.path,
        ...(b.restorePoint ? { restorePoint: b.restorePoint } : {}),
        ...(b.region ? { region: b.region } : {}),
        ...(b.name ? { nameFor: () => b.name ?? '' } : {}),
        ...(b.targetDir
          ? { streamTarget: (_r: string, n: string) => path.join(path.resolve(b.targetDir ?? ''), n) }
          : {}),
        overwrite: b.overwrite,
        signal: ctx.signal,
      });
      return {
        status: 200,
        body: {
          ...r,
          outputs: r.outputs.map((o) => ({ volume: o.volume, ...(o.path ? { path: o.path } : {}) })),
        },
      };
    },
  });
}
