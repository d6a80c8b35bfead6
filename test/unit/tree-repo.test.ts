/**
 * Tree restores through a real repository on a local store: small files are written by the repository's
 * crypto workers right where their blobs are decrypted (Repository.writeFiles), directories are made under
 * temporary names and renamed into place at the end. The other tree tests use an in-memory reader, which has
 * no workers and takes the main-thread path.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { IntegrityError } from '../../src/core/index.ts';
import type { TreeBlob } from '../../src/repo/api.ts';
import { canonicalNode } from '../../src/repo/tree/codec.ts';
import { Repository, verify } from '../../src/repo/index.ts';
import {
  backupTree,
  decodeTree,
  encodeTree,
  encodeTreeParts,
  ListingEncoder,
  listTree,
  loadTree,
  restoreTree,
  walkTree,
} from '../../src/repo/tree/index.ts';
import { LocalStore } from '../../src/storage/index.ts';
import type { ObjectStore, RangeReader } from '../../src/storage/index.ts';
import { backedUp, buildFixture, describeTree, isRoot } from './tree-fixtures.ts';

const TEMP = '.tern-restore-';

test('a tree restored through a repository equals its source, every kind of entry and metadata', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-tree-repo-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const src = path.join(dir, 'src');
  buildFixture(src, 2);
  const { repo, tree } = await backedUp(dir, src);
  t.after(() => repo.close());
  const dst = path.join(dir, 'dst');
  const r = await restoreTree(repo, tree, dst);
  assert.deepEqual(describeTree(dst), describeTree(src));
  assert.ok(r.files > 50);
  // Into an existing directory with overwrite: files are replaced (temporary name + rename), dirs merged.
  fs.writeFileSync(path.join(dst, 'hello.txt'), 'changed');
  fs.rmSync(path.join(dst, 'many'), { recursive: true });
  await restoreTree(repo, tree, dst, { overwrite: true });
  assert.deepEqual(describeTree(dst), describeTree(src));
});

/** Regular files below `root` whose path has no temporary component: path → sha-256. */
function visibleFiles(root: string): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (rel: string): void => {
    for (const e of fs.readdirSync(path.join(root, rel), { withFileTypes: true })) {
      if (e.name.startsWith(TEMP)) continue;
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) walk(r);
      else if (e.isFile())
        out.set(
          r,
          createHash('sha256')
            .update(fs.readFileSync(path.join(root, r)))
            .digest('hex'),
        );
    }
  };
  walk('');
  return out;
}

