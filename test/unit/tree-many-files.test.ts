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
