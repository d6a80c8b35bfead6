/**
 * Canonical encoding of directory tree blobs: fixed key order, nodes sorted by name, no whitespace, so that
 * two identical directories produce identical bytes and therefore the same blob id (dedup).
 * Decoding validates everything a restore will trust (names cannot escape the target directory).
 */
import { IntegrityError } from '../../core/base.ts';
import type { BlobId, TreeBlob, TreeNode } from '../api.ts';

const NODE_TYPES = new Set<TreeNode['type']>([
  'file',
  'dir',
  'symlink',
  'fifo',
  'chardev',
  'blockdev',
  'socket',
]);
const BLOB_ID = /^[0-9a-f]{64}$/;

/** Code-unit order; stable and independent of locale. */
export function compareNames(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** A node with its keys in one fixed order and undefined fields dropped. */
export function canonicalNode(n: TreeNode): TreeNode {
  const out: Record<string, unknown> = {};
  const put = (k: keyof TreeNode): void => {
    if (n[k] !== undefined) out[k] = n[k];
  };
  put('name');
  put('type');
  put('mode');
  put('uid');
  put('gid');
  put('mtimeMs');
  put('mtimeNs');
  put('atimeMs');
  put('ctimeNs');
  put('inode');
  put('size');
  put('content');
  put('holeSizes');
  put('subtree');
  put('linkTarget');
  put('linkGroup');
  put('rdev');
  return out as unknown as TreeNode;
}

export function encodeTree(tree: TreeBlob): Buffer {
  const nodes = [...tree.nodes].sort((a, b) => compareNames(a.name, b.name)).map(canonicalNode);
  const out: Record<string, unknown> = {};
  if (tree.chunker) {
    const c = tree.chunker;
    out.chunker = {
      algorithm: c.algorithm,
      minSize: c.minSize,
      avgSize: c.avgSize,
      maxSize: c.maxSize,
      normalization: c.normalization,
      seed: c.seed,
    };
  }
  out.nodes = nodes;
  if (tree.self) out.self = canonicalNode(tree.self);
  return Buffer.from(JSON.stringify(out), 'utf8');
}

/** A single path component that is safe to join under a target directory. */
export function isSafeName(name: unknown): name is string {
  return (
    typeof name === 'string' &&
    name.length > 0 &&
    name !== '.' &&
    name !== '..' &&
    !name.includes('/') &&
    !name.includes('\0')
  );
}

function bad(id: BlobId, why: string): never {
  throw new IntegrityError(`tree blob ${id} is malformed: ${why}`, { details: { blob: id } });
}

function isUint(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

function checkNode(id: BlobId, n: unknown, allowEmptyName: boolean): TreeNode {
  if (typeof n !== 'object' || n === null) bad(id, 'node is not an object');
  const node = n as TreeNode;
  if (!(allowEmptyName && node.name === '') && !isSafeName(node.name))
    bad(id, `unsafe or missing name ${JSON.stringify(node.name)}`);
  if (!NODE_TYPES.has(node.type)) bad(id, `unknown type ${JSON.stringify(node.type)} of ${node.name}`);
  if (!isUint(node.mode) || !isUint(node.uid) || !isUint(node.gid))
    bad(id, `bad mode/uid/gid of ${node.name}`);
  if (typeof node.mtimeMs !== 'number' || !Number.isFinite(node.mtimeMs))
    bad(id, `bad mtime of ${node.name}`);
  if (node.mtimeNs !== undefined && !/^-?\d+$/.test(node.mtimeNs)) bad(id, `bad mtimeNs of ${node.name}`);
  if (node.type === 'file') {
    if (!isUint(node.size)) bad(id, `file ${node.name} has no size`);
    const content = node.content ?? [];
    if (!Array.isArray(content)) bad(id, `file ${node.name} content is not a list`);
    let total = 0;
    for (let i = 0; i < content.length; i++) {
      const c = content[i];
      if (c === null) {
        const hole = node.holeSizes?.[i];
        if (!isUint(hole) || hole === 0) bad(id, `file ${node.name} hole ${i} has no size`);
        total += hole;
      } else if (typeof c !== 'string' || !BLOB_ID.test(c))
        bad(id, `file ${node.name} chunk ${i} is not a blob id`);
    }
    if (node.holeSizes !== undefined && node.holeSizes.length !== content.length)
      bad(id, `file ${node.name} holeSizes does not match content`);
    if (total > node.size) bad(id, `file ${node.name} holes exceed its size`);
  }
  if (
    node.type === 'dir' &&
    !allowEmptyName &&
    (typeof node.subtree !== 'string' || !BLOB_ID.test(node.subtree))
  )
    bad(id, `directory ${node.name} has no subtree id`);
  if (node.type === 'symlink' && typeof node.linkTarget !== 'string')
    bad(id, `symlink ${node.name} has no target`);
  return node;
}

export function decodeTree(id: BlobId, data: Buffer): TreeBlob {
  let parsed: unknown;
  try {
    parsed = JSON.parse(data.toString('utf8'));
  } catch (cause) {
    throw new IntegrityError(`tree blob ${id} is not valid JSON`, { cause, details: { blob: id } });
  }
  if (typeof parsed !== 'object' || parsed === null) bad(id, 'not an object');
  const raw = parsed as { nodes?: unknown; self?: unknown; chunker?: TreeBlob['chunker'] };
  if (!Array.isArray(raw.nodes)) bad(id, 'no node list');
  const nodes = raw.nodes.map((n) => checkNode(id, n, false));
  const names = new Set<string>();
  for (const n of nodes) {
    if (names.has(n.name)) bad(id, `duplicate name ${n.name}`);
    names.add(n.name);
  }
  const tree: TreeBlob = { nodes };
  if (raw.chunker !== undefined) tree.chunker = raw.chunker;
  if (raw.self !== undefined) tree.self = checkNode(id, raw.self, true);
  return tree;
}
