/** The HTTP layer's pure parts: error → status mapping (one place), router matching, token handling, metrics text. */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import {
  AuthError,
  CancelledError,
  ConflictError,
  ForbiddenError,
  InputError,
  IntegrityError,
  LockedError,
  NoSpaceError,
  NotFoundError,
  StorageError,
  TernError,
  exitCodeFor,
} from '../../src/core/index.ts';
import { checkBearer, loadOrCreateToken } from '../../src/server/auth.ts';
import { codeForStatus, httpError } from '../../src/server/errors.ts';
import { renderMetrics } from '../../src/server/metrics.ts';
import { Router } from '../../src/server/router.ts';

test('typed errors map to statuses in one place; the CLI maps them back to the same exit codes', () => {
  const cases: [Error, number][] = [
    [new InputError('bad', { details: { fields: [{ path: 'x', message: 'y' }] } }), 400],
    [new AuthError('no'), 401],
    [new ForbiddenError('no'), 403],
    [new NotFoundError('no'), 404],
    [new ConflictError('dup'), 409],
    [new IntegrityError('tag'), 422],
    [new LockedError('locked'), 423],
    [new CancelledError(), 499],
    [new NoSpaceError('full'), 507],
  ];
  for (const [err, status] of cases) {
    const h = httpError(err);
    assert.equal(h.status, status, err.name);
    assert.equal(h.body.error.message, err.message);
    const back = new TernError(codeForStatus(h.status, h.body.error.code), h.body.error.message);
    assert.equal(exitCodeFor(back), exitCodeFor(err), `exit code round trip for ${err.name}`);
  }
  assert.deepEqual(httpError(cases[0]?.[0]).body.error.details, { fields: [{ path: 'x', message: 'y' }] });
});

test('anything else is a 500 without internals; storage errors do not leak their message', () => {
  const secret = 'AccountKey=c2VjcmV0c2VjcmV0';
  for (const err of [new Error(`boom ${secret}`), new TypeError(`x ${secret}`), 'a string', undefined]) {
    const h = httpError(err);
    assert.equal(h.status, 500);
    assert.deepEqual(h.body, { error: { code: 'INTERNAL', message: 'internal error' } });
  }
  const s = httpError(new StorageError(`GET https://acct.blob.core.windows.net/c?sig=${secret} failed`));
  assert.equal(s.status, 502);
  assert.ok(!JSON.stringify(s.body).includes(secret));
  const nospace = httpError(Object.assign(new Error(`ENOSPC ${secret}`), { code: 'ENOSPC' }));
  assert.equal(nospace.status, 507);
  assert.ok(!JSON.stringify(nospace.body).includes(secret));
});

test('router: static segments win over parameters; 405 lists the allowed methods', async () => {
  const r = new Router();
  const h = (): Promise<undefined> => Promise.resolve(undefined);
  const doc = { summary: '', tag: 't', responses: {} };
  r.add({ method: 'GET', path: '/v1/actions/:id', doc, handler: h });
  r.add({ method: 'GET', path: '/v1/actions/events', doc, handler: h });
  r.add({ method: 'POST', path: '/v1/actions/:id/cancel', doc, handler: h });
  const m = r.match('GET', '/v1/actions/events');
  assert.ok(m && 'route' in m && m.route.path === '/v1/actions/events');
  const p = r.match('GET', '/v1/actions/a%2Fb');
  assert.ok(p && 'params' in p);
  assert.equal(p.params.id, 'a/b');
  assert.deepEqual(r.match('DELETE', '/v1/actions/x'), { allowed: ['GET'] });
  assert.equal(r.match('GET', '/v1/nothing'), undefined);
  await Promise.resolve();
});

test('token: generated 0600 once, env and file override, bearer check', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-token-'));
  try {
    const a = loadOrCreateToken({ dataDir: dir, env: {} });
    const b = loadOrCreateToken({ dataDir: dir, env: {} });
    assert.equal(a.token, b.token, 'generated once');
    assert.ok(a.token.length >= 40);
    assert.equal(fs.statSync(path.join(dir, 'api-token')).mode & 0o777, 0o600);
    assert.equal(
      loadOrCreateToken({ dataDir: dir, env: { TERN_API_TOKEN: 'e'.repeat(20) } }).token,
      'e'.repeat(20),
    );
    const f = path.join(dir, 'tok');
    fs.writeFileSync(f, 'f'.repeat(24) + '\n', { mode: 0o644 });
    assert.throws(
      () => loadOrCreateToken({ dataDir: dir, tokenFile: f, env: {} }),
      AuthError,
      'world-readable',
    );
    fs.chmodSync(f, 0o600);
    assert.equal(
      loadOrCreateToken({ dataDir: dir, tokenFile: f, env: { TERN_API_TOKEN: 'e'.repeat(20) } }).token,
      'f'.repeat(24),
    );
    assert.throws(() => loadOrCreateToken({ dataDir: dir, env: { TERN_API_TOKEN: 'short' } }), InputError);
    checkBearer(`Bearer ${a.token}`, a.token);
    assert.throws(() => checkBearer(undefined, a.token), AuthError);
    assert.throws(() => checkBearer(`Bearer ${a.token}x`, a.token), AuthError);
    assert.throws(() => checkBearer(`Basic ${a.token}`, a.token), AuthError);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('metrics: Prometheus text with escaped labels and the RPO gauge', () => {
  const text = renderMetrics({
    at: '2026-01-01T00:00:00.000Z',
    actions: [{ type: 'backup', state: 'Complete', count: 3 }],
    durations: [{ type: 'export', state: 'Complete', count: 2, sumSeconds: 3.5, lastSeconds: 1.25 }],
    bytes: [{ type: 'export', read: 100, transferred: 40 }],
    lastRestorePoint: [
      { app: 'we"b', tier: 'repository', consistentAt: '2026-01-01T00:00:00.000Z', ageSeconds: 90 },
    ],
    policies: { total: 2, paused: 1 },
  });
  assert.match(text, /^# TYPE tern_restore_point_age_seconds gauge$/m);
  assert.match(text, /^tern_restore_point_age_seconds\{app="we\\"b",tier="repository"\} 90$/m);
  assert.match(text, /^tern_last_success_timestamp\{app="we\\"b",tier="repository"\} 1767225600$/m);
  assert.match(text, /^tern_actions\{kind="backup",state="Complete"\} 3$/m);
  assert.match(text, /^tern_action_duration_seconds_sum\{kind="export",state="Complete"\} 3.5$/m);
  assert.match(text, /^tern_bytes_transferred_total\{kind="export"\} 40$/m);
  assert.match(text, /^tern_policies\{status="paused"\} 1$/m);
  for (const line of text.trimEnd().split('\n'))
    assert.match(
      line,
      /^(# (HELP|TYPE) \w+ .+|\w+(\{[^}]*\})? [0-9.e+-]+|\w+(\{[^}]*\})? [+-]Inf|NaN)$/,
      line,
    );
});
