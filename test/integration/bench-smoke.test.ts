/**
 * Keeps `npm run bench` from rotting: the data generators do what docs/benchmarks.md says, and the whole
 * harness runs end to end against Tern at a tiny size (no bench peers needed), restores verified.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmod, copyFile, mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { zstdCompressSync } from 'node:zlib';
import { scatterOverwrite, writeRandomFile, writeSmallFileTree, writeTextFile } from '../../bench/data.ts';
import { hashFile, hashTree } from '../../bench/measure.ts';
import { TernTool } from '../../bench/tools.ts';

const ROOT = path.resolve(import.meta.dirname, '..', '..');

async function tmp(t: { after: (fn: () => Promise<void>) => void }): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'tern-bench-smoke-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

test('random file is reproducible from its seed; the 1% overwrite changes only the ranges it reports', async (t) => {
  const dir = await tmp(t);
  const size = 4 * 1024 * 1024 + 123;
  const a = path.join(dir, 'a');
  const b = path.join(dir, 'b');
  await writeRandomFile(a, size, 'seed-1');
  await writeRandomFile(b, size, 'seed-1');
  assert.equal(await hashFile(a), await hashFile(b));
  await writeRandomFile(b, size, 'seed-2');
  assert.notEqual(await hashFile(a), await hashFile(b));
  assert.equal((await stat(a)).size, size);

  await copyFile(a, b);
  const ranges = await scatterOverwrite(b, size, 'seed-1');
  const before = await readFile(a);
  const after = await readFile(b);
  assert.equal(after.length, size);
  const inRange = new Uint8Array(size);
  let covered = 0;
  for (let i = 0; i < ranges.length; i++) {
    const r = ranges[i]!;
    assert.ok(r.length > 0 && r.offset >= 0 && r.offset + r.length <= size);
    if (i > 0) assert.ok(r.offset > ranges[i - 1]!.offset + ranges[i - 1]!.length, 'sorted, merged ranges');
    inRange.fill(1, r.offset, r.offset + r.length);
    covered += r.length;
  }
  assert.ok(covered <= size * 0.01 + 200 && covered > size * 0.005, `about 1% covered: ${covered}`);
  let differing = 0;
  for (let i = 0; i < size; i++) {
    if (before[i] !== after[i]) {
      differing++;
      assert.equal(inRange[i], 1, `byte ${i} changed outside the reported ranges`);
    }
  }
  assert.ok(differing > covered * 0.95, 'the reported ranges were really rewritten');
});

test('compressible data compresses to about a quarter and does not repeat', async (t) => {
  const dir = await tmp(t);
  const file = path.join(dir, 'text.log');
  await writeTextFile(file, 8 * 1024 * 1024, 's');
  const data = await readFile(file);
  assert.equal(data.length, 8 * 1024 * 1024);
  const ratio = zstdCompressSync(data).length / data.length;
  assert.ok(ratio > 0.15 && ratio < 0.35, `zstd ratio ${ratio}`);
  const halves = [data.subarray(0, 4 << 20), data.subarray(4 << 20)];
  const both = zstdCompressSync(data).length;
  const apart = zstdCompressSync(halves[0]!).length + zstdCompressSync(halves[1]!).length;
  assert.ok(both > apart * 0.9, 'the second half is not a copy of the first');
});

test('small-file tree: sizes 0–16 KiB in nested directories; the fingerprint sees content and mode', async (t) => {
  const dir = await tmp(t);
  const root = path.join(dir, 'tree');
  const summary = await writeSmallFileTree(root, 250, 's');
  assert.equal(summary.files, 250);
  const found: string[] = [];
  const walk = async (d: string): Promise<void> => {
    for (const e of await readdir(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) await walk(p);
      else found.push(p);
    }
  };
  await walk(root);
  assert.equal(found.length, 250);
  let total = 0;
  for (const f of found) {
    const s = (await stat(f)).size;
    assert.ok(s <= 16 * 1024);
    total += s;
  }
  assert.equal(total, summary.bytes);
  assert.equal(path.relative(root, found[0]!).split(path.sep).length, 4, 'three directory levels');

  const h1 = await hashTree(root);
  assert.equal(await hashTree(root), h1);
  await chmod(found[0]!, 0o600);
  const h2 = await hashTree(root);
  assert.notEqual(h2, h1);
  await writeSmallFileTree(path.join(dir, 'other'), 250, 'another seed');
  assert.notEqual(await hashTree(path.join(dir, 'other')), h1);
});

test('npm run bench end to end against Tern at a tiny size: every row ok, restores verified', async (t) => {
  if (!(await new TernTool(ROOT).available())) {
    t.skip('the tern CLI has no repo/backup/restore verbs yet');
    return;
  }
  const dir = await tmp(t);
  const out = path.join(dir, 'out');
  const res = spawnSync(
    process.execPath,
    [
      path.join(ROOT, 'bench', 'run.ts'),
      '--tools',
      'tern',
      '--size',
      '6MiB',
      '--files',
      '300',
      '--dir',
      dir,
      '--out',
      out,
    ],
    { encoding: 'utf8', timeout: 120_000 },
  );
  assert.equal(res.status, 0, `bench failed:\n${res.stderr}\n${res.stdout}`);
  const jsonFile = (await readdir(out)).find((f) => f.endsWith('.json'));
  assert.ok(jsonFile);
  const result = JSON.parse(await readFile(path.join(out, jsonFile), 'utf8')) as {
    rows: {
      scenario: string;
      op: string;
      tool: string;
      check: string;
      seconds?: number;
      onDiskSeconds?: number;
      floorSeconds?: number;
    }[];
  };
  const ops = result.rows.map((r) => `${r.scenario}/${r.op}`).sort();
  assert.deepEqual(ops, [
    'chunks/backup',
    'chunks/incremental-ranges',
    'chunks/restore-ranges',
    'compressible/backup',
    'compressible/restore',
    'files/backup',
    'files/restore',
    'overwrite/incremental',
    'overwrite/incremental-ranges',
    'overwrite/restore',
    'overwrite/restore-ranges',
    'random/backup',
    'random/restore',
    'tree/backup',
    'tree/restore',
  ]);
  for (const r of result.rows) {
    assert.equal(r.check, 'ok', `${r.scenario}/${r.op}`);
    assert.ok((r.seconds ?? 0) > 0);
    // Restores also have the time until their data is on disk: the command's time plus a sync after it.
    if (r.op.startsWith('restore')) assert.ok((r.onDiskSeconds ?? 0) >= r.seconds!, `${r.scenario}/${r.op}`);
    else assert.equal(r.onDiskSeconds, undefined, `${r.scenario}/${r.op}`);
    // The device's own time for the same bytes: measured for the restores of the two full image backups only.
    if (['random/restore', 'compressible/restore'].includes(`${r.scenario}/${r.op}`))
      assert.ok((r.floorSeconds ?? 0) > 0, `${r.scenario}/${r.op} floor`);
    else assert.equal(r.floorSeconds, undefined, `${r.scenario}/${r.op}`);
  }
  assert.match(res.stdout, /The device alone .*random file \d+\.\d\d s .*compressible text file \d+\.\d\d s/);
  assert.match(res.stdout, /\| random file \(6\.0 MiB\) \| full backup \| tern \|/);
  assert.match(res.stdout, /\| random file in a directory \(6\.0 MiB\) \| full backup \| tern \|/);
  // Twice --size in 4 KiB chunks.
  assert.match(
    res.stdout,
    /\| random image, 4 KiB chunks \(12\.0 MiB in 3072 chunks\) \| full backup \| tern \|/,
  );
  assert.deepEqual(
    (await readdir(dir)).filter((f) => f.startsWith('tern-bench-')),
    [],
    'work directory removed',
  );
});
