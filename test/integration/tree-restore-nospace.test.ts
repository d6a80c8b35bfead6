/**
 * A full disk during a tree restore: a real tmpfs too small for the tree. The restore fails with NoSpaceError,
 * and no file that did not fit is left looking complete (nor any temporary file), both from an in-memory
 * reader (files written by the main thread) and from a repository (small files written by its workers).
 * And a full disk under the repository during a backup.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { NoSpaceError } from '../../src/core/index.ts';
import { backupImage, Repository, restoreImage } from '../../src/repo/index.ts';
import { backupTree, restoreTree } from '../../src/repo/tree/index.ts';
import { LocalStore } from '../../src/storage/index.ts';
import { MemoryBlobs } from '../unit/tree-memory-repo.ts';
import { backedUp } from '../unit/tree-fixtures.ts';

const canMount = process.getuid?.() === 0 && process.platform === 'linux';

/** A temp dir with a tmpfs of `size` mounted at `mnt`, unmounted and removed after the test. */
function tmpfs(t: TestContext, size: string): { dir: string; mnt: string } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-tree-nospace-'));
  const mnt = path.join(dir, 'mnt');
  fs.mkdirSync(mnt);
  execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', mnt]);
  t.after(() => {
    execFileSync('umount', [mnt]);
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return { dir, mnt };
}

test(
  'restore onto a full filesystem fails with NoSpaceError and leaves no partial file',
  { skip: !canMount && 'needs root to mount a tmpfs' },
  async (t) => {
    const { dir, mnt } = tmpfs(t, '6m');
    const src = path.join(dir, 'src');
    fs.mkdirSync(src);
    const sums = new Map<string, string>();
    for (let i = 0; i < 6; i++) {
      const data = randomBytes(1536 * 1024 + i);
      fs.writeFileSync(path.join(src, `part${i}.bin`), data);
      sums.set(`part${i}.bin`, createHash('sha256').update(data).digest('hex'));
    }
    const repo = new MemoryBlobs();
    const { tree } = await backupTree(repo, src, {});
    const target = path.join(mnt, 'restore');
    await assert.rejects(restoreTree(repo, tree, target, { fileConcurrency: 2 }), (err: unknown) => {
      assert.ok(err instanceof NoSpaceError, String(err));
      assert.match((err as Error).message, /no space left on device while restoring .*part\d\.bin/);
      return true;
    });
    const left = fs.readdirSync(target);
    assert.ok(left.length < 6);
    for (const name of left) {
      assert.ok(!name.startsWith('.tern-restore-'), `temporary file ${name} left behind`);
      const got = createHash('sha256')
        .update(fs.readFileSync(path.join(target, name)))
        .digest('hex');
      assert.equal(got, sums.get(name), `${name} is complete-looking but wrong`);
    }
  },
);

test(
  'the same through a repository, whose workers write the small files: NoSpaceError, nothing partial left',
  { skip: !canMount && 'needs root to mount a tmpfs' },
  async (t) => {
    const { dir, mnt } = tmpfs(t, '4m');
    const src = path.join(dir, 'src');
    const sums = new Map<string, string>();
    const put = (rel: string, data: Buffer): void => {
      fs.mkdirSync(path.dirname(path.join(src, rel)), { recursive: true });
      fs.writeFileSync(path.join(src, rel), data);
      sums.set(rel, createHash('sha256').update(data).digest('hex'));
    };
    for (let i = 0; i < 3; i++) put(`top${i}.bin`, randomBytes(100 * 1024 + i));
    for (let i = 0; i < 40; i++) put(`d/e/f${i}.bin`, randomBytes(150 * 1024 + i));
    const { repo, tree } = await backedUp(dir, src);
    t.after(() => repo.close());
    const target = path.join(mnt, 'restore');
    await assert.rejects(restoreTree(repo, tree, target), (err: unknown) => {
      assert.ok(err instanceof NoSpaceError, String(err));
      assert.match((err as Error).message, /no space left on device while restoring .*\.bin/);
      return true;
    });
    // The directory being filled under a temporary name is gone; top-level files are whole or absent.
    for (const name of fs.readdirSync(target)) {
      assert.ok(!name.startsWith('.tern-restore-'), `temporary entry ${name} left behind`);
      const got = createHash('sha256')
        .update(fs.readFileSync(path.join(target, name)))
        .digest('hex');
      assert.equal(got, sums.get(name), `${name} is complete-looking but wrong`);
    }
    assert.equal(fs.existsSync(path.join(target, 'd')), false);
  },
);

test(
  'a backup into a full repository filesystem (packs written with O_DIRECT): NoSpaceError, no snapshot, no temporary pack; with room again the next backup completes',
  { skip: !canMount && 'needs root to mount a tmpfs' },
  async (t) => {
    const { dir, mnt } = tmpfs(t, '40m');
    const store = new LocalStore(path.join(mnt, 'repo'));
    await (await Repository.init(store, 'pw', { kdf: { N: 1024, r: 8, p: 1 } })).close();
    const repo = await Repository.open(store, 'pw');
    t.after(() => repo.close());
    // Random data in 1 MiB chunks: ~64 MiB of packs do not fit in 40 MiB.
    const img = path.join(dir, 'volume.img');
    const data = randomBytes(64 * 1024 * 1024);
    fs.writeFileSync(img, data);
    const backup = async (): Promise<string> => {
      const session = await repo.startBackup();
      try {
        const r = await backupImage(session, img);
        await session.saveSnapshot({
          paths: [img],
          tags: [],
          root: { kind: 'image', map: r.map, size: r.size },
          summary: { bytesRead: r.bytesRead, bytesAdded: r.bytesAdded, durationMs: 0 },
        });
        return r.map;
      } finally {
        await session.close();
      }
    };
    await assert.rejects(backup(), (err: unknown) => {
      assert.ok(err instanceof NoSpaceError, String(err));
      assert.match((err as Error).message, /no space left writing (data|index)\//);
      return true;
    });
    // Where the kernel takes O_DIRECT on tmpfs (Linux ≥ 6.6) the packs that fitted went that way, and the
    // one that did not failed there.
    if (store.directIo) assert.ok(store.directPuts >= 1, `${store.directPuts} packs written with O_DIRECT`);
    assert.deepEqual(await repo.listSnapshots(), [], 'no snapshot of the failed backup');
    const temps = fs
      .readdirSync(path.join(mnt, 'repo'), { recursive: true, encoding: 'utf8' })
      .filter((n) => /\.tmp-[0-9a-f]{12}$/.test(n));
    assert.deepEqual(temps, [], 'no temporary object left');
    // Room again: the next backup completes and restores byte for byte.
    execFileSync('mount', ['-o', 'remount,size=160m', mnt]);
    const map = await backup();
    assert.equal((await repo.listSnapshots()).length, 1);
    const out = path.join(dir, 'restored.img');
    await restoreImage(repo, map, out);
    assert.ok(fs.readFileSync(out).equals(data));
  },
);
