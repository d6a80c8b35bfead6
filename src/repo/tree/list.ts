/** Reading trees without restoring them: listing (ls) and the walk over every referenced blob (prune, verify). */
import { NotFoundError, throwIfAborted } from '../../core/base.ts';
import type { RunOptions } from '../../core/base.ts';
import type { BlobId, BlobReader, TreeBlob, TreeNode } from '../api.ts';
import { openTree, readTree } from './codec.ts';
import type { OpenedTree } from './codec.ts';

/** A tree blob and, for a listing in parts, its parts (their ids in `parts`), whole in memory. */
export async function loadTree(reader: BlobReader, id: BlobId, opts?: RunOptions): Promise<TreeBlob> {
  return readTree(id, (blob) => reader.loadBlob(blob, opts));
}

/** A tree blob whose listing is read a part at a time (`openTree`). */
function openListing(reader: BlobReader, id: BlobId, opts?: RunOptions): Promise<OpenedTree> {
  return openTree(id, (blob) => reader.loadBlob(blob, opts));
}

export interface ListOptions {
  /** Descend into directories (depth first, in name order). */
  recursive?: boolean;
  /** Start below this path of the tree ('a/b'); a file path lists that one file. */
  path?: string;
}

/**
 * Entries of a tree as '/'-separated paths relative to the tree root (no leading slash). Listings are read a
 * part at a time: a directory of any size is never held whole.
 */
export async function* listTree(
  reader: BlobReader,
  tree: BlobId,
  opts: ListOptions = {},
): AsyncIterable<{ path: string; node: TreeNode }> {
  let current = await openListing(reader, tree);
  const parts = (opts.path ?? '').split('/').filter((s) => s !== '' && s !== '.');
  let prefix = '';
  for (let i = 0; i < parts.length; i++) {
    const name = parts[i]!;
    const node = await findNode(current, name);
    const here = prefix === '' ? name : `${prefix}/${name}`;
    if (!node) throw new NotFoundError(`${here} is not in the snapshot`);
    if (node.type !== 'dir') {
      if (i === parts.length - 1) {
        yield { path: here, node };
        return;
      }
      throw new NotFoundError(`${here} is not a directory`);
    }
    current = await openListing(reader, node.subtree ?? '');
    prefix = here;
  }
  yield* listNodes(reader, current, prefix, opts.recursive ?? false);
}

async function findNode(tree: OpenedTree, name: string): Promise<TreeNode | undefined> {
  for await (const run of tree.runs()) {
    const node = run.find((n) => n.name === name);
    if (node) return node;
  }
  return undefined;
}

async function* listNodes(
  reader: BlobReader,
  tree: OpenedTree,
  prefix: string,
  recursive: boolean,
): AsyncIterable<{ path: string; node: TreeNode }> {
  for await (const run of tree.runs())
    for (const node of run) {
      const p = prefix === '' ? node.name : `${prefix}/${node.name}`;
      yield { path: p, node };
      if (recursive && node.type === 'dir' && node.subtree)
        yield* listNodes(reader, await openListing(reader, node.subtree), p, true);
    }
}

/**
 * Calls `visit` for every blob the tree references: each tree blob once, and every data blob of every
 * distinct tree (a data blob shared by two different trees is visited once per tree). Loads run 8 at a time;
 * a listing in parts is read a part at a time.
 */
export async function walkTree(
  reader: BlobReader,
  tree: BlobId,
  visit: (blobId: BlobId, type: 'data' | 'tree') => void,
  opts: RunOptions = {},
): Promise<void> {
  const seen = new Set<BlobId>([tree]);
  visit(tree, 'tree');
  const queue: BlobId[] = [tree];
  const CONCURRENCY = 8;
  const worker = async (): Promise<void> => {
    for (let id = queue.shift(); id !== undefined; id = queue.shift()) {
      throwIfAborted(opts.signal);
      const t = await openListing(reader, id, { signal: opts.signal });
      for (const p of t.tree.parts ?? []) visit(p, 'tree');
      for await (const run of t.runs())
        for (const node of run) {
          for (const p of node.contentParts ?? []) visit(p, 'tree');
          if (node.content) for (const c of node.content) if (c !== null) visit(c, 'data');
          if (node.type === 'dir' && node.subtree && !seen.has(node.subtree)) {
            seen.add(node.subtree);
            visit(node.subtree, 'tree');
            queue.push(node.subtree);
          }
        }
    }
  };
  // Workers that find the queue empty stop; the loop restarts them while loads keep adding work.
  while (queue.length > 0) {
    const running: Promise<void>[] = [];
    for (let i = 0; i < Math.min(CONCURRENCY, queue.length); i++) running.push(worker());
    const results = await Promise.allSettled(running);
    for (const r of results) if (r.status === 'rejected') throw r.reason;
  }
}

const TYPE_CHAR: Record<TreeNode['type'], string> = {
  file: '-',
  dir: 'd',
  symlink: 'l',
  fifo: 'p',
  chardev: 'c',
  blockdev: 'b',
  socket: 's',
};

/** `ls -l` style mode of a node, e.g. `-rwsr-xr-x`, `drwxr-xr-t`, `lrwxrwxrwx`. */
export function modeString(node: TreeNode): string {
  const m = node.type === 'symlink' ? 0o777 : node.mode;
  const triplet = (bits: number, special: boolean, ch: string): string =>
    (bits & 4 ? 'r' : '-') +
    (bits & 2 ? 'w' : '-') +
    (special ? (bits & 1 ? ch : ch.toUpperCase()) : bits & 1 ? 'x' : '-');
  return (
    TYPE_CHAR[node.type] +
    triplet((m >> 6) & 7, (m & 0o4000) !== 0, 's') +
    triplet((m >> 3) & 7, (m & 0o2000) !== 0, 's') +
    triplet(m & 7, (m & 0o1000) !== 0, 't')
  );
}
