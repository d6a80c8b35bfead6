/**
 * Cross-region DR on the local platform: export details, catch-up import, restore by both paths after a
 * disaster, killed import, and the demo end to end. Regions are btrfs loop filesystems when this host allows
 * (root + loop devices), else plain directories.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { InputError, ManualClock } from '../../src/core/index.ts';
import {
  DatamoverExporter,
  DrService,
  DrStateStore,
  SnapshotCopyExporter,
  SourceStateStore,
  drReport,
  importRestorePoints,
  listImportable,
  listRecords,
  recordKey,
  readStreamDetails,
  restoreAtDr,
  runExport,
} from '../../src/engine/dr/index.ts';
import type { Exporter } from '../../src/engine/dr/index.ts';
import { LocalPlatform } from '../../src/platforms/index.ts';
import { openStore } from '../../src/storage/index.ts';
import type { VolumeRef } from '../../src/platforms/index.ts';
import { createLoopFs } from '../harness/loopfs.ts';

const NODE = process.execPath;
const ROOT = path.resolve(import.meta.dirname, '../..');
const SECRET = 'dr test import secret';
const SIZE = 8 << 20;

interface World {
  dir: string;
  east: string;
  west: string;
  vault: string;
  eastState: string;
  westState: string;
  platform: LocalPlatform;
  volume: VolumeRef;
  file: string;
  exporters: { datamover: Exporter; copy: Exporter };
  cleanup(): void;
}

function region(name: string, cleanups: (() => void)[], dir: string): string {
  const fsys = createLoopFs('btrfs', 512 << 20);
  if ('skip' in fsys) {
    const p = path.join(dir, name);
    fs.mkdirSync(p, { recursive: true });
    return p;
  }
  cleanups.push(() => fsys.cleanup());
  return fsys.mountpoint;
}

async function world(): Promise<World> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-dr-'));
  const cleanups: (() => void)[] = [];
  const east = path.join(region('east', cleanups, dir), 'region');
  const westRoot = region('west', cleanups, dir);
  const west = path.join(westRoot, 'region');
  const vault = path.join(dir, 'vault');
  const platform = new LocalPlatform({ regions: { east, west } });
  const volume = await platform.createVolume('east', 'data', { kind: 'block', sizeBytes: SIZE });
  const file = platform.volumeDataPath(volume);
  fs.writeFileSync(file, crypto.randomBytes(SIZE));
  return {
    dir,
    east,
    west,
    vault,
    eastState: path.join(dir, 'east-state'),
    westState: path.join(westRoot, 'west-state'),
    platform,
    volume,
    file,
    exporters: {
      datamover: new DatamoverExporter({ platform, repository: vault, password: 'repo pass 1', init: true }),
      copy: new SnapshotCopyExporter({
        platform,
        toRegion: 'west',
        records: west,
        drPlatform: { type: 'local', config: { regions: { west } } },
      }),
    },
    cleanup: () => {
      for (const c of cleanups.reverse()) c();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Overwrite a few scattered pages of the volume (the application writing). */
function scribble(file: string, seed: number): void {
  const fd = fs.openSync(file, 'r+');
  for (let i = 0; i < 16; i++)
    fs.writeSync(fd, crypto.randomBytes(4096), 0, 4096, ((seed * 7919 + i * 104729) % (SIZE / 4096)) * 4096);
  fs.closeSync(fd);
}

async function exportRun(w: World, stream: 'datamover' | 'copy', n: number) {
  const snapshot = await w.platform.snapshot(w.volume);
  return runExport({
    state: new SourceStateStore(w.eastState, 'east'),
    site: 'east',
    stream,
    exporter: w.exporters[stream],
    importSecret: SECRET,
    rp: {
      id: `${stream}-${n}`,
      app: 'shop',
      consistentAt: snapshot.createdAt,
      volumes: [{ volume: w.volume, snapshot }],
    },
    detailsDir: path.join(w.eastState, 'details'),
  });
}

const sha = (p: string) => crypto.createHash('sha256').update(fs.readFileSync(p)).digest('hex');

