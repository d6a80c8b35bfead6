/** Shared by the tree tests: build a tree with every kind of entry, and describe a tree for comparison. */
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { Repository } from '../../src/repo/index.ts';
import { backupTree } from '../../src/repo/tree/index.ts';
import { LocalStore, type ObjectStore } from '../../src/storage/index.ts';

export const isRoot = process.getuid?.() === 0;

/** Sets a time with nanoseconds that Node's utimes can carry (microsecond-ish), for comparisons. */
function setTime(p: string, sec: number): void {
  fs.lutimesSync(p, sec, sec);
}

/**
 * Regular files (empty, small, `bigMiB` MiB random), nested and empty directories, a read-only directory,
 * symlinks (also dangling), hard links, a fifo, a sparse file, odd modes, and other owners when root.
 */
export function buildFixture(root: string, bigMiB = 3): void {
  fs.mkdirSync(root, { recursive: true });
  const w = (rel: string, data: string | Buffer, mode = 0o644): void => {
    const p = path.join(root, rel);
    fs.mkdirSync(path.dirname(p), { recursive: true });
    fs.writeFileSync(p, data);
    fs.chmodSync(p, mode);
  };
  w('empty', '');
  w('hello.txt', 'hello world\n');
  w('script.sh', '#!/bin/sh\necho hi\n', 0o755);
  w('secret', 'top secret\n', 0o600);
  w('setuid-bin', 'not really a binary', 0o4755);
  w('big.bin', randomBytes(bigMiB * 1024 * 1024));
  w('nested/a/b/c/deep.txt', 'deep\n');
  for (let i = 0; i < 50; i++) w(`many/f${String(i).padStart(3, '0')}.txt`, `file ${i}\n`.repeat(i));
  w('name with spaces & ünïcödé.txt', 'unicode name\n');
  fs.mkdirSync(path.join(root, 'empty-dir'));
  fs.mkdirSync(path.join(root, 'readonly-dir'));
  w('readonly-dir/inside.txt', 'inside a read-only directory\n', 0o444);
  fs.chmodSync(path.join(root, 'readonly-dir'), 0o555);
  fs.symlinkSync('hello.txt', path.join(root, 'link-to-hello'));
  fs.symlinkSync('/nonexistent/target', path.join(root, 'dangling-link'));
  fs.symlinkSync('nested/a', path.join(root, 'dir-link'));
  w('hard/one', 'hard linked content\n');
  fs.linkSync(path.join(root, 'hard/one'), path.join(root, 'hard/two'));
  fs.linkSync(path.join(root, 'hard/one'), path.join(root, 'nested/hard-three'));
  execFileSync('mkfifo', [path.join(root, 'a-fifo')]);
  // Sparse: 40 MiB with 64 KiB of data at 1 MiB and a 4 KiB tail.
  const sparse = path.join(root, 'sparse.img');
  const fd = fs.openSync(sparse, 'w');
  fs.ftruncateSync(fd, 40 * 1024 * 1024);
  fs.writeSync(fd, randomBytes(64 * 1024), 0, 64 * 1024, 1024 * 1024);
  fs.writeSync(fd, randomBytes(4096), 0, 4096, 40 * 1024 * 1024 - 4096);
  fs.closeSync(fd);
  if (isRoot) {
    fs.chownSync(path.join(root, 'hello.txt'), 1234, 5678);
    fs.lchownSync(path.join(root, 'link-to-hello'), 4321, 8765);
    fs.chownSync(path.join(root, 'nested/a'), 1111, 2222);
    execFileSync('mknod', [path.join(root, 'null-dev'), 'c', '1', '3']);
  }
  // Distinct times everywhere, directories last (writing into them changes their mtime).
  let t = 1_600_000_000.123456;
  const entries: string[] = [];
  const walk = (rel: string): void => {
    for (const name of fs.readdirSync(path.join(root, rel)).sort()) {
      const r = rel ? `${rel}/${name}` : name;
      const st = fs.lstatSync(path.join(root, r));
      if (st.isDirectory()) walk(r);
      entries.push(r);
    }
  };
  walk('');
  for (const r of entries) setTime(path.join(root, r), (t += 1001.000017));
}

export interface EntryFacts {
  type: string;
  mode: number;
  uid: number;
  gid: number;
  /** Microseconds: what survives Node's utimes. */
  mtimeUs: bigint;
  size?: number;
  sha?: string;
  target?: string;
  rdev?: number;
  /** Index of the hard-link group (by inode) within this tree, when nlink > 1. */
  linkGroup?: number;
}

/** rel path → facts, for every entry below `root` (not root itself). */
export function describeTree(root: string): Map<string, EntryFacts> {
  const out = new Map<string, EntryFacts>();
  const inodes = new Map<bigint, number>();
  const walk = (rel: string): void => {
    for (const name of fs.readdirSync(path.join(root, rel)).sort()) {
      const r = rel ? `${rel}/${name}` : name;
      const p = path.join(root, r);
      const st = fs.lstatSync(p, { bigint: true });
      const facts: EntryFacts = {
        type: st.isFile()
          ? 'file'
          : st.isDirectory()
            ? 'dir'
            : st.isSymbolicLink()
              ? 'symlink'
              : st.isFIFO()
                ? 'fifo'
                : st.isCharacterDevice()
                  ? 'chardev'
                  : 'other',
        mode: Number(st.mode & 0o7777n),
        uid: Number(st.uid),
        gid: Number(st.gid),
        mtimeUs: st.mtimeNs / 1000n,
      };
      if (facts.type === 'chardev') facts.rdev = Number(st.rdev);
      if (facts.type === 'symlink') {
        facts.target = fs.readlinkSync(p);
        delete (facts as { mode?: number }).mode;
      }
      if (facts.type === 'file') {
        facts.size = Number(st.size);
        facts.sha = createHash('sha256').update(fs.readFileSync(p)).digest('hex');
        if (st.nlink > 1n) {
          if (!inodes.has(st.ino)) inodes.set(st.ino, inodes.size);
          facts.linkGroup = inodes.get(st.ino);
        }
      }
      out.set(r, facts);
      if (facts.type === 'dir') walk(r);
    }
  };
  walk('');
  return out;
}

/** Allocated bytes of a file (to check sparseness). */
export function allocatedBytes(p: string): number {
  return fs.statSync(p).blocks * 512;
}

/**
 * A real repository in `dir/repo` (fast KDF, passphrase "pw") holding one backup of `src`; it is opened
 * through `wrap(store)`, so a test can watch or hold its reads. The caller closes it.
 */
export async function backedUp(
  dir: string,
  src: string,
  wrap: (s: ObjectStore) => ObjectStore = (s) => s,
): Promise<{ repo: Repository; tree: string }> {
  const store = new LocalStore(path.join(dir, 'repo'));
  await (await Repository.init(store, 'pw', { kdf: { N: 1024, r: 8, p: 1 } })).close();
  const repo = await Repository.open(wrap(store), 'pw');
  const session = await repo.startBackup();
  const { tree } = await backupTree(session, src, { reader: repo });
  await session.saveSnapshot({
    paths: [src],
    tags: [],
    root: { kind: 'tree', tree },
    summary: { bytesRead: 0, bytesAdded: 0, durationMs: 0 },
  });
  await session.close();
  return { repo, tree };
}