test('at any point of a restore, what shows under its final name is complete', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-tree-repo-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const src = path.join(dir, 'src');
  fs.mkdirSync(src);
  // Top-level files (temporary name + rename) and nested directories of small files (written by workers
  // inside directories that stay under temporary names until everything below them is done).
  for (let i = 0; i < 6; i++)
    fs.writeFileSync(path.join(src, `top${i}`), randomBytes(1000 + i), { flag: 'w' });
  for (const a of ['a', 'b'])
    for (let b = 0; b < 3; b++) {
      const d = path.join(src, a, `sub${b}`);
      fs.mkdirSync(d, { recursive: true });
      for (let f = 0; f < 40; f++) fs.writeFileSync(path.join(d, `f${f}`), randomBytes(20_000 + f));
    }
  fs.writeFileSync(path.join(src, 'a', 'big.bin'), randomBytes(3 * 1024 * 1024));
  const sums = visibleFiles(src);
  // A store whose reads stop after the first `allow`, until released: the restore is frozen mid-way.
  let allow = 0;
  let reads = 0;
  let release: () => void = () => undefined;
  let gate = Promise.resolve();
  let frozen: () => void = () => undefined;
  const gated = (s: ObjectStore): ObjectStore =>
    new Proxy(s, {
      get(target, key, receiver) {
        const v = Reflect.get(target, key, receiver) as unknown;
        if (typeof v !== 'function') return v;
        const read = async <T>(go: () => Promise<T>): Promise<T> => {
          if (++reads > allow) {
            frozen();
            await gate;
          }
          return go();
        };
        if (key === 'openRanges')
          // Each ranged read through an open pack is a read like getRange's.
          return async (...args: unknown[]) => {
            const r = await (v as (...a: unknown[]) => Promise<RangeReader>).apply(target, args);
            return {
              ...r,
              readInto: (...a: Parameters<RangeReader['readInto']>) => read(() => r.readInto(...a)),
            };
          };
        if (key !== 'getRange') return (v as () => unknown).bind(target);
        return (...args: unknown[]) =>
          read(() => (v as (...a: unknown[]) => Promise<unknown>).apply(target, args));
      },
    });
  const { repo, tree } = await backedUp(dir, src, gated);
  t.after(() => repo.close());
  let frozenAt = 0;
  let staged = 0;
  // Freeze after 1, 2, ... reads: every freeze point is a moment a killed restore could leave behind.
  for (const n of [1, 2, 3, 5, 8, 13]) {
    const dst = path.join(dir, `dst${n}`);
    allow = n;
    reads = 0;
    gate = new Promise<void>((r) => (release = r));
    const stopped = new Promise<void>((r) => (frozen = r));
    const restoring = restoreTree(repo, tree, dst);
    const finished = await Promise.race([stopped.then(() => false), restoring.then(() => true)]);
    if (!finished) {
      // Let writes already handed to the workers land, then look.
      await new Promise((r) => setTimeout(r, 50));
      frozenAt++;
      if (fs.readdirSync(dst).some((name) => name.startsWith(TEMP))) staged++;
      for (const [rel, sum] of visibleFiles(dst))
        assert.equal(sum, sums.get(rel), `after ${n} reads ${rel} shows under its name but is not complete`);
    }
    release();
    await restoring;
    assert.deepEqual(visibleFiles(dst), sums);
    assert.deepEqual(
      fs.readdirSync(dst).filter((name) => name.startsWith(TEMP)),
      [],
      'no temporary entries left',
    );
  }
  // The freezes did catch restores in progress, with directories still under temporary names.
  assert.ok(frozenAt >= 4, `${frozenAt} restores frozen`);
  assert.ok(staged >= 1, `${staged} frozen restores showed a temporary directory`);
});

/**
 * Backs up `files` (name, content, owner) in three directory levels, restores them as root into a new target
 * owned by 0:4242 with `targetMode`, and checks that every file comes back with its owner.
 */
async function ownersComeBack(
  t: { after: (fn: () => unknown) => void },
  files: { name: string; data: string | Buffer; uid: number; gid: number }[],
  targetMode: number,
): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-tree-repo-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const src = path.join(dir, 'src');
  const levels = ['.', 'a', 'a/b'];
  for (const d of levels) {
    fs.mkdirSync(path.join(src, d), { recursive: true });
    for (const f of files) {
      fs.writeFileSync(path.join(src, d, f.name), f.data);
      fs.chownSync(path.join(src, d, f.name), f.uid, f.gid);
    }
  }
  const { repo, tree } = await backedUp(dir, src);
  t.after(() => repo.close());
  const dst = path.join(dir, 'dst');
  fs.mkdirSync(dst);
  fs.chownSync(dst, 0, 4242);
  fs.chmodSync(dst, targetMode);
  await restoreTree(repo, tree, dst);
  for (const d of levels)
    for (const f of files) {
      const st = fs.statSync(path.join(dst, d, f.name));
      assert.deepEqual([st.uid, st.gid], [f.uid, f.gid], `${d}/${f.name}`);
    }
}

test(
  'owners come back whatever group the target directory passes on (set-gid target)',
  { skip: !isRoot && 'needs root to chown' },
  async (t) => {
    // New entries in a set-gid directory get its group (4242) unless the restore sets theirs.
    await ownersComeBack(
      t,
      [
        { name: 'root-owned', data: 'r', uid: 0, gid: 0 },
        { name: 'other', data: 'o', uid: 1234, gid: 5678 },
      ],
      0o2775,
    );
  },
);

