/** Scheduler and GFS retention over a simulated year (ManualClock, real SQLite catalog). */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { Catalog } from '../../src/catalog/index.ts';
import { ManualClock } from '../../src/core/index.ts';
import { PolicySchema, RetentionSchema, type Policy } from '../../src/core/model.ts';
import { Scheduler } from '../../src/engine/scheduler.ts';
import { selectRetention } from '../../src/core/retention.ts';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-sched-'));
after(() => fs.rmSync(dir, { recursive: true, force: true }));
const START = Date.UTC(2026, 0, 1);
const HOUR = 3_600_000;

function setup(name: string, policies: unknown[]) {
  const catalog = Catalog.open(path.join(dir, name, 'c.db'), { env: {} });
  const t = new Date(START).toISOString();
  catalog.insertProfile({ name: 'infra', kind: 'infra', platform: 'local', settings: {}, secrets: {} }, t);
  catalog.insertApp(
    { name: 'app', infraProfile: 'infra', region: 'east', volumes: [{ name: 'v', ref: 'v' }], labels: {} },
    t,
  );
  for (const p of policies)
    catalog.insertPolicy(PolicySchema.parse({ app: 'app', retention: {}, ...(p as object) }), t);
  const clock = new ManualClock(START);
  const fired: { policy: string; at: string }[] = [];
  const s = new Scheduler({
    catalog,
    clock,
    fire: (p: Policy, at) => fired.push({ policy: p.name, at: at.toISOString() }),
  });
  return { catalog, clock, fired, s };
}

test('a year of @hourly, @daily, cron and "every hour at minute 15" fires exactly on time', () => {
  const { clock, fired, s, catalog } = setup('year', [
    { name: 'hourly', frequency: '@hourly' },
    { name: 'daily', frequency: '@daily' },
    { name: 'six', frequency: '30 */6 * * *' },
    { name: 'm15', frequency: { every: 'hour', minute: 15 } },
  ]);
  const t0 = performance.now();
  // Step an hour at a time for a year: every scheduled time is crossed exactly once.
  for (let i = 0; i < 365 * 24; i++) {
    clock.advance(HOUR);
    s.tick();
  }
  const ms = performance.now() - t0;
  const count = (p: string) => fired.filter((f) => f.policy === p).length;
  assert.equal(count('hourly'), 365 * 24);
  assert.equal(count('daily'), 365);
  assert.equal(count('six'), 365 * 4);
  assert.equal(count('m15'), 365 * 24);
  assert.ok(fired.filter((f) => f.policy === 'm15').every((f) => f.at.slice(14, 19) === '15:00'));
  assert.ok(fired.filter((f) => f.policy === 'six').every((f) => /T(00|06|12|18):30:00/.test(f.at)));
  assert.equal(fired.filter((f) => f.policy === 'daily').at(-1)?.at, '2027-01-01T00:00:00.000Z');
  assert.ok(ms < 60_000, `a simulated year took ${ms} ms`);
  catalog.close();
});

test('downtime: many missed runs become ONE catch-up run; paused policies do not fire', () => {
  const { clock, fired, s, catalog } = setup('downtime', [
    { name: 'hourly', frequency: '@hourly' },
    { name: 'paused', frequency: '@hourly', paused: true },
  ]);
  clock.advance(HOUR);
  s.tick();
  assert.equal(fired.length, 1);
  clock.advance(3 * 24 * HOUR + 20 * 60_000); // down for three days
  s.tick();
  assert.equal(fired.length, 2);
  assert.equal(
    fired[1]?.at,
    new Date(START + 73 * HOUR).toISOString(),
    'stamped with the latest missed time',
  );
  s.tick();
  assert.equal(fired.length, 2, 'no second catch-up');
  clock.advance(40 * 60_000);
  s.tick();
  assert.equal(fired.length, 3);
  assert.ok(fired.every((f) => f.policy === 'hourly'));
  // A restarted scheduler (new instance, same catalog) continues from the recorded last run.
  const s2 = new Scheduler({
    catalog,
    clock,
    fire: (p, at) => fired.push({ policy: p.name, at: at.toISOString() }),
  });
  s2.tick();
  assert.equal(fired.length, 3);
  catalog.close();
});

test('the scheduler loop wakes on the clock and on policy changes', async () => {
  const { clock, fired, s, catalog } = setup('loop', [{ name: 'daily', frequency: '@daily' }]);
  s.start();
  await new Promise((r) => setImmediate(r));
  clock.advance(24 * HOUR);
  for (let i = 0; i < 50 && fired.length === 0; i++) await new Promise((r) => setImmediate(r));
  assert.equal(fired.length, 1);
  await s.close();
  catalog.close();
});

test('GFS over a year of hourly points: incremental application equals one pass, periods kept as asked', () => {
  const r = RetentionSchema.parse({ latest: 3, hourly: 24, daily: 7, weekly: 4, monthly: 12, yearly: 2 });
  let live: { id: string; time: string }[] = [];
  const all: { id: string; time: string }[] = [];
  const t0 = performance.now();
  for (let h = 1; h <= 365 * 24; h++) {
    const p = { id: `p${h}`, time: new Date(START + h * HOUR).toISOString() };
    all.push(p);
    live.push(p);
    live = selectRetention(live, r).keep;
  }
  const ms = performance.now() - t0;
  const once = selectRetention(all, r)
    .keep.map((p) => p.id)
    .sort();
  assert.deepEqual(live.map((p) => p.id).sort(), once);
  const times = live.map((p) => p.time).sort();
  // The newest 24 hours are all there.
  for (let h = 0; h < 24; h++)
    assert.ok(times.includes(new Date(START + (365 * 24 - h) * HOUR).toISOString()));
  // Monthly keeps the last point of each of the 12 most recent months (Jan 2027 00:00 is the newest point).
  const lastOfMonth = (y: number, m: number) => new Date(Date.UTC(y, m + 1, 1) - HOUR).toISOString();
  for (let m = 1; m < 12; m++) assert.ok(times.includes(lastOfMonth(2026, m)), `month ${m + 1}`);
  assert.ok(times.length <= 3 + 24 + 7 + 4 + 12 + 2);
  // Overlaps (the newest day, week, month and year are already kept by the hourly rule) make it fewer.
  assert.ok(times.length >= 24 + 5 + 10, `kept ${times.length}`);
  assert.ok(ms < 30_000, `took ${ms} ms`);
  // No rule at all keeps everything (an all-zero retention never wipes history).
  assert.equal(selectRetention(all.slice(0, 10), RetentionSchema.parse({ latest: 0 })).keep.length, 10);
});
