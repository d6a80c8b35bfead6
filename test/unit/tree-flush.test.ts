/**
 * The background flush of a tree restore (src/repo/tree/flush.ts): periodic syncs while running, one more at
 * the end, none after; a failing sync fails the restore; without sync(1) the restore completes and says so.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { StorageError } from '../../src/core/index.ts';
import { BackgroundFlush } from '../../src/repo/tree/flush.ts';
import { restoreTree } from '../../src/repo/tree/index.ts';
import { backedUp } from './tree-fixtures.ts';

test('syncs periodically while running, once more on finish, and never after', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-flush-'));
  try {
    const flush = new BackgroundFlush(dir, 10);
    flush.start();
    for (let i = 0; i < 200 && flush.syncs < 2; i++) await sleep(10);
    assert.ok(flush.syncs >= 2, `${flush.syncs} periodic syncs`);
    const before = flush.syncs;
    await flush.finish();
    assert.ok(flush.syncs > before, 'a final sync');
    const after = flush.syncs;
    await sleep(100);
    assert.equal(flush.syncs, after, 'no sync after finish');
    assert.equal(flush.unavailable, false);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('finish and stop do not wait for the pause between syncs', async () => {
  // The pause's sleep(1) outlived the loop it was killed with and held the shell's output open: finish waited
  // for the rest of the pause (up to 250 ms at the default interval, ~125 ms on average, at every tree restore).
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-flush-'));
  try {
    for (const end of ['finish', 'stop'] as const) {
      const flush = new BackgroundFlush(dir, 20_000);
      flush.start();
      await sleep(300); // the shell is in its first pause
      const t0 = performance.now();
      await flush[end]();
      const took = performance.now() - t0;
      assert.ok(took < 5000, `${end} took ${took.toFixed(0)} ms with 20 s pauses`);
      if (end === 'finish') assert.equal(flush.syncs, 1, 'only the final sync');
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a periodic sync that failed makes finish throw, even when the last one would succeed', async () => {
  const dir = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'tern-flush-')), 'late');
  try {
    const flush = new BackgroundFlush(dir, 10);
    flush.start();
    await sleep(200);
    fs.mkdirSync(dir);
    await assert.rejects(flush.finish(), /flushing the restored data to disk .*No such file or directory/);
  } finally {
    fs.rmSync(path.dirname(dir), { recursive: true, force: true });
  }
});

test('a sync that fails makes finish throw a StorageError naming the directory', async () => {
  const flush = new BackgroundFlush('/nonexistent/tern-flush-target');
  flush.start();
  await assert.rejects(flush.finish(), (err: unknown) => {
    assert.ok(err instanceof StorageError, String(err));
    assert.match(
      (err as Error).message,
      /flushing the restored data to disk \(\/nonexistent\/tern-flush-target\)/,
    );
    return true;
  });
});

test('a tree restore reports its final sync as a phase; without sync(1) it completes, with a warning that nothing was flushed', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-flush-'));
  const src = path.join(dir, 'src');
  fs.mkdirSync(src);
  fs.writeFileSync(path.join(src, 'a.txt'), 'hello\n');
  const { repo, tree } = await backedUp(dir, src);
  const saved = process.env.PATH;
  try {
    const phases: string[] = [];
    const ok = await restoreTree(repo, tree, path.join(dir, 'with-sync'), {
      onProgress: (p) => phases.push(p.phase),
    });
    assert.deepEqual(ok.warnings, []);
    // The final sync is reported as its own phase, then the restore's last report.
    assert.deepEqual(phases.slice(-2), ['flush', 'restore']);
    process.env.PATH = path.join(dir, 'no-such-bin');
    const r = await restoreTree(repo, tree, path.join(dir, 'without-sync'));
    assert.equal(fs.readFileSync(path.join(dir, 'without-sync', 'a.txt'), 'utf8'), 'hello\n');
    assert.equal(r.warnings.length, 1);
    assert.match(r.warnings[0]!, /sh or sync\(1\) not found: the restored files were not flushed to disk/);
  } finally {
    process.env.PATH = saved;
    await repo.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