test(
  'owners come back when new entries do not get the group of the target directory (no chown skipped wrongly)',
  { skip: !isRoot && 'needs root to chown' },
  async (t) => {
    // Not set-gid: entries made in it get root's group (0), not its own (4242); the directories the restore
    // makes inside it get group 0 too. Small files (written by the workers) and files of several chunks
    // (written on the main thread), each recorded as root's, as the target's group and as another owner's.
    const big = randomBytes(3 * 1024 * 1024);
    const files = [];
    for (const [name, uid, gid] of [
      ['root-owned', 0, 0],
      ['target-group', 0, 4242],
      ['other', 1234, 5678],
    ] as const)
      files.push({ name, data: 'x', uid, gid }, { name: `${name}-big`, data: big, uid, gid });
    await ownersComeBack(t, files, 0o775);
  },
);

test('temporary entries an interrupted restore left in the target are reported, not touched', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-tree-repo-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const src = path.join(dir, 'src');
  fs.mkdirSync(path.join(src, 'sub'), { recursive: true });
  fs.writeFileSync(path.join(src, 'sub', 'f'), 'content');
  const { repo, tree } = await backedUp(dir, src);
  t.after(() => repo.close());
  const dst = path.join(dir, 'dst');
  // What a restore killed mid-way leaves: a directory still under its temporary name.
  const stale = path.join(dst, `${TEMP}0123456789ab-0`);
  fs.mkdirSync(path.join(stale, 'deep'), { recursive: true });
  fs.writeFileSync(path.join(stale, 'deep', 'f'), 'cont');
  const r = await restoreTree(repo, tree, dst);
  assert.equal(r.warnings.length, 1);
  assert.match(
    r.warnings[0]!,
    /1 temporary entry of an interrupted restore \(\.tern-restore-0123456789ab-0\)/,
  );
  assert.equal(fs.readFileSync(path.join(stale, 'deep', 'f'), 'utf8'), 'cont');
  assert.equal(fs.readFileSync(path.join(dst, 'sub', 'f'), 'utf8'), 'content');
});

test('a damaged pack fails the restore with an error naming it; what shows is complete, no temporary entry is left', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-tree-repo-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const src = path.join(dir, 'src');
  for (let i = 0; i < 4; i++) fs.mkdirSync(path.join(src, `d${i}`), { recursive: true });
  for (let i = 0; i < 400; i++) fs.writeFileSync(path.join(src, `d${i % 4}`, `f${i}`), randomBytes(3000 + i));
  fs.writeFileSync(path.join(src, 'top'), 'top level');
  const sums = visibleFiles(src);
  const { repo, tree } = await backedUp(dir, src);
  t.after(() => repo.close());
  // Flip one byte in the middle of every data pack (the tree blobs sit in their own packs).
  const packs: string[] = [];
  const walk = (d: string): void => {
    for (const e of fs.readdirSync(d, { withFileTypes: true }))
      if (e.isDirectory()) walk(path.join(d, e.name));
      else packs.push(path.join(d, e.name));
  };
  walk(path.join(dir, 'repo', 'data'));
  for (const p of packs.filter((f) => fs.statSync(f).size > 200_000)) {
    const b = fs.readFileSync(p);
    b[Math.floor(b.length / 2)]! ^= 0x40;
    fs.writeFileSync(p, b);
  }
  const dst = path.join(dir, 'dst');
  await assert.rejects(restoreTree(repo, tree, dst), (err: unknown) => {
    assert.ok(err instanceof IntegrityError, String(err));
    assert.match((err as Error).message, /data\/[0-9a-f]{2}\/[0-9a-f]+/);
    return true;
  });
  for (const [rel, sum] of visibleFiles(dst)) assert.equal(sum, sums.get(rel), `${rel} is not complete`);
  assert.deepEqual(
    fs.readdirSync(dst).filter((n) => n.startsWith(TEMP)),
    [],
  );
});

