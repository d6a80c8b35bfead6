/**
 * The API routes. Each one maps HTTP to one TernService call and nothing more: validate the body or query
 * with a schema, call, return. Errors propagate to http.ts, which turns them into statuses in one place.
 */
import {
  ApplicationSchema,
  InputError,
  parseInput,
  PolicySchema,
  ProfileSchema,
  type ActionRun,
} from '../core/index.ts';
import type { TernService } from '../engine/service.ts';
import { API } from './constants.ts';
import { renderMetrics, type DrMetrics } from './metrics.ts';
import { buildOpenApi } from './openapi.ts';
import type { RequestContext, Router, RouteSpec } from './router.ts';
import {
  ActionQuerySchema,
  PolicyPatchSchema,
  RestorePointQuerySchema,
  RestoreRequestSchema,
} from './schemas.ts';

export interface RouteDeps {
  service: TernService;
  openStream: (ctx: RequestContext) => {
    send: (event: string, data: unknown) => void;
    closed: Promise<void>;
  };
  version: string;
  /** DR families for /metrics, when the server runs DR at its site. */
  drMetrics?: (signal: AbortSignal) => Promise<DrMetrics>;
}

function queryObject(q: URLSearchParams): Record<string, string> {
  return Object.fromEntries(q.entries());
}

