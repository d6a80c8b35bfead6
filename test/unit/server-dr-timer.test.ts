/**
 * The server's DR timer on an injected clock: one tick at start (a restarted DR site catches up at once), then
 * one per interval; an hourly import policy imports again only after its next scheduled time has passed, and
 * then every restore point published meanwhile. Real repository in a directory, real SQLite catalog.
 */
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { ManualClock } from '../../src/core/index.ts';
import { DatamoverExporter, runExport, SourceStateStore } from '../../src/engine/dr/index.ts';
import { openEngine } from '../../src/engine/index.ts';
import { LocalPlatform } from '../../src/platforms/index.ts';
import { DrRuntime } from '../../src/server/index.ts';

const SECRET = 'timer test import secret';

async function until(what: string, fn: () => boolean | Promise<boolean>): Promise<void> {
  const deadline = Date.now() + 20_000;
  while (!(await fn())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

test('DrRuntime ticks on its clock and import policies poll their stream', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-dr-timer-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const clock = new ManualClock(Date.UTC(2026, 10, 25, 10, 5));
  const platform = new LocalPlatform({ regions: { east: path.join(dir, 'east') } });
  const volume = await platform.createVolume('east', 'data', { kind: 'block', sizeBytes: 1 << 20 });
  fs.writeFileSync(platform.volumeDataPath(volume), crypto.randomBytes(1 << 20));
  const exporter = new DatamoverExporter({
    platform,
    repository: path.join(dir, 'vault'),
    password: 'pw',
    init: true,
  });
  const source = new SourceStateStore(path.join(dir, 'east-state'), 'east');
  const exportOnce = async (n: number): Promise<string> => {
    const snapshot = await platform.snapshot(volume);
    const r = await runExport({
      state: source,
      site: 'east',
      stream: 'vault',
      exporter,
      importSecret: SECRET,
      rp: {
        id: `rp-${n}`,
        app: 'shop',
        consistentAt: clock.now().toISOString(),
        volumes: [{ volume, snapshot }],
      },
      clock,
    });
    return r.token;
  };
  const token = await exportOnce(1);

  const engine = openEngine({ catalog: ':memory:', scheduler: false, env: {}, clock });
  t.after(() => engine.close());
  const lines: string[] = [];
  const dr = new DrRuntime({
    site: 'west',
    stateDir: path.join(dir, 'west-state'),
    importSecret: SECRET,
    engine,
    intervalMs: 60_000,
    clock,
    log: (l) => lines.push(l),
  });
  assert.ok(dr.service);
  await dr.service.createImportPolicy({ name: 'shop', token, frequency: '@hourly' });
  const imported = async (): Promise<number> =>
    Object.values((await dr.state.read()).imports)[0]?.restorePoints.length ?? 0;

  dr.start();
  await until('the first tick', () => dr.ticks === 1);
  assert.equal(await imported(), 1, 'never-run policy imports at the first tick');

  await exportOnce(2);
  await exportOnce(3);
  // Ticks every minute, but the hourly policy is not due before 11:00.
  for (let m = 1; m <= 50; m++) {
    clock.advance(60_000);
    await until(`tick ${m + 1}`, () => dr.ticks === m + 1);
  }
  assert.equal(await imported(), 1, 'not due yet at 10:55');
  for (let m = 51; m <= 56; m++) {
    clock.advance(60_000);
    await until(`tick ${m + 1}`, () => dr.ticks === m + 1);
  }
  assert.equal(await imported(), 3, 'due after 11:00: both new restore points at once');
  assert.ok(
    lines.some((l) => /dr import policy shop: 2 imported/.test(l)),
    lines.join('\n'),
  );

  const t0 = Date.now();
  await dr.stop();
  assert.ok(Date.now() - t0 < 5_000, 'stop interrupts the sleep');
  const ticks = dr.ticks;
  clock.advance(3_600_000);
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(dr.ticks, ticks, 'no tick after stop');
});

test('DrRuntime without an import secret: no timer, DR import routes unavailable', async () => {
  const engine = openEngine({ catalog: ':memory:', scheduler: false, env: {} });
  try {
    const dr = new DrRuntime({ site: 's', stateDir: os.tmpdir(), engine, intervalMs: 10 });
    assert.equal(dr.service, undefined);
    dr.start();
    assert.throws(() => dr.requireService(), { code: 'UNAVAILABLE' });
    await dr.stop();
    assert.equal(dr.ticks, 0);
  } finally {
    await engine.close();
  }
});