test('a directory listing longer than the part size is stored in parts: restore, ls, incremental and the blob walk see it whole', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-tree-parts-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const src = path.join(dir, 'src');
  buildFixture(src, 1);
  // 300 files in the root (its listing, with chunker and self, is split) and 600 in one directory.
  for (let i = 0; i < 300; i++)
    fs.writeFileSync(path.join(src, `root-${String(i).padStart(4, '0')}`), `r${i}`);
  fs.mkdirSync(path.join(src, 'wide'));
  for (let i = 0; i < 600; i++)
    fs.writeFileSync(path.join(src, 'wide', `entry-${String(i).padStart(4, '0')}.txt`), randomBytes(i % 50));
  const store = new LocalStore(path.join(dir, 'repo'));
  await (await Repository.init(store, 'pw', { kdf: { N: 1024, r: 8, p: 1 } })).close();
  const repo = await Repository.open(store, 'pw');
  t.after(() => repo.close());
  const PART = 8192;
  const backup = async (
    parentTree?: string,
  ): Promise<{ tree: string; bytesAdded: number; unmodified: number }> => {
    const session = await repo.startBackup();
    const r = await backupTree(session, src, { reader: repo, parentTree, treePartBytes: PART });
    await session.saveSnapshot({
      paths: [src],
      tags: [],
      root: { kind: 'tree', tree: r.tree },
      summary: { bytesRead: 0, bytesAdded: 0, durationMs: 0 },
    });
    await session.close();
    return { tree: r.tree, bytesAdded: r.stats.bytesAdded, unmodified: r.stats.filesUnmodified };
  };
  const first = await backup();
  const head = decodeTree(first.tree, await repo.loadBlob(first.tree));
  assert.ok(head.parts && head.parts.length >= 2, 'the root listing is in parts');
  assert.ok(head.chunker && head.self, 'the head keeps chunker and self');
  for (const p of head.parts)
    assert.ok((await repo.loadBlob(p)).length <= PART, `part ${p} within the part size`);
  const root = await loadTree(repo, first.tree);
  const wide = root.nodes.find((n) => n.name === 'wide')!;
  const wideHead = decodeTree(wide.subtree!, await repo.loadBlob(wide.subtree!));
  assert.ok((wideHead.parts?.length ?? 0) >= 5, 'the 600-entry directory is in parts');

  const dst = path.join(dir, 'dst');
  await restoreTree(repo, first.tree, dst);
  assert.deepEqual(describeTree(dst), describeTree(src));
  const listed: string[] = [];
  for await (const e of listTree(repo, first.tree, { recursive: true })) listed.push(e.path);
  assert.deepEqual(listed.sort(), [...describeTree(src).keys()].filter((k) => k !== '').sort());
  // The walk that keeps blobs alive (prune, verify) visits every part.
  const visited = new Set<string>();
  await walkTree(repo, first.tree, (id) => visited.add(id));
  for (const p of [...head.parts, ...wideHead.parts!]) assert.ok(visited.has(p), `part ${p} visited`);

  // Unchanged: the same tree, no new tree blob. One file changed: the directory's new listing restores.
  const again = await backup(first.tree);
  assert.equal(again.tree, first.tree);
  assert.equal(again.bytesAdded, 0);
  // Every file was found in the parent's listing, read a part at a time alongside the directory's names.
  const files = [...describeTree(src).values()].filter((e) => e.type === 'file').length;
  assert.equal(again.unmodified, files);
  fs.writeFileSync(path.join(src, 'wide', 'entry-0300.txt'), 'changed');
  const changed = await backup(first.tree);
  assert.notEqual(changed.tree, first.tree);
  const dst2 = path.join(dir, 'dst2');
  await restoreTree(repo, changed.tree, dst2);
  assert.deepEqual(describeTree(dst2), describeTree(src));
  const v = await verify(repo, { readData: true });
  assert.equal(v.errors.length, 0, JSON.stringify(v.errors));
});