export function registerRoutes(router: Router, deps: RouteDeps): void {
  const { service } = deps;
  const add = (r: RouteSpec): void => void router.add(r);
  const name = (ctx: RequestContext): string => ctx.params.name ?? '';

  // ----- meta -----
  add({
    method: 'GET',
    path: '/healthz',
    public: true,
    doc: { summary: 'liveness', tag: 'meta', responses: { 200: { mediaType: 'application/json' } } },
    handler: () => Promise.resolve({ status: 200, body: { ok: true, version: deps.version } }),
  });
  add({
    method: 'GET',
    path: '/openapi.json',
    public: true,
    doc: {
      summary: 'this API as OpenAPI 3.1',
      tag: 'meta',
      responses: { 200: { mediaType: 'application/json' } },
    },
    handler: () => Promise.resolve({ status: 200, body: buildOpenApi(router.list(), deps.version) }),
  });
  add({
    method: 'GET',
    path: '/metrics',
    doc: {
      summary: 'Prometheus metrics (text exposition format 0.0.4)',
      tag: 'meta',
      responses: { 200: { mediaType: 'text/plain; version=0.0.4' } },
    },
    handler: async (ctx) => ({
      status: 200,
      body: renderMetrics(await service.metrics(), await deps.drMetrics?.(ctx.signal)),
      headers: { 'content-type': 'text/plain; version=0.0.4; charset=utf-8' },
    }),
  });

  // ----- applications -----
  add({
    method: 'GET',
    path: `${API}/apps`,
    doc: { summary: 'list applications', tag: 'apps', responses: { 200: ['Application'] } },
    handler: async () => ({ status: 200, body: await service.listApps() }),
  });
  add({
    method: 'POST',
    path: `${API}/apps`,
    doc: {
      summary: 'register an application',
      tag: 'apps',
      body: 'ApplicationInput',
      responses: { 201: 'Application' },
    },
    handler: async (ctx) => ({
      status: 201,
      body: await service.createApp(parseInput(ApplicationSchema, ctx.body, 'application')),
    }),
  });
  add({
    method: 'GET',
    path: `${API}/apps/:name`,
    doc: { summary: 'one application', tag: 'apps', responses: { 200: 'Application' } },
    handler: async (ctx) => ({ status: 200, body: await service.getApp(name(ctx)) }),
  });
  add({
    method: 'DELETE',
    path: `${API}/apps/:name`,
    doc: {
      summary: 'remove an application (409 while a policy names it)',
      tag: 'apps',
      responses: { 204: 'none' },
    },
    handler: async (ctx) => {
      await service.deleteApp(name(ctx));
      return { status: 204 };
    },
  });

  // ----- profiles -----
  add({
    method: 'GET',
    path: `${API}/profiles`,
    doc: {
      summary: 'list profiles (secret names only)',
      tag: 'profiles',
      query: { kind: 'location | infra' },
      responses: { 200: ['Profile'] },
    },
    handler: async (ctx) => {
      const kind = ctx.query.get('kind') ?? undefined;
      if (kind !== undefined && kind !== 'location' && kind !== 'infra')
        throw new InputError('kind must be location or infra', {
          details: { fields: [{ path: 'kind', message: 'must be location or infra' }] },
        });
      return { status: 200, body: await service.listProfiles(kind) };
    },
  });
  add({
    method: 'POST',
    path: `${API}/profiles`,
    doc: {
      summary: 'create a location or infra profile (checked before it is stored)',
      tag: 'profiles',
      body: 'ProfileInput',
      responses: { 201: 'Profile' },
    },
    handler: async (ctx) => ({
      status: 201,
      body: await service.createProfile(parseInput(ProfileSchema, ctx.body, 'profile'), {
        signal: ctx.signal,
      }),
    }),
  });
  add({
    method: 'GET',
    path: `${API}/profiles/:name`,
    doc: { summary: 'one profile (secret names only)', tag: 'profiles', responses: { 200: 'Profile' } },
    handler: async (ctx) => ({ status: 200, body: await service.getProfile(name(ctx)) }),
  });
  add({
    method: 'DELETE',
    path: `${API}/profiles/:name`,
    doc: { summary: 'delete a profile (409 while in use)', tag: 'profiles', responses: { 204: 'none' } },
    handler: async (ctx) => {
      await service.deleteProfile(name(ctx));
      return { status: 204 };
    },
  });

  // ----- policies -----
  add({
    method: 'GET',
    path: `${API}/policies`,
    doc: {
      summary: 'list policies',
      tag: 'policies',
      query: { app: 'application name' },
      responses: { 200: ['Policy'] },
    },
    handler: async (ctx) => ({
      status: 200,
      body: await service.listPolicies({ app: ctx.query.get('app') ?? undefined }),
    }),
  });
  add({
    method: 'POST',
    path: `${API}/policies`,
    doc: { summary: 'create a policy', tag: 'policies', body: 'PolicyInput', responses: { 201: 'Policy' } },
    handler: async (ctx) => ({
      status: 201,
      body: await service.createPolicy(parseInput(PolicySchema, ctx.body, 'policy')),
    }),
  });
  add({
    method: 'GET',
    path: `${API}/policies/:name`,
    doc: { summary: 'one policy with its schedule', tag: 'policies', responses: { 200: 'Policy' } },
    handler: async (ctx) => ({ status: 200, body: await service.getPolicy(name(ctx)) }),
  });
  add({
    method: 'PATCH',
    path: `${API}/policies/:name`,
    doc: {
      summary: 'change fields of a policy',
      tag: 'policies',
      body: 'PolicyPatch',
      responses: { 200: 'Policy' },
    },
    handler: async (ctx) => ({
      status: 200,
      body: await service.updatePolicy(
        name(ctx),
        parseInput(PolicyPatchSchema, ctx.body ?? {}, 'policy patch'),
      ),
    }),
  });
  add({
    method: 'DELETE',
    path: `${API}/policies/:name`,
    doc: { summary: 'delete a policy (restore points stay)', tag: 'policies', responses: { 204: 'none' } },
    handler: async (ctx) => {
      await service.deletePolicy(name(ctx));
      return { status: 204 };
    },
  });
  add({
    method: 'POST',
    path: `${API}/policies/:name/pause`,
    doc: { summary: 'pause scheduled runs', tag: 'policies', responses: { 200: 'Policy' } },
    handler: async (ctx) => ({ status: 200, body: await service.pausePolicy(name(ctx)) }),
  });
  add({
    method: 'POST',
    path: `${API}/policies/:name/resume`,
    doc: { summary: 'resume scheduled runs', tag: 'policies', responses: { 200: 'Policy' } },
    handler: async (ctx) => ({ status: 200, body: await service.resumePolicy(name(ctx)) }),
  });
  add({
    method: 'POST',
    path: `${API}/policies/:name/run`,
    doc: {
      summary: 'run a policy now (backup → export → retention); follow the returned action',
      tag: 'policies',
      responses: { 202: 'RunResult' },
    },
    handler: async (ctx) => {
      const { actionId } = await service.runPolicy(name(ctx));
      return { status: 202, body: { actionId, action: await service.getAction(actionId) } };
    },
  });

  // ----- restore points and restore -----
  add({
    method: 'GET',
    path: `${API}/restorepoints`,
    doc: {
      summary: 'list restore points, newest first',
      tag: 'restore',
      query: {
        app: 'application',
        policy: 'policy',
        tier: 'local | repository | region-copy',
        includeExpired: 'true',
      },
      responses: { 200: ['RestorePoint'] },
    },
    handler: async (ctx) => {
      const q = parseInput(RestorePointQuerySchema, queryObject(ctx.query), 'query');
      return {
        status: 200,
        body: await service.listRestorePoints({ ...q, includeExpired: q.includeExpired === 'true' }),
      };
    },
  });
  add({
    method: 'GET',
    path: `${API}/restorepoints/:id`,
    doc: { summary: 'one restore point', tag: 'restore', responses: { 200: 'RestorePoint' } },
    handler: async (ctx) => ({ status: 200, body: await service.getRestorePoint(ctx.params.id ?? '') }),
  });
  add({
    method: 'POST',
    path: `${API}/restores`,
    doc: {
      summary: 'restore a restore point (dryRun: only the plan); 202 with the action',
      tag: 'restore',
      body: 'RestoreRequest',
      responses: { 200: 'RestoreResult', 202: 'RestoreResult' },
    },
    handler: async (ctx) => {
      const req = parseInput(RestoreRequestSchema, ctx.body, 'restore request');
      const result = await service.restore(req);
      if (!result.actionId) return { status: 200, body: result };
      return { status: 202, body: { ...result, action: await service.getAction(result.actionId) } };
    },
  });

  // ----- actions -----
  add({
    method: 'GET',
    path: `${API}/actions`,
    doc: {
      summary: 'list action runs, newest first',
      tag: 'actions',
      query: {
        app: 'application',
        policy: 'policy',
        type: 'action type',
        state: 'action state',
        run: 'policy run id',
        limit: 'max rows',
      },
      responses: { 200: ['ActionRun'] },
    },
    handler: async (ctx) => ({
      status: 200,
      body: await service.listActions(parseInput(ActionQuerySchema, queryObject(ctx.query), 'query')),
    }),
  });
  add({
    method: 'GET',
    path: `${API}/actions/events`,
    doc: {
      summary: 'server-sent events: one "action" event (an ActionRun) per change; same filters as the list',
      tag: 'actions',
      query: { app: 'application', policy: 'policy', type: 'action type', state: 'action state' },
      responses: { 200: { mediaType: 'text/event-stream' } },
    },
    handler: async (ctx) => {
      const f = parseInput(ActionQuerySchema, queryObject(ctx.query), 'query');
      const matches = (a: ActionRun): boolean =>
        (!f.app || a.app === f.app) &&
        (!f.policy || a.policy === f.policy) &&
        (!f.type || a.type === f.type) &&
        (!f.state || a.state === f.state) &&
        (!f.run || a.id === f.run || a.params.run === f.run);
      const stream = deps.openStream(ctx);
      const unsubscribe = service.subscribe((e) => {
        if (matches(e.action)) stream.send('action', e.action);
      });
      await stream.closed;
      unsubscribe();
      return undefined;
    },
  });
  add({
    method: 'GET',
    path: `${API}/actions/:id`,
    doc: { summary: 'one action run', tag: 'actions', responses: { 200: 'ActionRun' } },
    handler: async (ctx) => ({ status: 200, body: await service.getAction(ctx.params.id ?? '') }),
  });
  add({
    method: 'POST',
    path: `${API}/actions/:id/cancel`,
    doc: {
      summary: 'cancel an action (it reaches Cancelled shortly after)',
      tag: 'actions',
      responses: { 202: 'ActionRun' },
    },
    handler: async (ctx) => ({ status: 202, body: await service.cancelAction(ctx.params.id ?? '') }),
  });
}
