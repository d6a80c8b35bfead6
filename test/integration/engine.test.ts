/**
 * The engine end to end on real components: an app of two block volumes on a btrfs loop filesystem (plain
 * directory when loop devices are not allowed here; the test says so), a filesystem location profile, a policy
 * run three times across data changes with separate local/export retention, then restores from the local
 * snapshot and from the repository compared byte for byte.
 */
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { ManualClock } from '../../src/core/index.ts';
import { Engine } from '../../src/engine/index.ts';
import { LocalPlatform } from '../../src/platforms/index.ts';
import { createLoopFs, type LoopFs } from '../harness/loopfs.ts';

const MiB = 1 << 20;
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-engine-'));
let loop: LoopFs | undefined;
let regionDir = '';
let fsNote = '';
let engine: Engine;
let platform: LocalPlatform;
const clock = new ManualClock(Date.UTC(2026, 2, 1, 0, 30));
const DAY = 86_400_000;

function sha(file: string): string {
  return crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}

function writeRandom(file: string, offset: number, length: number): void {
  const fd = fs.openSync(file, 'r+');
  try {
    fs.writeSync(fd, crypto.randomBytes(length), 0, length, offset);
  } finally {
    fs.closeSync(fd);
  }
}

before(async () => {
  const l = createLoopFs('btrfs', 1024 * MiB);
  if ('skip' in l) {
    fsNote = `plain directory (no btrfs loop: ${l.skip})`;
    regionDir = path.join(tmp, 'east');
  } else {
    loop = l;
    fsNote = 'btrfs loop filesystem';
    regionDir = path.join(l.mountpoint, 'east');
  }
  fs.mkdirSync(regionDir, { recursive: true });
  console.log(`engine integration: region "east" on a ${fsNote}`);
  platform = new LocalPlatform({ regions: { east: regionDir } });
  for (const [name, size] of [
    ['shop-db', 48 * MiB],
    ['shop-files', 16 * MiB],
  ] as const) {
    const v = await platform.createVolume('east', name, { kind: 'block', sizeBytes: size });
    writeRandom(platform.volumeDataPath(v), 0, size);
  }
  engine = new Engine({
    catalog: path.join(tmp, 'catalog', 'tern.db'),
    clock,
    scheduler: false,
    env: {},
    retry: { maxAttempts: 2, baseDelayMs: 0 },
  });
  await engine.start();
});

after(async () => {
  await engine?.close();
  loop?.cleanup();
  fs.rmSync(tmp, { recursive: true, force: true });
});

const vol = (name: string) => path.join(regionDir, 'volumes', name);