test('a listing in parts with a name in two parts, names out of order, a part that is itself a head, or a content part without a chunk list is an IntegrityError', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-tree-parts-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const store = new LocalStore(path.join(dir, 'repo'));
  await (await Repository.init(store, 'pw', { kdf: { N: 1024, r: 8, p: 1 } })).close();
  const repo = await Repository.open(store, 'pw');
  t.after(() => repo.close());
  const session = await repo.startBackup();
  const save = async (j: unknown): Promise<string> =>
    (await session.saveBlob('tree', Buffer.from(JSON.stringify(j)))).id;
  const node = (name: string) => ({
    name,
    type: 'symlink',
    mode: 0o777,
    uid: 0,
    gid: 0,
    mtimeMs: 0,
    linkTarget: 'x',
  });
  const a = await save({ nodes: [node('a'), node('b')] });
  const b = await save({ nodes: [node('b'), node('c')] });
  const dup = await save({ parts: [a, b] });
  const noList = await save({
    nodes: [{ name: 'f', type: 'file', mode: 0o644, uid: 0, gid: 0, mtimeMs: 0, size: 1, contentParts: [a] }],
  });
  const nested = await save({ parts: [await save({ parts: [a] })] });
  const c = await save({ nodes: [node('c'), node('d')] });
  const backwards = await save({ parts: [c, a] });
  const unsorted = await save({ parts: [await save({ nodes: [node('b'), node('a')] })] });
  await session.flush();
  await session.close();
  for (const [id, why] of [
    [dup, /duplicate name b/],
    [noList, /content part .* has no chunk list/],
    [nested, /not a plain listing/],
    [backwards, /name a out of order/],
    [unsorted, /name a out of order/],
  ] as const)
    await assert.rejects(
      restoreTree(repo, id, path.join(dir, `out-${id.slice(0, 6)}`)),
      (err: unknown) => err instanceof IntegrityError && why.test(err.message) && err.message.includes(id),
    );
});

test('encodeTreeParts: a listing that fits is byte for byte the one blob the format defines; parts join back to it', () => {
  const node = (name: string, extra: object = {}) => ({
    name,
    type: 'file' as const,
    mode: 0o644,
    uid: 1,
    gid: 2,
    mtimeMs: 1.5,
    size: 3,
    content: ['a'.repeat(64)],
    ...extra,
  });
  const nodes = Array.from({ length: 200 }, (_, i) =>
    node(`n-${(i * 7919) % 200}-é`, i % 3 ? {} : { linkGroup: '1:2' }),
  );
  const chunker = { seed: 's', algorithm: 'fastcdc', normalization: 2, maxSize: 3, avgSize: 2, minSize: 1 };
  const self = { ...node(''), type: 'dir' as const };
  // The one-blob form as the format defines it (FORMAT.md), built here independently of the encoder.
  const reference = (t: TreeBlob): Buffer =>
    Buffer.from(
      JSON.stringify({
        ...(t.chunker
          ? {
              chunker: {
                algorithm: t.chunker.algorithm,
                minSize: t.chunker.minSize,
                avgSize: t.chunker.avgSize,
                maxSize: t.chunker.maxSize,
                normalization: t.chunker.normalization,
                seed: t.chunker.seed,
              },
            }
          : {}),
        nodes: [...t.nodes]
          .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
          .map(canonicalNode),
        ...(t.self ? { self: canonicalNode(t.self) } : {}),
      }),
    );
  for (const tree of [{ nodes }, { nodes, chunker, self }, { nodes: [] }] as TreeBlob[]) {
    const whole = reference(tree);
    assert.ok(encodeTree(tree).equals(whole));
    const enc = encodeTreeParts(tree);
    assert.ok('whole' in enc && enc.whole.equals(whole));
    const split = encodeTreeParts(tree, 2000);
    if (tree.nodes.length === 0) continue;
    assert.ok('parts' in split && split.parts.length > 5);
    const joined = split.parts.flatMap((p) => (JSON.parse(p.toString()) as { nodes: unknown[] }).nodes);
    const all = JSON.parse(whole.toString()) as { nodes: unknown[]; chunker?: unknown; self?: unknown };
    assert.deepEqual(joined, all.nodes);
    for (const p of split.parts.slice(0, -1)) assert.ok(p.length <= 2000);
    const head = JSON.parse(split.head(['x']).toString()) as Record<string, unknown>;
    assert.deepEqual(
      Object.keys(head),
      Object.keys(all).map((k) => (k === 'nodes' ? 'parts' : k)),
    );
    assert.deepEqual(head.chunker, all.chunker);
    // Node by node, the encoder hands each part out as soon as the next node does not fit in it (a backup
    // saves it then and keeps no more of the listing), the same parts in the same order.
    const { nodes: _, ...rest } = tree;
    const encoder = new ListingEncoder(rest, 2000);
    const streamed: Buffer[] = [];
    const sorted = [...tree.nodes].sort((x, y) => (x.name < y.name ? -1 : x.name > y.name ? 1 : 0));
    for (const [i, n] of sorted.entries()) {
      for (const p of encoder.add(n)) streamed.push(p);
      // Never more than the open part's nodes held back: ~2000 bytes of ~120-byte nodes.
      if (i >= 40) assert.ok(streamed.length >= Math.floor((i - 20) / 20), `parts handed out by node ${i}`);
    }
    const end = encoder.finish();
    assert.ok('parts' in end);
    assert.deepEqual([...streamed, ...end.parts], split.parts);
    assert.throws(() => encoder.add(sorted[0]!), /out of order/);
  }
});