test('export details: tampered, truncated and wrong-secret tokens are rejected with InputError; bad records are not imported', async (t) => {
  const w = await world();
  t.after(() => w.cleanup());
  const { token, tokenFile } = await exportRun(w, 'copy', 1);
  assert.ok(tokenFile && fs.readFileSync(tokenFile, 'utf8').trim() === token);
  assert.equal(readStreamDetails(token, SECRET).kind, 'snapshot-copy');
  const [p, body, sig] = token.split('.') as [string, string, string];
  const payload = JSON.parse(Buffer.from(body, 'base64url').toString()) as { stream: { records: string } };
  payload.stream.records = '/tmp/elsewhere';
  const tampered = `${p}.${Buffer.from(JSON.stringify(payload)).toString('base64url')}.${sig}`;
  const state = new DrStateStore(w.westState, 'west');
  for (const bad of [tampered, token.slice(0, token.length - 20), token.slice(0, 40), `${token}x`, 'hello'])
    await assert.rejects(importRestorePoints({ state, token: bad, importSecret: SECRET }), (err: unknown) => {
      assert.ok(err instanceof InputError, `expected InputError, got ${String(err)}`);
      assert.match(err.message, /export details/);
      return true;
    });
  await assert.rejects(importRestorePoints({ state, token, importSecret: 'not the secret' }), InputError);
  assert.equal(fs.existsSync(path.join(w.westState, 'dr-site.json')), false, 'nothing recorded');

  // A record altered at the location is reported and not imported.
  const recDir = path.join(w.west, 'tern-exports');
  const recFile = fs.globSync('**/*.json', { cwd: recDir }).map((f) => path.join(recDir, f))[0]!;
  const env = JSON.parse(fs.readFileSync(recFile, 'utf8')) as { body: string; mac: string };
  const rec = JSON.parse(Buffer.from(env.body, 'base64url').toString()) as { consistentAt: string };
  rec.consistentAt = new Date().toISOString();
  fs.writeFileSync(
    recFile,
    JSON.stringify({ body: Buffer.from(JSON.stringify(rec)).toString('base64url'), mac: env.mac }),
  );
  const r = await importRestorePoints({ state, token, importSecret: SECRET });
  assert.deepEqual(r.imported, []);
  assert.equal(r.rejected.length, 1);
  assert.deepEqual(r.missing, ['copy-1']);
});

test('import catches up after a gap: 3 exports, one import from the first token → 3 restore points; retention', async (t) => {
  const w = await world();
  t.after(() => w.cleanup());
  const tokens: string[] = [];
  for (let n = 1; n <= 3; n++) {
    if (n > 1) scribble(w.file, n);
    const c = await exportRun(w, 'copy', n);
    const d = await exportRun(w, 'datamover', n);
    tokens.push(c.token, d.token);
    assert.equal(c.record.incremental, n > 1);
    assert.equal(d.record.incremental, n > 1);
    if (n > 1)
      assert.ok(
        c.record.bytesTransferred <= 16 * 4096 * 2,
        `incremental copy moved ${c.record.bytesTransferred}`,
      );
    assert.ok(
      c.record.exportDurationMs > 0 &&
        Date.parse(c.record.exportCompletedAt) >= Date.parse(c.record.consistentAt),
    );
  }
  const state = new DrStateStore(w.westState, 'west');
  // The first tokens of each stream name only the first restore point; the records bring the rest.
  const [copyToken, dmToken] = tokens as [string, string];
  assert.equal(readStreamDetails(copyToken, SECRET).payload.restorePoints.length, 1);
  assert.equal((await listImportable({ state, token: copyToken, importSecret: SECRET })).records.length, 3);
  const rc = await importRestorePoints({ state, token: copyToken, importSecret: SECRET });
  assert.deepEqual(rc.imported, ['copy-1', 'copy-2', 'copy-3']);
  const rd = await importRestorePoints({ state, token: dmToken, importSecret: SECRET, keepLast: 2 });
  assert.deepEqual(rd.imported, ['datamover-1', 'datamover-2', 'datamover-3']);
  assert.deepEqual(rd.forgotten, ['datamover-1']);
  const again = await importRestorePoints({ state, token: tokens[5]!, importSecret: SECRET });
  assert.deepEqual(again.imported, []);
  assert.equal(again.alreadyImported, 2);
  const st = await state.read();
  assert.deepEqual(
    Object.values(st.imports)
      .map((s) => s.restorePoints.map((r) => r.id))
      .sort(),
    [
      ['copy-1', 'copy-2', 'copy-3'],
      ['datamover-2', 'datamover-3'],
    ],
  );
  assert.ok(!fs.readFileSync(path.join(w.westState, 'dr-site.json'), 'utf8').includes('repo pass 1'));
  const rep = drReport(st);
  assert.equal(rep.length, 1);
  assert.equal(rep[0]?.rule321.ok, true);
  const copyPath = rep[0]?.paths.find((p) => p.path === 'snapshot-copy');
  assert.equal(copyPath?.rule321.media, 1, 'a snapshot copy alone is one medium');
  assert.ok(
    (copyPath?.rpoSeconds ?? -1) >= 0 &&
      (copyPath?.exportFirstMs ?? 0) > 0 &&
      copyPath?.exportIncrementalMs !== undefined,
  );
});

