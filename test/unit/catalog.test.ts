import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { Catalog } from '../../src/catalog/index.ts';
import { ConflictError, NotFoundError } from '../../src/core/index.ts';
import { PolicySchema, type ActionRun } from '../../src/core/model.ts';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-catalog-'));
after(() => fs.rmSync(dir, { recursive: true, force: true }));
const env = {}; // no TERN_CATALOG_KEY: the key file is used

function fresh(name: string): Catalog {
  return Catalog.open(path.join(dir, name, 'catalog.db'), { env });
}

test('migrations run once and are recorded', () => {
  const file = path.join(dir, 'mig', 'catalog.db');
  const c = Catalog.open(file, { env });
  assert.deepEqual(c.migrations(), [{ version: 1, name: 'initial' }]);
  c.close();
  const again = Catalog.open(file, { env });
  assert.deepEqual(again.migrations(), [{ version: 1, name: 'initial' }]);
  again.close();
  assert.equal(fs.statSync(file).mode & 0o777, 0o600);
});

test('profile secrets are sealed at rest under a 0600 key file and never listed', () => {
  const file = path.join(dir, 'sec', 'catalog.db');
  const c = Catalog.open(file, { env });
  const secret = 'sup3r-s3cret-value-that-must-not-leak';
  c.insertProfile(
    { name: 'loc', kind: 'location', url: '/tmp/x', settings: { a: 'b' }, secrets: { accessKey: secret } },
    '2026-01-01T00:00:00.000Z',
  );
  assert.equal(fs.statSync(`${file}.key`).mode & 0o777, 0o600);
  const got = c.getProfile('loc');
  assert.equal(got.secrets['accessKey'], secret);
  const listed = c.listProfiles('location');
  assert.deepEqual(listed[0], {
    name: 'loc',
    kind: 'location',
    url: '/tmp/x',
    settings: { a: 'b' },
    secretNames: ['accessKey'],
  });
  assert.ok(!JSON.stringify(listed).includes(secret));
  c.db.exec('PRAGMA wal_checkpoint(TRUNCATE)');
  c.close();
  for (const f of fs.readdirSync(path.dirname(file))) {
    const bytes = fs.readFileSync(path.join(path.dirname(file), f));
    assert.ok(!bytes.includes(Buffer.from(secret)), `${f} holds the secret in clear`);
  }
  // Another key cannot open the sealed secrets.
  const other = Catalog.open(file, { env: { TERN_CATALOG_KEY: Buffer.alloc(32, 7).toString('base64') } });
  assert.throws(() => other.getProfile('loc'), { code: 'AUTH' });
  other.close();
  // A key file readable by others is refused.
  fs.chmodSync(`${file}.key`, 0o644);
  assert.throws(() => Catalog.open(file, { env }), { code: 'AUTH' });
});

test('apps, policies and profiles: duplicates conflict, references are enforced', () => {
  const c = fresh('refs');
  const t = '2026-01-01T00:00:00.000Z';
  c.insertProfile({ name: 'infra', kind: 'infra', platform: 'local', settings: {}, secrets: {} }, t);
  assert.throws(
    () => c.insertProfile({ name: 'infra', kind: 'infra', platform: 'local', settings: {}, secrets: {} }, t),
    ConflictError,
  );
  const app = {
    name: 'shop',
    infraProfile: 'infra',
    region: 'east',
    volumes: [{ name: 'db', ref: 'db' }],
    labels: {},
  };
  c.insertApp(app, t);
  assert.throws(() => c.insertApp(app, t), ConflictError);
  assert.deepEqual(c.getApp('shop'), app);
  const pol = PolicySchema.parse({ name: 'p', app: 'shop', frequency: '@daily', retention: { daily: 7 } });
  c.insertPolicy(pol, t);
  assert.throws(() => c.insertPolicy(pol, t), ConflictError);
  assert.throws(() => c.deleteApp('shop'), ConflictError);
  assert.throws(() => c.deleteProfile('infra'), ConflictError);
  c.setPolicyLastRun('p', '2026-01-02T00:00:00.000Z');
  assert.equal(c.getPolicy('p').lastRunAt, '2026-01-02T00:00:00.000Z');
  c.updatePolicy({ ...pol, paused: true });
  assert.equal(c.getPolicy('p').policy.paused, true);
  c.deletePolicy('p');
  assert.throws(() => c.getPolicy('p'), NotFoundError);
  c.deleteApp('shop');
  c.deleteProfile('infra');
  assert.deepEqual(c.listApps(), []);
  c.close();
});

test('restore points and actions round-trip; transactions roll back', () => {
  const c = fresh('rp');
  c.insertRestorePoint({
    id: 'rp-1',
    app: 'shop',
    policy: 'p',
    consistentAt: '2026-01-01T00:00:00.000Z',
    sizeBytes: 10,
    tiers: [{ kind: 'local', region: 'east', snapshots: { db: 's1' } }],
  });
  c.insertRestorePoint({
    id: 'rp-2',
    app: 'shop',
    policy: 'p',
    consistentAt: '2026-01-02T00:00:00.000Z',
    sizeBytes: 10,
    tiers: [{ kind: 'local', region: 'east', snapshots: { db: 's2' } }],
  });
  assert.deepEqual(
    c.listRestorePoints({ app: 'shop' }).map((r) => r.id),
    ['rp-2', 'rp-1'],
  );
  const rp = c.getRestorePoint('rp-1');
  rp.tiers.push({
    kind: 'repository',
    locationProfile: 'loc',
    repositoryPath: '',
    snapshots: { db: 'r1' },
    bytesTransferred: 5,
  });
  rp.exportCompletedAt = '2026-01-01T00:01:00.000Z';
  c.updateRestorePoint(rp);
  assert.deepEqual(c.getRestorePoint('rp-1'), rp);

  const a: ActionRun = {
    id: 'act-1',
    type: 'backup',
    state: 'Pending',
    app: 'shop',
    policy: 'p',
    createdAt: '2026-01-01T00:00:00.000Z',
    attempt: 0,
    maxAttempts: 3,
    phases: [],
    bytesRead: 0,
    bytesTransferred: 0,
    params: {},
  };
  c.insertAction(a);
  const b = {
    ...a,
    state: 'Failed' as const,
    attempt: 1,
    phases: [{ name: 'snapshot', startedAt: a.createdAt, endedAt: a.createdAt }],
    error: { code: 'STORAGE', message: 'outer', cause: { code: 'ENOENT', message: 'inner' } },
    startedAt: a.createdAt,
    endedAt: '2026-01-01T00:00:10.000Z',
  };
  c.updateAction(b);
  assert.deepEqual(c.getAction('act-1'), b);
  assert.equal(c.listActions({ run: 'act-1' }).length, 1);
  assert.equal(c.listActions({ states: ['Running'] }).length, 0);
  const stats = c.actionStats();
  assert.equal(stats[0]?.count, 1);
  assert.ok(Math.abs((stats[0]?.sumSeconds ?? 0) - 10) < 0.01);

  assert.throws(() =>
    c.tx(() => {
      c.insertAction({ ...a, id: 'act-2' });
      throw new Error('boom');
    }),
  );
  assert.throws(() => c.getAction('act-2'), NotFoundError);
  c.close();
});
