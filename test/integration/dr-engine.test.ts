/**
 * DR through the engine (catalog + policy runs): the 'snapshot-copy' exporter plugged into the engine, export
 * details published from the catalog, then the DR site imports and restores both paths after the source
 * region and its catalog are destroyed.
 */
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { openEngine } from '../../src/engine/index.ts';
import { DrStateStore, importRestorePoints, restoreAtDr } from '../../src/engine/dr/index.ts';
import { publishExportDetails } from '../../src/engine/dr/engine-publish.ts';
import { LocalPlatform } from '../../src/platforms/index.ts';
import { createLoopFs } from '../harness/loopfs.ts';

const SECRET = 'engine dr import secret';
const SIZE = 8 << 20;
const sha = (p: string) => crypto.createHash('sha256').update(fs.readFileSync(p)).digest('hex');

test('engine policies (datamover + snapshot copy) → export details → import and restore at west after a disaster', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-dr-engine-'));
  const cleanups: (() => void)[] = [() => fs.rmSync(dir, { recursive: true, force: true })];
  t.after(() => {
    for (const c of cleanups.reverse()) c();
  });
  const mount = (name: string): string => {
    const l = createLoopFs('btrfs', 512 << 20);
    if ('skip' in l) {
      fs.mkdirSync(path.join(dir, name), { recursive: true });
      return path.join(dir, name);
    }
    cleanups.push(() => l.cleanup());
    return l.mountpoint;
  };
  const east = path.join(mount('east'), 'region');
  const west = path.join(mount('west'), 'region');
  const vault = path.join(dir, 'vault');
  const platform = new LocalPlatform({ regions: { east, west } });
  const vol = await platform.createVolume('east', 'data', { kind: 'block', sizeBytes: SIZE });
  fs.writeFileSync(platform.volumeDataPath(vol), crypto.randomBytes(SIZE));

  const catalogFile = path.join(dir, 'east-catalog', 'catalog.db');
  fs.mkdirSync(path.dirname(catalogFile), { recursive: true });
  const engine = openEngine({ catalog: catalogFile, scheduler: false, env: {} });
  await engine.createProfile({
    name: 'lab',
    kind: 'infra',
    platform: 'local',
    settings: { 'regions.east': east, 'regions.west': west },
  });
  await engine.createProfile({
    name: 'vault',
    kind: 'location',
    url: vault,
    secrets: { repositoryPassword: 'vault pass 1' },
  });
  await engine.createApp({
    name: 'shop',
    infraProfile: 'lab',
    region: 'east',
    volumes: [{ name: 'data', ref: 'data' }],
  });
  const retention = { latest: 5 };
  await engine.createPolicy({
    name: 'to-vault',
    app: 'shop',
    frequency: '@daily',
    retention,
    export: { mode: 'datamover', locationProfile: 'vault', repositoryPath: 'shop' },
  });
  await engine.createPolicy({
    name: 'to-west',
    app: 'shop',
    frequency: '@daily',
    retention,
    export: { mode: 'snapshot-copy', region: 'west' },
  });
  for (let n = 1; n <= 2; n++) {
    if (n === 2) {
      const fd = fs.openSync(platform.volumeDataPath(vol), 'r+');
      for (let i = 0; i < 20; i++)
        fs.writeSync(fd, crypto.randomBytes(4096), 0, 4096, ((i * 7919) % (SIZE / 4096)) * 4096);
      fs.closeSync(fd);
    }
    for (const p of ['to-vault', 'to-west']) {
      await engine.runPolicy(p);
      await engine.idle();
    }
  }
  const exports = await engine.listActions({ type: 'export' });
  assert.equal(exports.length, 4);
  assert.ok(
    exports.every((a) => a.state === 'Complete'),
    JSON.stringify(exports.map((a) => [a.state, a.error])),
  );
  const want = sha(platform.volumeDataPath(vol));
  const tokens: Record<string, string> = {};
  for (const p of ['to-vault', 'to-west']) {
    const r = await publishExportDetails(engine, { site: 'east', policy: p, importSecret: SECRET });
    assert.equal(r.published.length, 2);
    assert.equal(r.restorePoints, 2);
    tokens[p] = r.token;
    // Publishing again adds nothing.
    assert.equal(
      (await publishExportDetails(engine, { site: 'east', policy: p, importSecret: SECRET })).published
        .length,
      0,
    );
  }
  assert.ok(!tokens['to-vault']?.includes('vault pass 1'));
  await engine.close();

  // Disaster: the east region and the east catalog are gone.
  fs.rmSync(east, { recursive: true, force: true });
  fs.rmSync(path.dirname(catalogFile), { recursive: true, force: true });

  const state = new DrStateStore(path.join(dir, 'west-state'), 'west');
  const westPlatform = new LocalPlatform({ regions: { west } });
  for (const p of ['to-vault', 'to-west']) {
    const r = await importRestorePoints({ state, token: tokens[p] ?? '', importSecret: SECRET });
    assert.equal(r.imported.length, 2, `${p}: both restore points imported`);
  }
  for (const p of ['repository', 'snapshot-copy'] as const) {
    const r = await restoreAtDr({
      state,
      importSecret: SECRET,
      app: 'shop',
      path: p,
      platform: westPlatform,
      nameFor: () => `data-${p}`,
    });
    assert.equal(r.path, p);
    assert.equal(sha(path.join(west, 'volumes', `data-${p}`)), want, `${p} restores the newest data`);
  }
  const st = await state.read();
  const copyStream = Object.values(st.imports).find((s) => s.kind === 'snapshot-copy');
  assert.equal(copyStream?.restorePoints.at(-1)?.incremental, true);
  assert.ok((copyStream?.restorePoints.at(-1)?.bytesTransferred ?? Infinity) <= 20 * 4096 * 2);
});