test('disaster: east region and state removed; west restores both paths byte for byte from the tokens alone', async (t) => {
  const w = await world();
  t.after(() => w.cleanup());
  await exportRun(w, 'copy', 1);
  await exportRun(w, 'datamover', 1);
  scribble(w.file, 9);
  const want = sha(w.file);
  const copyToken = (await exportRun(w, 'copy', 2)).token;
  const dmToken = (await exportRun(w, 'datamover', 2)).token;
  // Disaster: the source region and the source site's state are gone.
  fs.rmSync(w.east, { recursive: true, force: true });
  fs.rmSync(w.eastState, { recursive: true, force: true });

  const state = new DrStateStore(w.westState, 'west');
  await importRestorePoints({ state, token: copyToken, importSecret: SECRET });
  await importRestorePoints({ state, token: dmToken, importSecret: SECRET });
  const westPlatform = new LocalPlatform({ regions: { west: w.west } });
  const auto = await restoreAtDr({
    state,
    importSecret: SECRET,
    app: 'shop',
    platform: westPlatform,
    nameFor: () => 'auto',
  });
  // auto: the newest restore point (the datamover ran last), by its own path; a named copy restores by the copy.
  assert.deepEqual([auto.restorePoint, auto.path], ['datamover-2', 'repository']);
  const autoCopy = await restoreAtDr({
    state,
    importSecret: SECRET,
    app: 'shop',
    restorePoint: 'copy-2',
    platform: westPlatform,
    nameFor: () => 'auto-copy',
  });
  assert.equal(autoCopy.path, 'snapshot-copy', 'a copied snapshot is used when the restore point has one');
  for (const p of ['snapshot-copy', 'repository'] as const) {
    const r = await restoreAtDr({
      state,
      importSecret: SECRET,
      app: 'shop',
      path: p,
      platform: westPlatform,
      nameFor: () => `data-${p}`,
    });
    assert.equal(r.path, p);
    assert.match(r.restorePoint, /-2$/);
    assert.equal(
      sha(path.join(w.west, 'volumes', `data-${p}`)),
      want,
      `${p} restores the data byte for byte`,
    );
  }
  await assert.rejects(
    restoreAtDr({
      state,
      importSecret: SECRET,
      app: 'shop',
      path: 'repository',
      platform: westPlatform,
      nameFor: () => 'data-repository',
    }),
    /exists/,
  );
  const rep = drReport(await state.read());
  assert.ok(rep[0]?.paths.every((p) => p.restoreMs !== undefined && p.restoreMs >= 0));

  // The same report through the CLI (tern dr report --json).
  const cli = await runTern(['dr', 'report', '--site-dir', w.westState, '--site', 'west', '--json'], {
    TERN_IMPORT_SECRET: SECRET,
  });
  const out = JSON.parse(cli) as {
    app: string;
    rpoSeconds: number;
    paths: { path: string; restoreMs: number }[];
  }[];
  assert.equal(out[0]?.app, 'shop');
  assert.ok(out[0]!.rpoSeconds >= 0);
  assert.deepEqual(out[0]?.paths.map((p) => p.path).sort(), ['repository', 'snapshot-copy']);
  assert.ok(out[0]?.paths.every((p) => p.restoreMs >= 0));
});

function runTern(args: string[], env: Record<string, string> = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(NODE, [path.join(ROOT, 'src/cli/main.ts'), ...args], {
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let o = '';
    let e = '';
    child.stdout.on('data', (d: Buffer) => (o += d.toString()));
    child.stderr.on('data', (d: Buffer) => (e += d.toString()));
    child.on('exit', (code) =>
      code === 0 ? resolve(o) : reject(new Error(`tern ${args.join(' ')} exited ${code}: ${e}${o}`)),
    );
  });
}

function runChild(
  args: string[],
  killAt: string,
  script = 'dr-import-child.ts',
): Promise<{ killed: boolean; out: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(NODE, [path.join(ROOT, 'test/integration/fixtures', script), ...args, killAt], {
      env: { ...process.env, TERN_IMPORT_SECRET: SECRET },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('AT ')) child.kill('SIGKILL');
    });
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('error', reject);
    child.on('exit', (code, sig) => {
      if (sig === 'SIGKILL') resolve({ killed: true, out });
      else if (code === 0) resolve({ killed: false, out });
      else reject(new Error(`child failed (${code}): ${err}`));
    });
  });
}

