import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { backupTree, restoreTree } from '../../src/repo/tree/index.ts';
import { MemoryBlobs } from './tree-memory-repo.ts';

/** Every file's relative path and content, sorted. */
function contents(root: string): string[] {
  const out: string[] = [];
  const walk = (dir: string, rel: string): void => {
    for (const d of fs.readdirSync(dir, { withFileTypes: true })) {
      const r = rel ? `${rel}/${d.name}` : d.name;
      if (d.isDirectory()) {
        out.push(`${r}/`);
        walk(path.join(dir, d.name), r);
      } else out.push(`${r}=${fs.readFileSync(path.join(dir, d.name), 'latin1')}`);
    }
  };
  walk(root, '');
  return out.sort();
}

test('a tree of more small files than the restore queue holds (three levels, 18k files) round-trips', async (t) => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-tree-many-'));
  t.after(() => fs.rmSync(tmp, { recursive: true, force: true }));
  const src = path.join(tmp, 'src');
  // 2 × 45 directories of 200 files: more than two restore batches, more directories than listings in flight.
  for (let a = 0; a < 2; a++)
    for (let b = 0; b < 45; b++) {
      const dir = path.join(src, `a${a}`, `b${b}`);
      fs.mkdirSync(dir, { recursive: true });
      for (let f = 0; f < 200; f++)
        fs.writeFileSync(path.join(dir, `f${f}`), f % 10 === 0 ? '' : `${a}/${b}/${f} `.repeat(f % 7));
    }
  const repo = new MemoryBlobs();
  const { tree, stats } = await backupTree(repo, src);
  assert.equal(stats.filesNew, 18_000);
  assert.equal(stats.dirs, 1 + 2 + 90);
  // The same tree again gives the same id (subdirectories walked a few at a time keep the order of nodes).
  assert.equal((await backupTree(new MemoryBlobs(), src)).tree, tree);
  const dst = path.join(tmp, 'dst');
  const r = await restoreTree(repo, tree, dst);
  assert.equal(r.files, 18_000);
  assert.deepEqual(contents(dst), contents(src));
});

test('one directory of 20k entries, its listing in parts: backed up, found in its parent and restored a run at a time', async (t) => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-tree-wide-'));
  t.after(() => fs.rmSync(tmp, { recursive: true, force: true }));
  const src = path.join(tmp, 'src');
  fs.mkdirSync(src);
  // More entries than a backup holds at once (8192) and than a restore queues (16384 small files), with
  // subdirectories and a file of several chunks among them, so that every kind waits for the others.
  for (let f = 0; f < 20_000; f++) {
    const name = path.join(src, `e${String(f).padStart(5, '0')}`);
    if (f % 5000 === 17) {
      fs.mkdirSync(name);
      fs.writeFileSync(path.join(name, 'inner'), `inner ${f}`);
    } else if (f === 12_345) fs.writeFileSync(name, Buffer.alloc(300_000, 7));
    else fs.writeFileSync(name, f % 3 === 0 ? '' : `${f}`);
  }
  const repo = new MemoryBlobs();
  const opts = {
    treePartBytes: 64 * 1024,
    chunker: { minSize: 64 * 1024, avgSize: 128 * 1024, maxSize: 256 * 1024 },
  };
  const first = await backupTree(repo, src, opts);
  // 19,996 files at the top and one in each of the 4 subdirectories.
  assert.equal(first.stats.filesNew, 20_000);
  assert.equal(first.stats.dirs, 1 + 4);
  // Backed up again against itself: every file is found in the parent's listing parts, in step with the names.
  const again = await backupTree(repo, src, { ...opts, reader: repo, parentTree: first.tree });
  assert.equal(again.tree, first.tree);
  assert.equal(again.stats.filesUnmodified, 20_000);
  const dst = path.join(tmp, 'dst');
  const r = await restoreTree(repo, first.tree, dst);
  assert.equal(r.files, 20_000);
  assert.deepEqual(contents(dst), contents(src));
});
