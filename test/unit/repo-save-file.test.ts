/**
 * Small files of a tree backup are read by the repository's crypto workers (BackupSession.saveFile), not by
 * the walking thread: what a worker finds (the file as expected, shrunk, grown, gone, all zeros, unreadable)
 * comes back as a result the tree backup turns into the same nodes and warnings as its own reads.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import fs, { constants as fsc } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { InputError } from '../../src/core/index.ts';
import { Repository } from '../../src/repo/index.ts';
import type { BlobWriter } from '../../src/repo/api.ts';
import { backupTree, restoreTree } from '../../src/repo/tree/index.ts';
import { LocalStore } from '../../src/storage/index.ts';
import { describeTree, isRoot } from './tree-fixtures.ts';

const FLAGS = fsc.O_RDONLY | fsc.O_NONBLOCK;

async function freshRepo(t: TestContext): Promise<{ dir: string; repo: Repository }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-save-file-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const store = new LocalStore(path.join(dir, 'repo'));
  await (await Repository.init(store, 'pw', { kdf: { N: 1024, r: 8, p: 1 } })).close();
  const repo = await Repository.open(store, 'pw');
  t.after(() => repo.close());
  return { dir, repo };
}

test('saveFile: small files read and sealed in the workers load back byte for byte, duplicates stored once', async (t) => {
  const { dir, repo } = await freshRepo(t);
  const files: Record<string, Buffer> = {
    text: Buffer.from('a line of text that compresses well\n'.repeat(2000)),
    random: randomBytes(100_000),
    one: Buffer.from('x'),
    largest: randomBytes(256 * 1024),
    smallZeros: Buffer.alloc(100),
    copyOfText: Buffer.from('a line of text that compresses well\n'.repeat(2000)),
  };
  for (const [name, data] of Object.entries(files)) fs.writeFileSync(path.join(dir, name), data);
  fs.writeFileSync(path.join(dir, 'empty'), '');
  fs.writeFileSync(path.join(dir, 'zeros'), Buffer.alloc(64 * 1024));

  const session = await repo.startBackup();
  const save = (name: string, size: number) => session.saveFile(path.join(dir, name), size, FLAGS);
  // All at once: they travel to the workers in batches.
  const names = Object.keys(files);
  const results = await Promise.all(names.map((n) => save(n, files[n]!.length)));
  const [empty, zeros] = await Promise.all([save('empty', 0), save('zeros', 64 * 1024)]);
  await session.flush();
  assert.deepEqual(empty, { kind: 'empty' });
  assert.deepEqual(zeros, { kind: 'zero', size: 64 * 1024 });

  const byName = new Map(names.map((n, i) => [n, results[i]!]));
  for (const [name, r] of byName) {
    assert.equal(r.kind, 'blob', name);
    if (r.kind !== 'blob') continue;
    assert.equal(r.size, files[name]!.length, name);
    assert.ok((await repo.loadBlob(r.id)).equals(files[name]!), `${name} loads back`);
  }
  const text = byName.get('text')!;
  const copy = byName.get('copyOfText')!;
  assert.ok(text.kind === 'blob' && copy.kind === 'blob');
  assert.equal(copy.id, text.id);
  assert.equal([text, copy].filter((r) => r.stored).length, 1, 'the same content is stored once');
  assert.ok(text.storedBytes + copy.storedBytes < files.text!.length / 5, 'text is compressed');
  // The id is the repository's keyed hash of the content: saveBlob of the same bytes finds it.
  const random = byName.get('random')!;
  const again = await session.saveBlob('data', files.random!);
  assert.equal(again.stored, false);
  assert.ok(random.kind === 'blob' && again.id === random.id);
  await session.close();
});

test('saveFile: a file that shrank, grew, vanished or cannot be read is reported, not saved wrong', async (t) => {
  const { dir, repo } = await freshRepo(t);
  const p = (n: string): string => path.join(dir, n);
  fs.writeFileSync(p('f'), 'twelve bytes');
  fs.mkdirSync(p('adir'));
  const session = await repo.startBackup();
  t.after(() => session.close());

  const shrank = await session.saveFile(p('f'), 100, FLAGS);
  assert.equal(shrank.kind, 'blob');
  if (shrank.kind === 'blob') {
    assert.equal(shrank.size, 12);
    await session.flush();
    assert.equal((await repo.loadBlob(shrank.id)).toString(), 'twelve bytes');
  }
  assert.deepEqual(await session.saveFile(p('f'), 5, FLAGS), { kind: 'grew' });
  assert.deepEqual(await session.saveFile(p('missing'), 10, FLAGS), { kind: 'error', code: 'ENOENT' });
  assert.deepEqual(await session.saveFile(p('adir'), 10, FLAGS), { kind: 'error', code: 'EISDIR' });
  if (!isRoot) {
    fs.writeFileSync(p('secret'), 'no');
    fs.chmodSync(p('secret'), 0);
    assert.deepEqual(await session.saveFile(p('secret'), 2, FLAGS), { kind: 'error', code: 'EACCES' });
  }
  await assert.rejects(session.saveFile(p('f'), 256 * 1024 + 1, FLAGS), InputError);
  await assert.rejects(session.saveFile(p('f'), -1, FLAGS), InputError);
});

test('a tree backup through a real repository: files changed between stat and read give the same warnings and content as before', async (t) => {
  const { dir, repo } = await freshRepo(t);
  const src = path.join(dir, 'src');
  fs.mkdirSync(src);
  const grows = 'grows.txt';
  fs.writeFileSync(path.join(src, grows), 'short');
  fs.writeFileSync(path.join(src, 'shrinks.txt'), 'a longer text that will be cut');
  fs.writeFileSync(path.join(src, 'vanishes.txt'), 'gone soon');
  fs.writeFileSync(path.join(src, 'zeros.bin'), Buffer.alloc(16 * 1024));
  fs.writeFileSync(path.join(src, 'steady.txt'), 'stays as it is');
  const session = await repo.startBackup();
  t.after(() => session.close());
  // The walk has stat'ed the file; it changes before the worker reads it.
  const writer: BlobWriter = {
    saveBlob: (type, data, o) => session.saveBlob(type, data, o),
    hasBlob: (id) => session.hasBlob(id),
    saveFile: (file, size, flags, o) => {
      const name = path.basename(file);
      if (name === grows) fs.appendFileSync(file, Buffer.alloc(300 * 1024, 'g'));
      if (name === 'shrinks.txt') fs.truncateSync(file, 6);
      if (name === 'vanishes.txt') fs.rmSync(file);
      return session.saveFile(file, size, flags, o);
    },
  };
  const { tree, stats } = await backupTree(writer, src, {});
  await session.flush();
  const warnings = [...stats.warnings].sort();
  assert.equal(warnings.length, 3, warnings.join('; '));
  assert.match(warnings[0]!, /^grows\.txt: size changed during backup \(5 → 307205 bytes\)/);
  assert.match(warnings[1]!, /^shrinks\.txt: size changed during backup \(30 → 6 bytes\)/);
  assert.match(warnings[2]!, /^vanishes\.txt: vanished during backup/);
  const dst = path.join(dir, 'dst');
  await restoreTree(repo, tree, dst);
  // The grown file was read again the streaming way, whole.
  assert.equal(fs.readFileSync(path.join(dst, grows)).length, 5 + 300 * 1024);
  assert.equal(fs.readFileSync(path.join(dst, 'shrinks.txt'), 'utf8'), 'a long');
  assert.ok(!fs.existsSync(path.join(dst, 'vanishes.txt')));
  assert.deepEqual(fs.readFileSync(path.join(dst, 'zeros.bin')), Buffer.alloc(16 * 1024));
  const facts = describeTree(dst);
  assert.ok(facts.get('steady.txt')?.sha);
  assert.equal(facts.get('steady.txt')?.sha, describeTree(src).get('steady.txt')?.sha);
});
