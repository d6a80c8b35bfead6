/**
 * The TernService facade on real parts (SQLite catalog, local platform on a temp dir, filesystem object store):
 * input validation that changes nothing, secrets that never come out, policy lifecycle, and a simulated year of
 * daily runs with retention driven by the scheduler on a ManualClock.
 */
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { ManualClock } from '../../src/core/index.ts';
import { RetentionSchema } from '../../src/core/model.ts';
import { Engine, selectRetention } from '../../src/engine/index.ts';
import { LocalPlatform } from '../../src/platforms/index.ts';

// tmpfs when there is one: a year of runs is ~1500 small fsyncs, which a busy shared disk makes slow.
const base = fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir();
const tmp = fs.mkdtempSync(path.join(base, 'tern-service-'));
const region = path.join(tmp, 'east');
const clock = new ManualClock(Date.UTC(2026, 0, 1));
const DAY = 86_400_000;
let engine: Engine;
let platform: LocalPlatform;

before(async () => {
  fs.mkdirSync(region);
  platform = new LocalPlatform({ regions: { east: region } });
  for (const name of ['a1', 'a2', 'y1']) {
    const v = await platform.createVolume('east', name, { kind: 'block', sizeBytes: 64 * 1024 });
    fs.writeFileSync(platform.volumeDataPath(v), crypto.randomBytes(64 * 1024));
  }
  engine = new Engine({ catalog: path.join(tmp, 'tern.db'), clock, scheduler: false, env: {} });
  await engine.start();
  await engine.createProfile({
    name: 'infra',
    kind: 'infra',
    platform: 'local',
    settings: { 'regions.east': region },
  });
});

after(async () => {
  await engine.close();
  fs.rmSync(tmp, { recursive: true, force: true });
});

async function snapshotState() {
  return JSON.stringify([
    await engine.listApps(),
    await engine.listProfiles(),
    await engine.listPolicies(),
    await engine.listActions(),
  ]);
}

test('malformed input gets a clear error and changes nothing', async () => {
  await engine.createApp({
    name: 'a',
    infraProfile: 'infra',
    region: 'east',
    volumes: [{ name: 'v1', ref: 'a1' }],
  });
  await engine.createPolicy({ name: 'p', app: 'a', frequency: '@hourly', retention: { hourly: 24 } });
  const before = await snapshotState();
  const cases: [string, () => Promise<unknown>, string, RegExp][] = [
    [
      'bad cron',
      () => engine.createPolicy({ name: 'q', app: 'a', frequency: '61 * * * *', retention: {} }),
      'INPUT',
      /frequency/,
    ],
    [
      'retention -1',
      () => engine.createPolicy({ name: 'q', app: 'a', frequency: '@daily', retention: { daily: -1 } }),
      'INPUT',
      /retention\.daily/,
    ],
    [
      'unknown app',
      () => engine.createPolicy({ name: 'q', app: 'nope', frequency: '@daily', retention: {} }),
      'INPUT',
      /unknown application "nope"/,
    ],
    [
      'unknown location profile',
      () =>
        engine.createPolicy({
          name: 'q',
          app: 'a',
          frequency: '@daily',
          retention: {},
          export: { mode: 'datamover', locationProfile: 'nope' },
        }),
      'INPUT',
      /unknown location profile "nope"/,
    ],
    [
      'unknown infra profile',
      () =>
        engine.createApp({
          name: 'b',
          infraProfile: 'nope',
          region: 'east',
          volumes: [{ name: 'v', ref: 'a2' }],
        }),
      'INPUT',
      /unknown infra profile/,
    ],
    [
      'unknown volume',
      () =>
        engine.createApp({
          name: 'b',
          infraProfile: 'infra',
          region: 'east',
          volumes: [{ name: 'v', ref: 'zz' }],
        }),
      'INPUT',
      /volume "zz" not found/,
    ],
    [
      'duplicate app',
      () =>
        engine.createApp({
          name: 'a',
          infraProfile: 'infra',
          region: 'east',
          volumes: [{ name: 'v1', ref: 'a1' }],
        }),
      'CONFLICT',
      /already exists/,
    ],
    [
      'duplicate policy',
      () => engine.createPolicy({ name: 'p', app: 'a', frequency: '@daily', retention: {} }),
      'CONFLICT',
      /already exists/,
    ],
    [
      'duplicate profile',
      () =>
        engine.createProfile({
          name: 'infra',
          kind: 'infra',
          platform: 'local',
          settings: { 'regions.east': region },
        }),
      'CONFLICT',
      /already exists/,
    ],
    [
      'bad name',
      () =>
        engine.createApp({
          name: 'Bad Name',
          infraProfile: 'infra',
          region: 'east',
          volumes: [{ name: 'v', ref: 'a1' }],
        }),
      'INPUT',
      /name/,
    ],
    [
      'unknown platform',
      () => engine.createProfile({ name: 'x', kind: 'infra', platform: 'nope', settings: {} }),
      'INPUT',
      /platform cannot be opened/,
    ],
    [
      'unwritable location',
      () => engine.createProfile({ name: 'x', kind: 'location', url: 'file:///dev/null/tern-nope' }),
      'INPUT',
      /cannot write and read a test object/,
    ],
    ['bad update', () => engine.updatePolicy('p', { frequency: 'not cron' }), 'INPUT', /frequency/],
    ['app in use', () => engine.deleteApp('a'), 'CONFLICT', /used by policy/],
    ['unknown policy run', () => engine.runPolicy('nope'), 'NOT_FOUND', /not found/],
  ];
  for (const [what, fn, code, msg] of cases) {
    await assert.rejects(
      fn(),
      (err: { code?: string; message: string }) => {
        assert.equal(err.code, code, `${what}: ${err.message}`);
        assert.match(err.message, msg, what);
        return true;
      },
      what,
    );
  }
  assert.equal(await snapshotState(), before);
});