test('a chunk list longer than the part size is stored in content parts: restore, incremental and the blob walk see it whole', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-tree-content-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const src = path.join(dir, 'src');
  fs.mkdirSync(src);
  // Over SMALL_FILE (256 KiB) so it is chunked: ~3 MiB random, and a file with a 1 MiB hole between data.
  fs.writeFileSync(path.join(src, 'big.bin'), randomBytes(3 * 1024 * 1024 + 5));
  fs.writeFileSync(
    path.join(src, 'holey.bin'),
    Buffer.concat([randomBytes(700 * 1024), Buffer.alloc(1024 * 1024), randomBytes(700 * 1024)]),
  );
  fs.writeFileSync(path.join(src, 'small.txt'), 'small');
  const store = new LocalStore(path.join(dir, 'repo'));
  await (await Repository.init(store, 'pw', { kdf: { N: 1024, r: 8, p: 1 } })).close();
  const repo = await Repository.open(store, 'pw');
  t.after(() => repo.close());
  const backup = async (
    parentTree?: string,
  ): Promise<{ tree: string; bytesAdded: number; unmodified: number }> => {
    const session = await repo.startBackup();
    const r = await backupTree(session, src, {
      reader: repo,
      parentTree,
      chunker: { minSize: 16 * 1024, avgSize: 32 * 1024, maxSize: 64 * 1024 },
      contentPartChunks: 8,
    });
    await session.flush();
    await session.close();
    return { tree: r.tree, bytesAdded: r.stats.bytesAdded, unmodified: r.stats.filesUnmodified };
  };
  const first = await backup();
  const stored = decodeTree(first.tree, await repo.loadBlob(first.tree));
  const loaded = await loadTree(repo, first.tree);
  for (const name of ['big.bin', 'holey.bin']) {
    const raw = stored.nodes.find((n) => n.name === name)!;
    const node = loaded.nodes.find((n) => n.name === name)!;
    assert.ok(raw.contentParts && raw.contentParts.length >= 2, `${name} is stored in content parts`);
    assert.equal(raw.content, undefined, `${name}: the listing holds no chunk list`);
    assert.ok(node.content && node.content.length > 16, `${name}: loaded whole`);
    assert.equal(raw.contentParts.length, Math.ceil(node.content.length / 8), `${name}: parts of 8 chunks`);
  }
  const holey = loaded.nodes.find((n) => n.name === 'holey.bin')!;
  assert.ok(holey.content!.includes(null) && holey.holeSizes!.some((h) => h > 0), 'the hole is kept');
  assert.equal(stored.nodes.find((n) => n.name === 'small.txt')!.contentParts, undefined);
  const dst = path.join(dir, 'dst');
  await restoreTree(repo, first.tree, dst);
  assert.deepEqual(describeTree(dst), describeTree(src));
  const visited = new Set<string>();
  await walkTree(repo, first.tree, (id) => visited.add(id));
  for (const n of stored.nodes)
    for (const p of n.contentParts ?? []) assert.ok(visited.has(p), `part ${p} visited`);
  for (const n of loaded.nodes)
    for (const c of n.content ?? []) if (c) assert.ok(visited.has(c), `chunk ${c} visited`);
  // Unchanged: the same tree and nothing stored.
  const again = await backup(first.tree);
  assert.equal(again.tree, first.tree);
  assert.equal(again.bytesAdded, 0);
  // Every file was found in the parent's listing, read a part at a time alongside the directory's names.
  const files = [...describeTree(src).values()].filter((e) => e.type === 'file').length;
  assert.equal(again.unmodified, files);
});