test('a SIGKILLed import leaves no half-imported restore point, and the next import completes', async (t) => {
  const w = await world();
  t.after(() => w.cleanup());
  let token = '';
  for (let n = 1; n <= 3; n++) {
    if (n > 1) scribble(w.file, n);
    token = (await exportRun(w, 'copy', n)).token;
  }
  const want = sha(w.file);
  const tokenFile = path.join(w.dir, 'token');
  fs.writeFileSync(tokenFile, token);
  // Kill points: one fixed (after the warm-standby restore, before its record) and one chosen by a seed.
  const steps = [
    'listed',
    'checked:copy-1',
    'recorded:copy-1',
    'checked:copy-2',
    'checked:copy-3',
    'standby:copy-3',
  ];
  const seed = Number(process.env.TERN_TEST_SEED ?? 7);
  const seeded = steps[seed % (steps.length - 1)]!;
  t.diagnostic(`seeded kill point: ${seeded} (TERN_TEST_SEED=${seed})`);
  const state = new DrStateStore(w.westState, 'west');
  for (const killAt of [seeded, 'standby:copy-3']) {
    const before = Object.values((await state.read()).imports)[0]?.restorePoints.map((r) => r.id) ?? [];
    const r = await runChild([w.westState, tokenFile], killAt);
    assert.equal(r.killed, true, `child reached ${killAt}`);
    const after = Object.values((await state.read()).imports)[0]?.restorePoints.map((r) => r.id) ?? [];
    // Only whole restore points: those recorded before the kill point, none of the one in progress.
    const inProgress = killAt.split(':')[1];
    if (inProgress && !killAt.startsWith('recorded'))
      assert.ok(!after.includes(inProgress), `${inProgress} not recorded`);
    assert.ok(after.length >= before.length);
    if (killAt === 'standby:copy-3') assert.deepEqual(after, ['copy-1', 'copy-2']);
    for (const rp of Object.values((await state.read()).imports)[0]?.restorePoints ?? [])
      assert.ok(rp.volumes.length === 1 && rp.volumes[0]?.copy, 'complete records only');
  }
  const done = await importRestorePoints({
    state,
    token,
    importSecret: SECRET,
    restoreAfterImport: true,
    restore: { nameFor: (v) => `${v}-standby` },
  });
  assert.ok(done.imported.includes('copy-3'));
  const st = await state.read();
  assert.deepEqual(
    Object.values(st.imports)[0]?.restorePoints.map((r) => r.id),
    ['copy-1', 'copy-2', 'copy-3'],
  );
  assert.ok(Object.values(st.imports)[0]?.restorePoints.at(-1)?.standby);
  assert.equal(sha(path.join(w.west, 'volumes', 'data-standby')), want, 'warm standby holds the newest data');
});

test('an export SIGKILLed mid-copy publishes nothing and leaves no copy; the next export and import complete', async (t) => {
  for (const mode of ['copy', 'datamover'] as const) {
    const w = await world();
    t.after(() => w.cleanup());
    const r = await runChild([w.east, w.west, w.vault, w.eastState], mode, 'dr-export-child.ts');
    assert.equal(r.killed, true, `${mode} export reached the kill point`);
    const src = await new SourceStateStore(w.eastState, 'east').read();
    const stream = Object.values(src.streams)[0];
    assert.ok(stream, 'the stream id was made durable before the data moved');
    assert.deepEqual(stream.restorePoints, []);
    const store = await openStore(mode === 'copy' ? w.west : w.vault);
    const { records } = await listRecords(store, stream.id, recordKey(SECRET, stream.id));
    assert.deepEqual(records, [], 'no record for the killed export');
    const copies = await w.platform.listSnapshots({ ...w.volume, id: 'west/data', region: 'west' });
    assert.deepEqual(copies, [], 'no half copy is listed in west');

    const want = sha(w.file);
    const { token } = await exportRun(w, mode, 1);
    const state = new DrStateStore(w.westState, 'west');
    const imp = await importRestorePoints({ state, token, importSecret: SECRET });
    assert.deepEqual(imp.imported, [`${mode}-1`]);
    const westPlatform = new LocalPlatform({ regions: { west: w.west } });
    await restoreAtDr({
      state,
      importSecret: SECRET,
      app: 'shop',
      platform: westPlatform,
      nameFor: () => 'back',
    });
    assert.equal(sha(path.join(w.west, 'volumes', 'back')), want);
  }
});