test('three policy runs, retention, restores from snapshot and repository byte for byte', async () => {
  await engine.createProfile({
    name: 'east-infra',
    kind: 'infra',
    platform: 'local',
    settings: { 'regions.east': regionDir },
  });
  const loc = await engine.createProfile({
    name: 'offsite',
    kind: 'location',
    url: `file://${path.join(tmp, 'repo')}`,
  });
  assert.deepEqual(loc.secretNames, ['repositoryPassword']);
  assert.ok(!('secrets' in loc));
  await engine.createApp({
    name: 'shop',
    infraProfile: 'east-infra',
    region: 'east',
    volumes: [
      { name: 'db', ref: 'shop-db' },
      { name: 'files', ref: 'shop-files' },
    ],
  });
  await engine.createPolicy({
    name: 'shop-daily',
    app: 'shop',
    frequency: '@daily',
    retention: { latest: 1 },
    export: { mode: 'datamover', locationProfile: 'offsite' },
    exportRetention: { latest: 2 },
  });

  const hashes: { db: string; files: string }[] = [];
  const changes = [
    () => {},
    () => writeRandom(vol('shop-db'), 10 * MiB, MiB),
    () => writeRandom(vol('shop-files'), 3 * MiB, 2 * MiB),
  ];
  const runs: string[] = [];
  for (const change of changes) {
    change();
    hashes.push({ db: sha(vol('shop-db')), files: sha(vol('shop-files')) });
    const { actionId } = await engine.runPolicy('shop-daily');
    runs.push(actionId);
    await engine.idle();
    const acts = await engine.listActions({ run: actionId });
    assert.deepEqual(
      acts.map((a) => [a.type, a.state]).reverse(),
      [
        ['backup', 'Complete'],
        ['export', 'Complete'],
        ['retention', 'Complete'],
      ],
      JSON.stringify(acts.map((a) => a.error)),
    );
    clock.advance(DAY);
  }
  const exports = (await engine.listActions({ type: 'export' })).reverse();
  const [e1, e2, e3] = exports;
  assert.equal(e1?.params['incremental'], false);
  assert.equal(e2?.params['incremental'], true);
  assert.ok(e1!.bytesTransferred > 60 * MiB, `first export sent ${e1!.bytesTransferred}`);
  assert.ok(e2!.bytesTransferred < 3 * MiB, `incremental export sent ${e2!.bytesTransferred}`);
  assert.ok(e3!.bytesTransferred < 4 * MiB, `incremental export sent ${e3!.bytesTransferred}`);
  assert.deepEqual(
    e1!.phases.map((p) => p.name),
    ['export'],
  );

  // Retention: local keeps 1, exports keep 2 — separately.
  const all = await engine.listRestorePoints({ app: 'shop', includeExpired: true });
  assert.equal(all.length, 3);
  const [rp3, rp2, rp1] = all;
  const live = (rp: typeof rp1, kind: string) => rp!.tiers.some((t) => t.kind === kind && !t.expiredAt);
  assert.deepEqual(
    [rp1, rp2, rp3].map((rp) => [live(rp, 'local'), live(rp, 'repository')]),
    [
      [false, false],
      [false, true],
      [true, true],
    ],
  );
  for (const v of ['shop-db', 'shop-files']) {
    const snaps = await platform.listSnapshots(
      (await platform.listVolumes('east')).find((x) => x.name === v)!,
    );
    assert.equal(snaps.length, 1, `${v} keeps one local snapshot`);
  }
  assert.equal((await engine.listRestorePoints({ app: 'shop', tier: 'repository' })).length, 2);

  // Dry run: a plan, nothing written.
  const dry = await engine.restore({
    restorePoint: rp2!.id,
    targetApp: 'shop-dry',
    volumes: ['db'],
    dryRun: true,
  });
  assert.equal(dry.actionId, undefined);
  assert.equal(dry.plan.source, 'repository');
  assert.deepEqual(
    dry.plan.volumes.map((v) => [v.volume, v.to]),
    [['db', 'shop-dry-db']],
  );
  assert.ok(!fs.existsSync(vol('shop-dry-db')));
  await assert.rejects(engine.getApp('shop-dry'), { code: 'NOT_FOUND' });

  // Restore the newest point from its local snapshot into a new app.
  let t0 = performance.now();
  const snapRestore = await engine.restore({
    restorePoint: rp3!.id,
    source: 'snapshot',
    targetApp: 'shop-snap',
  });
  const sr = await engine.waitForAction(snapRestore.actionId!);
  const snapMs = performance.now() - t0;
  assert.equal(sr.state, 'Complete', JSON.stringify(sr.error));
  assert.equal(sha(vol('shop-snap-db')), hashes[2]!.db);
  assert.equal(sha(vol('shop-snap-files')), hashes[2]!.files);
  assert.deepEqual(
    (await engine.getApp('shop-snap')).volumes.map((v) => v.ref),
    ['shop-snap-db', 'shop-snap-files'],
  );

  // The same point from the repository (stream) into another app.
  t0 = performance.now();
  const repoRestore = await engine.restore({
    restorePoint: rp3!.id,
    source: 'repository',
    targetApp: 'shop-repo',
  });
  const rr = await engine.waitForAction(repoRestore.actionId!);
  const repoMs = performance.now() - t0;
  assert.equal(rr.state, 'Complete', JSON.stringify(rr.error));
  assert.equal(sha(vol('shop-repo-db')), hashes[2]!.db);
  assert.equal(sha(vol('shop-repo-files')), hashes[2]!.files);

  // An older point whose local snapshot expired: 'auto' picks the repository; in place, one volume only.
  writeRandom(vol('shop-db'), 0, MiB);
  const filesBefore = sha(vol('shop-files'));
  const auto = await engine.restore({ restorePoint: rp2!.id, volumes: ['db'] });
  assert.equal(auto.plan.source, 'repository');
  assert.equal(auto.plan.inPlace, true);
  const ar = await engine.waitForAction(auto.actionId!);
  assert.equal(ar.state, 'Complete', JSON.stringify(ar.error));
  assert.equal(sha(vol('shop-db')), hashes[1]!.db);
  assert.equal(sha(vol('shop-files')), filesBefore, 'unselected volume untouched');

  // Disaster: a volume is deleted; restore it in place from the newest local snapshot.
  const filesVol = (await platform.listVolumes('east')).find((x) => x.name === 'shop-files')!;
  await platform.deleteVolume(filesVol);
  const back = await engine.restore({ restorePoint: rp3!.id, volumes: ['files'] });
  assert.equal(back.plan.source, 'snapshot');
  assert.equal(back.plan.volumes[0]?.overwrite, false);
  const br = await engine.waitForAction(back.actionId!);
  assert.equal(br.state, 'Complete', JSON.stringify(br.error));
  assert.equal(sha(vol('shop-files')), hashes[2]!.files);

  // Bad restore requests change nothing.
  await assert.rejects(engine.restore({ restorePoint: rp1!.id }), { code: 'NOT_FOUND' });
  await assert.rejects(engine.restore({ restorePoint: rp3!.id, targetApp: 'shop-snap' }), {
    code: 'CONFLICT',
  });
  await assert.rejects(engine.restore({ restorePoint: rp3!.id, volumes: ['nope'] }), { code: 'INPUT' });

  const m = await engine.metrics();
  const count = (type: string, state: string) =>
    m.actions.find((a) => a.type === type && a.state === state)?.count ?? 0;
  assert.equal(count('backup', 'Complete'), 3);
  assert.equal(count('restore', 'Complete'), 4);
  assert.ok(m.lastRestorePoint.some((r) => r.app === 'shop' && r.tier === 'repository'));
  console.log(
    `engine integration (${fsNote}): restore of 64 MiB (2 volumes) from local snapshot ${snapMs.toFixed(0)} ms, from repository ${repoMs.toFixed(0)} ms; exports ${[e1, e2, e3].map((e) => `${(e!.bytesTransferred / MiB).toFixed(1)} MiB`).join(' / ')}`,
  );
});