test('a file of many chunks is restored from runs of packs: a chunk repeated in the file, zeros inside chunks and holes come back, sparse; a missing pack fails it cleanly', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-tree-large-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const src = path.join(dir, 'src');
  fs.mkdirSync(src);
  const block = randomBytes(1024 * 1024);
  const withZeros = randomBytes(100 * 1024);
  withZeros.fill(0, 32 * 1024, 96 * 1024); // 64 KiB of zeros inside chunks: not written
  const content = Buffer.concat([
    randomBytes(150 * 1024),
    block,
    randomBytes(70 * 1024),
    block, // the same bytes again: the chunks inside it repeat, one blob written at two places
    Buffer.alloc(1024 * 1024), // a hole of its own
    withZeros,
    randomBytes(33_333),
  ]);
  fs.writeFileSync(path.join(src, 'big.bin'), content);
  const store = new LocalStore(path.join(dir, 'repo'));
  await (await Repository.init(store, 'pw', { kdf: { N: 1024, r: 8, p: 1 } })).close();
  const repo = await Repository.open(store, 'pw');
  t.after(() => repo.close());
  const session = await repo.startBackup();
  const r = await backupTree(session, src, {
    chunker: { minSize: 16 * 1024, avgSize: 32 * 1024, maxSize: 64 * 1024 },
  });
  await session.flush();
  await session.close();
  const node = (await loadTree(repo, r.tree)).nodes.find((n) => n.name === 'big.bin')!;
  const ids = node.content!.filter((c) => c !== null);
  assert.ok(new Set(ids).size < ids.length, 'a chunk repeats within the file');
  assert.ok(node.content!.includes(null), 'the file has a hole');

  // With O_DIRECT where the filesystem takes it (the whole pages of each stretch of chunks, the partial pages
  // where chunks meet written buffered), and all buffered: the same file either way.
  for (const noDirect of [false, true]) {
    const dst = path.join(dir, `dst-${noDirect}`);
    if (noDirect) process.env.TERN_NO_DIRECT_IO = '1';
    let res;
    try {
      res = await restoreTree(repo, r.tree, dst);
    } finally {
      delete process.env.TERN_NO_DIRECT_IO;
    }
    const out = path.join(dst, 'big.bin');
    assert.ok(fs.readFileSync(out).equals(content), `equal bytes (noDirect ${noDirect})`);
    // The 1 MiB hole is not allocated (ext4 may allocate the zeros inside a chunk anyway: it fills holes of
    // up to 32 KiB between written blocks rather than split an extent).
    assert.ok(fs.statSync(out).blocks * 512 <= content.length - 1024 * 1024 + 64 * 1024, 'restored sparse');
    if (noDirect) assert.equal(res.bytesDirect, 0);
    else if (res.bytesDirect === 0) t.diagnostic(`${os.tmpdir()} refuses O_DIRECT: buffered both times`);
    // The repeated megabyte's chunks sit in memory where they fall the first time: buffered the second time.
    else assert.ok(res.bytesDirect >= 1024 * 1024, `pages with O_DIRECT: ${res.bytesDirect}`);
  }

  // A pack of the file gone: the restore fails naming what is missing and leaves no file behind.
  const packs = fs
    .readdirSync(path.join(dir, 'repo', 'data'), { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile());
  fs.rmSync(path.join(packs[0]!.parentPath, packs[0]!.name));
  const dst2 = path.join(dir, 'dst2');
  await assert.rejects(
    restoreTree(repo, r.tree, dst2),
    (err: unknown) => err instanceof Error && /pack|not found|missing/i.test(err.message),
  );
  assert.deepEqual(fs.existsSync(dst2) ? fs.readdirSync(dst2) : [], []);
});