test('an import policy runs when due: first at once, then on its schedule, with retention and a warm standby', async (t) => {
  const w = await world();
  t.after(() => w.cleanup());
  const { token } = await exportRun(w, 'copy', 1);
  const clock = new ManualClock(Date.UTC(2026, 10, 25, 10, 5));
  const westPlatform = new LocalPlatform({ regions: { west: w.west } });
  const dr = new DrService({
    site: 'west',
    stateDir: w.westState,
    importSecret: SECRET,
    clock,
    platform: westPlatform,
  });
  await assert.rejects(
    dr.createImportPolicy({ name: 'bad', token: token.slice(0, -5), frequency: '@hourly' }),
    InputError,
  );
  await dr.createImportPolicy({
    name: 'shop-from-east',
    token,
    frequency: '@hourly',
    keepLast: 2,
    restoreAfterImport: true,
    standby: { prefix: 'standby-' },
  });
  const first = await dr.tick();
  assert.deepEqual(
    first.map((r) => [r.policy, r.result?.imported]),
    [['shop-from-east', ['copy-1']]],
  );
  for (let n = 2; n <= 3; n++) {
    scribble(w.file, n);
    await exportRun(w, 'copy', n);
  }
  clock.advance(30 * 60_000); // 10:35: the 11:00 run is not due yet
  assert.deepEqual(await dr.tick(), []);
  clock.advance(30 * 60_000); // 11:05
  const second = await dr.tick();
  assert.deepEqual(second[0]?.result?.imported, ['copy-2', 'copy-3']);
  assert.deepEqual(second[0]?.result?.forgotten, ['copy-1']);
  assert.equal(
    sha(path.join(w.west, 'volumes', 'standby-data')),
    sha(w.file),
    'the standby holds the newest data',
  );
  const [pol] = await dr.listImportPolicies();
  assert.equal(pol?.lastResult?.imported, 2);
  assert.equal(pol?.lastRunAt, clock.now().toISOString());
  const rep = await dr.report();
  assert.equal(rep[0]?.paths[0]?.restorePoints, 2);
  const listed = JSON.parse(
    await runTern(['dr', 'policy', 'list', '--site-dir', w.westState, '--site', 'west', '--json'], {
      TERN_IMPORT_SECRET: SECRET,
    }),
  ) as { name: string; token?: string }[];
  assert.deepEqual(
    listed.map((p) => [p.name, p.token]),
    [['shop-from-east', undefined]],
  );
  const ran = JSON.parse(
    await runTern(
      ['dr', 'policy', 'run', 'shop-from-east', '--site-dir', w.westState, '--site', 'west', '--json'],
      {
        TERN_IMPORT_SECRET: SECRET,
      },
    ),
  ) as { result: { imported: string[] } }[];
  assert.deepEqual(ran[0]?.result.imported, []);
});

test('demo smoke: tern demo --size 32MiB --json prints the table fields with sane RPO/RTO', async () => {
  const out = await runTern(['demo', '--size', '32MiB', '--json']);
  const r = JSON.parse(out) as {
    size: number;
    paths: {
      path: string;
      exportFirstMs: number;
      exportIncrementalMs: number;
      incrementalPercent: number;
      restoreMs: number;
      rtoMs: number;
      rpoMs: number;
      bytesFirst: number;
      bytesIncremental: number;
      checksumOk: boolean;
    }[];
    report: { rule321: { ok: boolean } }[];
  };
  assert.equal(r.size, 32 << 20);
  assert.deepEqual(r.paths.map((p) => p.path).sort(), ['repository', 'snapshot-copy']);
  for (const p of r.paths) {
    assert.equal(p.checksumOk, true, `${p.path} data checks out`);
    for (const k of [
      'exportFirstMs',
      'exportIncrementalMs',
      'restoreMs',
      'rtoMs',
      'rpoMs',
      'incrementalPercent',
    ] as const)
      assert.ok(Number.isFinite(p[k]) && p[k] >= 0, `${p.path}.${k} = ${p[k]}`);
    assert.ok(p.rtoMs >= p.restoreMs && p.rtoMs < 120_000, `${p.path} RTO ${p.rtoMs}`);
    // RPO: the data restored is the second run's, written before the second export and the disaster.
    assert.ok(p.rpoMs > 0 && p.rpoMs < 120_000, `${p.path} RPO ${p.rpoMs}`);
    assert.equal(p.bytesFirst >= 32 << 20 ? true : p.bytesFirst > 0, true);
  }
  const copy = r.paths.find((p) => p.path === 'snapshot-copy')!;
  assert.ok(copy.bytesIncremental < copy.bytesFirst / 10, 'the incremental copy moves about the change');
  assert.equal(r.report[0]?.rule321.ok, true);
});