function treeState(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const e of fs.readdirSync(dir, { recursive: true, withFileTypes: true })) {
    const p = path.relative(dir, path.join(e.parentPath, e.name));
    if (e.isSymbolicLink()) out[p] = `-> ${fs.readlinkSync(path.join(dir, p))}`;
    else if (e.isFile()) out[p] = sha(path.join(dir, p));
    else if (e.isDirectory()) out[p] = 'dir';
  }
  return out;
}

test('a directory-tree volume: incremental export, restore from snapshot and from the repository', async () => {
  const v = await platform.createVolume('east', 'notes-fs', { kind: 'fs' });
  const root = platform.volumeDataPath(v);
  fs.mkdirSync(path.join(root, 'a/b'), { recursive: true });
  for (let i = 0; i < 20; i++) fs.writeFileSync(path.join(root, 'a', `f${i}`), crypto.randomBytes(32 * 1024));
  fs.writeFileSync(path.join(root, 'a/b/big'), crypto.randomBytes(2 * MiB));
  fs.symlinkSync('b/big', path.join(root, 'a/link'));
  await engine.createApp({
    name: 'notes',
    infraProfile: 'east-infra',
    region: 'east',
    volumes: [{ name: 'data', ref: 'notes-fs' }],
  });
  await engine.createPolicy({
    name: 'notes-p',
    app: 'notes',
    frequency: '@hourly',
    retention: { latest: 5 },
    export: { mode: 'datamover', locationProfile: 'offsite', repositoryPath: 'notes' },
  });
  const states: Record<string, string>[] = [];
  for (const change of [
    () => {},
    () => {
      fs.writeFileSync(path.join(root, 'a/f3'), 'changed');
      fs.rmSync(path.join(root, 'a/f4'));
      fs.writeFileSync(path.join(root, 'a/b/new'), crypto.randomBytes(1000));
    },
  ]) {
    change();
    states.push(treeState(root));
    const { actionId } = await engine.runPolicy('notes-p');
    await engine.idle();
    for (const a of await engine.listActions({ run: actionId }))
      assert.equal(a.state, 'Complete', `${a.type}: ${JSON.stringify(a.error)}`);
    clock.advance(3_600_000);
  }
  const [e2, e1] = await engine.listActions({ app: 'notes', type: 'export' });
  assert.equal(e2?.params['incremental'], true);
  assert.ok(
    e2!.bytesTransferred < e1!.bytesTransferred / 10,
    `incremental tree export sent ${e2!.bytesTransferred}`,
  );
  const [rp2, rp1] = await engine.listRestorePoints({ app: 'notes' });

  const s = await engine.restore({ restorePoint: rp1!.id, source: 'snapshot', targetApp: 'notes-snap' });
  assert.equal((await engine.waitForAction(s.actionId!)).state, 'Complete');
  assert.deepEqual(treeState(path.join(regionDir, 'volumes', 'notes-snap-data')), states[0]);

  const r = await engine.restore({ restorePoint: rp2!.id, source: 'repository', targetApp: 'notes-repo' });
  const ra = await engine.waitForAction(r.actionId!);
  assert.equal(ra.state, 'Complete', JSON.stringify(ra.error));
  assert.deepEqual(treeState(path.join(regionDir, 'volumes', 'notes-repo-data')), states[1]);

  // In place from the repository: the subvolume is replaced by the older tree.
  const ip = await engine.restore({ restorePoint: rp1!.id, source: 'repository' });
  const ipa = await engine.waitForAction(ip.actionId!);
  assert.equal(ipa.state, 'Complete', JSON.stringify(ipa.error));
  assert.deepEqual(treeState(root), states[0]);
  assert.deepEqual(
    fs.readdirSync(path.join(regionDir, 'volumes')).filter((n) => n.startsWith('.')),
    [],
    'no temporary restore directories left',
  );
});
