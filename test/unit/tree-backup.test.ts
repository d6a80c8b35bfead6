import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { CancelledError, ConflictError, IntegrityError } from '../../src/core/index.ts';
import { randomBytes } from 'node:crypto';
import type { BlobId, TreeNode } from '../../src/repo/api.ts';
import { backupTree, encodeTree, listTree, restoreTree, walkTree } from '../../src/repo/tree/index.ts';
import { MemoryBlobs } from './tree-memory-repo.ts';
import { allocatedBytes, buildFixture, describeTree, isRoot } from './tree-fixtures.ts';

function tmpdir(t: { after: (fn: () => void) => void }): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-tree-'));
  t.after(() => {
    // Read-only directories from the fixture must be writable again to be removed.
    const walk = (p: string): void => {
      for (const e of fs.readdirSync(p, { withFileTypes: true }))
        if (e.isDirectory()) {
          fs.chmodSync(path.join(p, e.name), 0o755);
          walk(path.join(p, e.name));
        }
    };
    walk(dir);
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return dir;
}

test('backup and restore a tree with every kind of entry, byte-for-byte with metadata', async (t) => {
  const dir = tmpdir(t);
  const src = path.join(dir, 'src');
  buildFixture(src);
  const repo = new MemoryBlobs();
  const { tree, stats } = await backupTree(repo, src, {});
  assert.deepEqual(stats.warnings, []);
  assert.equal(stats.dirs, 9);
  const files = [...describeTree(src).values()].filter((f) => f.type === 'file').length;
  assert.equal(stats.filesNew + stats.filesUnmodified, files);
  // Holes are not read as data blobs: the sparse file's 40 MiB does not reach the store.
  assert.ok(repo.savedBytes < 6 * 1024 * 1024, `stored ${repo.savedBytes}`);

  const dst = path.join(dir, 'dst');
  const res = await restoreTree(repo, tree, dst, {});
  assert.equal(res.files, files);
  assert.deepEqual(describeTree(dst), describeTree(src));
  assert.ok(allocatedBytes(path.join(dst, 'sparse.img')) < 2 * 1024 * 1024, 'restored sparse');
  assert.equal(
    fs.statSync(path.join(dst, 'hard/one')).ino,
    fs.statSync(path.join(dst, 'nested/hard-three')).ino,
  );
  assert.ok(fs.statSync(path.join(dst, 'a-fifo')).isFIFO());
  // The root directory's own mode and time come back too; no temporary names are left.
  assert.equal(fs.statSync(dst).mode & 0o7777, fs.statSync(src).mode & 0o7777);
  const leftovers = [...describeTree(dst).keys()].filter((k) => k.includes('.tern-restore-'));
  assert.deepEqual(leftovers, []);
});

test('an unchanged tree backs up to the same id without reading; changes are read alone', async (t) => {
  const dir = tmpdir(t);
  const src = path.join(dir, 'src');
  buildFixture(src);
  const repo = new MemoryBlobs();
  const first = await backupTree(repo, src, {});
  const again = await backupTree(repo, src, { parentTree: first.tree, reader: repo });
  assert.equal(again.tree, first.tree);
  assert.equal(again.stats.bytesRead, 0);
  assert.equal(again.stats.bytesAdded, 0);
  assert.equal(again.stats.filesNew + again.stats.filesChanged, 0);

  fs.appendFileSync(path.join(src, 'many/f010.txt'), 'more\n');
  fs.writeFileSync(path.join(src, 'nested/new.txt'), 'brand new\n');
  fs.rmSync(path.join(src, 'secret'));
  const changed = await backupTree(repo, src, { parentTree: first.tree, reader: repo });
  assert.notEqual(changed.tree, first.tree);
  assert.equal(changed.stats.filesChanged, 1);
  assert.equal(changed.stats.filesNew, 1);
  assert.equal(changed.stats.bytesRead, fs.statSync(path.join(src, 'many/f010.txt')).size + 10);
  const dst = path.join(dir, 'dst');
  await restoreTree(repo, changed.tree, dst, {});
  assert.deepEqual(describeTree(dst), describeTree(src));
});

test('listTree, path filter, walkTree reaching every stored blob once per tree', async (t) => {
  const dir = tmpdir(t);
  const src = path.join(dir, 'src');
  buildFixture(src, 1);
  const repo = new MemoryBlobs();
  const { tree } = await backupTree(repo, src, {});
  const all: string[] = [];
  for await (const e of listTree(repo, tree, { recursive: true })) all.push(e.path);
  assert.deepEqual(all.sort(), [...describeTree(src).keys()].sort());
  const top: string[] = [];
  for await (const e of listTree(repo, tree)) top.push(e.path);
  assert.ok(top.includes('nested') && !top.includes('nested/a'));
  const sub: { path: string; node: TreeNode }[] = [];
  for await (const e of listTree(repo, tree, { path: '/nested/a/b', recursive: true })) sub.push(e);
  assert.deepEqual(
    sub.map((e) => e.path),
    ['nested/a/b/c', 'nested/a/b/c/deep.txt'],
  );
  const one: string[] = [];
  for await (const e of listTree(repo, tree, { path: 'hello.txt' })) one.push(e.path);
  assert.deepEqual(one, ['hello.txt']);

  const seen = new Map<BlobId, 'data' | 'tree'>();
  const treesVisited: BlobId[] = [];
  await walkTree(repo, tree, (id, type) => {
    seen.set(id, type);
    if (type === 'tree') treesVisited.push(id);
  });
  assert.equal(new Set(treesVisited).size, treesVisited.length);
  assert.deepEqual([...seen.keys()].sort(), [...repo.blobs.keys()].sort());
  for (const [id, type] of seen) assert.equal(repo.blobs.get(id)?.type, type);
});

test('restore refuses to overwrite unless asked; include restores a subset', async (t) => {
  const dir = tmpdir(t);
  const src = path.join(dir, 'src');
  buildFixture(src, 1);
  const repo = new MemoryBlobs();
  const { tree } = await backupTree(repo, src, {});
  const dst = path.join(dir, 'dst');
  fs.mkdirSync(dst);
  fs.writeFileSync(path.join(dst, 'hello.txt'), 'old content');
  await assert.rejects(restoreTree(repo, tree, dst, {}), ConflictError);
  assert.equal(fs.readFileSync(path.join(dst, 'hello.txt'), 'utf8'), 'old content');
  await restoreTree(repo, tree, dst, { overwrite: true });
  assert.deepEqual(describeTree(dst), describeTree(src));

  const part = path.join(dir, 'part');
  const res = await restoreTree(repo, tree, part, { include: ['nested/a', 'hello.txt'] });
  assert.deepEqual([...describeTree(part).keys()].sort(), [
    'hello.txt',
    'nested',
    'nested/a',
    'nested/a/b',
    'nested/a/b/c',
    'nested/a/b/c/deep.txt',
  ]);
  assert.equal(res.files, 2);
});

test('a failing chunk leaves no complete-looking file and no temporary file', async (t) => {
  const dir = tmpdir(t);
  const src = path.join(dir, 'src');
  fs.mkdirSync(src);
  fs.writeFileSync(path.join(src, 'big.bin'), Buffer.alloc(3 * 1024 * 1024, 7).fill(9, 1_500_000));
  fs.writeFileSync(path.join(src, 'small.txt'), 'fine');
  const repo = new MemoryBlobs();
  const { tree } = await backupTree(repo, src, {
    chunker: { minSize: 4096, avgSize: 65536, maxSize: 1 << 20 },
  });
  // Corrupt one data chunk of big.bin (the last one saved that is not small.txt).
  const victim = [...repo.blobs.entries()].find(([, b]) => b.type === 'data' && b.data.length > 4)!;
  victim[1].data[0]! ^= 0xff;
  const dst = path.join(dir, 'dst');
  await assert.rejects(restoreTree(repo, tree, dst, {}), IntegrityError);
  assert.equal(fs.existsSync(path.join(dst, 'big.bin')), false);
  assert.deepEqual(
    fs.readdirSync(dst).filter((n) => n.startsWith('.tern-restore-')),
    [],
  );
});

test('a tree blob with an escaping name is rejected before anything is written outside', async (t) => {
  const dir = tmpdir(t);
  const repo = new MemoryBlobs();
  const evil: TreeNode = {
    name: '../escape',
    type: 'file',
    mode: 0o644,
    uid: 0,
    gid: 0,
    mtimeMs: 0,
    size: 0,
    content: [],
  };
  const { id } = await repo.saveBlob('tree', encodeTree({ nodes: [evil] }));
  await assert.rejects(restoreTree(repo, id, path.join(dir, 'dst'), {}), IntegrityError);
  assert.equal(fs.existsSync(path.join(dir, 'escape')), false);
});

test('files vanishing during backup are warnings, the rest is backed up', async (t) => {
  const dir = tmpdir(t);
  const src = path.join(dir, 'src');
  fs.mkdirSync(path.join(src, 'victims'), { recursive: true });
  fs.writeFileSync(path.join(src, 'aaa.txt'), 'first file');
  for (let i = 0; i < 200; i++) fs.writeFileSync(path.join(src, 'victims', `v${i}`), `victim ${i}`);
  const repo = new MemoryBlobs();
  let deleted = false;
  const writer = {
    hasBlob: (id: BlobId) => repo.hasBlob(id),
    saveBlob: async (type: 'data' | 'tree', data: Buffer) => {
      // When the first victim is saved, every other victim has been listed and stat'ed but not yet read.
      if (!deleted && data.toString().startsWith('victim')) {
        deleted = true;
        for (let i = 0; i < 200; i++)
          if (`victim ${i}` !== data.toString())
            fs.rmSync(path.join(src, 'victims', `v${i}`), { force: true });
      }
      return repo.saveBlob(type, data);
    },
  };
  const { tree, stats } = await backupTree(writer, src, { fileConcurrency: 1 });
  assert.ok(stats.warnings.length > 0);
  for (const w of stats.warnings) assert.match(w, /^victims\/v\d+: vanished/);
  const dst = path.join(dir, 'dst');
  await restoreTree(repo, tree, dst, {});
  for (const name of fs.readdirSync(path.join(dst, 'victims')))
    assert.equal(fs.readFileSync(path.join(dst, 'victims', name), 'utf8'), `victim ${name.slice(1)}`);
  assert.equal(fs.readdirSync(path.join(dst, 'victims')).length + stats.warnings.length, 200);
});

test('excludes skip names anywhere and anchored paths', async (t) => {
  const dir = tmpdir(t);
  const src = path.join(dir, 'src');
  buildFixture(src, 1);
  fs.writeFileSync(path.join(src, 'nested/a/skip.tmp'), 'x');
  const repo = new MemoryBlobs();
  const { tree } = await backupTree(repo, src, { excludes: ['*.tmp', '/many', 'nested/a/b/**'] });
  const names: string[] = [];
  for await (const e of listTree(repo, tree, { recursive: true })) names.push(e.path);
  assert.ok(!names.some((n) => n.endsWith('.tmp') || n.startsWith('many') || n.startsWith('nested/a/b/')));
  // 'dir/**' is everything inside dir, like gitignore; the directory itself stays.
  assert.ok(names.includes('nested/a/b') && names.includes('hello.txt'));
});

test('ownership is restored when running as root', { skip: !isRoot && 'needs root' }, async (t) => {
  const dir = tmpdir(t);
  const src = path.join(dir, 'src');
  buildFixture(src, 1);
  const repo = new MemoryBlobs();
  const { tree } = await backupTree(repo, src, {});
  const dst = path.join(dir, 'dst');
  await restoreTree(repo, tree, dst, {});
  assert.equal(fs.statSync(path.join(dst, 'hello.txt')).uid, 1234);
  assert.equal(fs.lstatSync(path.join(dst, 'link-to-hello')).gid, 8765);
  assert.equal(fs.statSync(path.join(dst, 'nested/a')).uid, 1111);
  assert.equal(fs.statSync(path.join(dst, 'setuid-bin')).mode & 0o7777, 0o4755);
});

test('a small change inside a 20 MiB file stores only the chunks around it', async (t) => {
  const dir = tmpdir(t);
  const src = path.join(dir, 'src');
  fs.mkdirSync(src);
  const big = path.join(src, 'big.bin');
  fs.writeFileSync(big, randomBytes(20 * 1024 * 1024));
  const repo = new MemoryBlobs();
  const first = await backupTree(repo, src, {});
  const stored = repo.savedBytes;
  const fd = fs.openSync(big, 'r+');
  fs.writeSync(fd, Buffer.from('a few changed bytes'), 0, 19, 10 * 1024 * 1024);
  fs.closeSync(fd);
  const second = await backupTree(repo, src, { parentTree: first.tree, reader: repo });
  assert.equal(second.stats.filesChanged, 1);
  assert.equal(second.stats.bytesRead, 20 * 1024 * 1024);
  const added = repo.savedBytes - stored;
  assert.ok(added < 9 * 1024 * 1024, `added ${added} bytes`);
  const dst = path.join(dir, 'dst');
  await restoreTree(repo, second.tree, dst, {});
  assert.deepEqual(describeTree(dst), describeTree(src));
});

test('an aborted backup or restore stops with CancelledError and leaves no temporary file', async (t) => {
  const dir = tmpdir(t);
  const src = path.join(dir, 'src');
  buildFixture(src, 4);
  const repo = new MemoryBlobs();
  const ac = new AbortController();
  ac.abort();
  await assert.rejects(backupTree(repo, src, { signal: ac.signal }), CancelledError);
  const { tree } = await backupTree(repo, src, {});
  const dst = path.join(dir, 'dst');
  const ac2 = new AbortController();
  let loads = 0;
  const reader = {
    blobSize: (id: BlobId) => repo.blobSize(id),
    loadBlob: async (id: BlobId) => {
      if (++loads === 20) ac2.abort();
      return repo.loadBlob(id);
    },
  };
  await assert.rejects(restoreTree(reader, tree, dst, { signal: ac2.signal }), CancelledError);
  const left: string[] = [];
  const walk = (p: string): void => {
    for (const e of fs.readdirSync(p, { withFileTypes: true })) {
      if (e.name.startsWith('.tern-restore-')) left.push(e.name);
      if (e.isDirectory()) walk(path.join(p, e.name));
    }
  };
  walk(dst);
  assert.deepEqual(left, []);
});