test('secrets go in and never come out', async () => {
  const secret = `s3cr3t-${crypto.randomBytes(8).toString('hex')}`;
  const p = await engine.createProfile({
    name: 'vault',
    kind: 'location',
    url: `file://${path.join(tmp, 'vault')}`,
    secrets: { accessKeyId: 'AKIA', secretAccessKey: secret },
  });
  assert.deepEqual(p.secretNames, ['accessKeyId', 'repositoryPassword', 'secretAccessKey']);
  const password = engine.catalog.getProfile('vault').secrets['repositoryPassword']!;
  assert.ok(password.length >= 40, 'a generated repository password');
  const out = JSON.stringify([
    p,
    await engine.getProfile('vault'),
    await engine.listProfiles(),
    await engine.metrics(),
  ]);
  assert.ok(!out.includes(secret) && !out.includes(password));
  const left = fs
    .readdirSync(path.join(tmp, 'vault'), { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile());
  assert.equal(left.length, 0, 'the validation object was removed');
  await engine.deleteProfile('vault');
});

test('policy lifecycle: next run, pause, resume without replay, update', async () => {
  const v = await engine.getPolicy('p');
  assert.equal(v.cron, '0 * * * *');
  assert.equal(v.nextRunAt, '2026-01-01T01:00:00.000Z');
  assert.equal((await engine.pausePolicy('p')).nextRunAt, undefined);
  clock.advance(5 * 3_600_000);
  assert.deepEqual(engine.scheduler.tick(), []);
  const resumed = await engine.resumePolicy('p');
  assert.equal(resumed.nextRunAt, '2026-01-01T06:00:00.000Z');
  const u = await engine.updatePolicy('p', { frequency: { every: 'day', hour: 2, minute: 15 } });
  assert.equal(u.cron, '15 2 * * *');
  assert.equal(u.nextRunAt, '2026-01-02T02:15:00.000Z');
  await engine.deletePolicy('p');
  await engine.deleteApp('a');
});

test('a simulated year of daily runs: scheduler, GFS on local snapshots, one catch-up after downtime', async () => {
  await engine.createApp({
    name: 'yr',
    infraProfile: 'infra',
    region: 'east',
    volumes: [{ name: 'v', ref: 'y1' }],
  });
  const retention = { latest: 2, daily: 7, weekly: 4, monthly: 12 };
  await engine.createPolicy({ name: 'yr-daily', app: 'yr', frequency: '@daily', retention });
  const t0 = performance.now();
  const y1 = path.join(region, 'volumes', 'y1');
  for (let d = 0; d < Number(process.env.TERN_DAYS ?? 365); d++) {
    clock.advance(DAY);
    fs.writeFileSync(y1, crypto.randomBytes(16), { flag: 'r+' });
    assert.deepEqual(engine.scheduler.tick(), ['yr-daily']);
    await engine.idle();
  }
  const ms = performance.now() - t0;
  const points = await engine.listRestorePoints({ app: 'yr', includeExpired: true });
  assert.equal(points.length, 365);
  const live = points.filter((p) => p.tiers.some((t) => t.kind === 'local' && !t.expiredAt));
  const expected = selectRetention(
    points.map((p) => ({ id: p.id, time: p.consistentAt })),
    RetentionSchema.parse(retention),
  ).keep.map((p) => p.id);
  assert.deepEqual(live.map((p) => p.id).sort(), expected.sort());
  const vol = (await platform.listVolumes('east')).find((x) => x.name === 'y1')!;
  assert.equal(
    (await platform.listSnapshots(vol)).length,
    live.length,
    'platform snapshots match the catalog',
  );
  const failed = await engine.listActions({ app: 'yr', state: 'Failed' });
  assert.equal(failed.length, 0, JSON.stringify(failed[0]?.error));

  // Downtime of ten days: one catch-up run, stamped with the last missed time.
  clock.advance(10 * DAY + 3_600_000);
  assert.deepEqual(engine.scheduler.tick(), ['yr-daily']);
  assert.deepEqual(engine.scheduler.tick(), []);
  await engine.idle();
  const last = (await engine.listActions({ app: 'yr', type: 'backup', limit: 1 }))[0]!;
  const lastMidnight = Math.floor(clock.now().getTime() / DAY) * DAY;
  assert.equal(last.params['scheduledAt'], new Date(lastMidnight).toISOString());
  clock.advance(3_600_000);
  const m = await engine.metrics();
  const age = m.lastRestorePoint.find((r) => r.app === 'yr' && r.tier === 'local');
  assert.equal(age?.ageSeconds, 3600);
  console.log(`a simulated year of daily runs through the engine: ${ms.toFixed(0)} ms`);
});

test('a backup killed after recording its restore point resumes without a second snapshot', async () => {
  const before = await engine.listRestorePoints({ app: 'yr', includeExpired: true });
  const rp = before[0]!;
  const orphan = engine.runner.create({ type: 'backup', app: 'yr', policy: 'yr-daily', restorePoint: rp.id });
  // As a killed process leaves it: Running, first attempt, restore point recorded.
  engine.catalog.updateAction({
    ...orphan,
    state: 'Running',
    attempt: 1,
    startedAt: clock.now().toISOString(),
  });
  const restarted = new Engine({ catalog: engine.catalog, clock, scheduler: false });
  await restarted.start();
  assert.deepEqual(restarted.lastRecovery.resumed, [orphan.id]);
  await restarted.idle();
  const done = await restarted.getAction(orphan.id);
  assert.equal(done.state, 'Complete');
  assert.equal(done.attempt, 2);
  const follow = await restarted.listActions({ run: orphan.id });
  assert.deepEqual(
    follow.map((a) => [a.type, a.state]),
    [
      ['retention', 'Complete'],
      ['backup', 'Complete'],
    ],
  );
  assert.equal((await engine.listRestorePoints({ app: 'yr', includeExpired: true })).length, before.length);
  await restarted.close();
});
