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
  // A chunk list stored in parts is written as those parts only.
  if (n.contentParts) put('contentParts');
  else {
    put('content');
    put('holeSizes');
  }
  put('subtree');
  put('linkTarget');
  put('linkGroup');
  put('rdev');
  return out as unknown as TreeNode;
}

/**
 * A listing whose JSON is longer than this is stored as parts of at most this size (a directory of ~300k
 * entries made a listing over the 64 MiB blob limit, and its backup failed).
 */
export const TREE_PART_BYTES = 16 * 1024 * 1024;

/**
 * Encodes a listing node by node, in name order, without holding it whole: the nodes' JSON is kept only until
 * it is known whether the listing fits in one blob (`maxBytes`); past that, each part is handed out as soon
 * as the next node no longer fits in it. A directory of 393k entries was held whole (nodes and JSON, ~2 x 87
 * MB) and took 792 MiB to back up.
 *
 * The blobs: `whole`, the one blob, or, when that would be longer than `maxBytes`, parts (each
 * `{"nodes":[...]}` with a run of the sorted nodes, at most `maxBytes` unless one node alone is longer) and the
 * head that lists their ids with the root's `chunker` and `self`.
 */
export class ListingEncoder {
  private readonly prefix: string;
  private readonly suffix: string;
  private readonly maxBytes: number;
  /** JSON of the nodes not yet handed out in a part. */
  private nodes: string[] = [];
  /** The one blob's length so far (its last node counted with a comma, as it always was). */
  private total: number;
  /** The current part's length, once the listing is in parts. */
  private partBytes = PART_FRAME;
  private inParts = false;
  private lastName: string | undefined;

  constructor(tree: Omit<TreeBlob, 'nodes'>, maxBytes = TREE_PART_BYTES) {
    this.prefix = tree.chunker ? `{"chunker":${JSON.stringify(canonicalChunker(tree.chunker))},` : '{';
    this.suffix = tree.self ? `,"self":${JSON.stringify(canonicalNode(tree.self))}}` : '}';
    this.maxBytes = maxBytes;
    this.total = Buffer.byteLength(this.prefix + this.suffix, 'utf8') + '"nodes":[]'.length;
  }

  /** Adds the next node (names strictly increasing); returns the parts it completed, to be saved in order. */
  add(node: TreeNode): Buffer[] {
    if (this.lastName !== undefined && compareNames(this.lastName, node.name) >= 0)
      throw new Error(`listing nodes out of order: ${node.name} after ${this.lastName}`);
    this.lastName = node.name;
    const json = JSON.stringify(canonicalNode(node));
    const len = Buffer.byteLength(json, 'utf8') + 1;
    if (!this.inParts) {
      this.nodes.push(json);
      this.total += len;
      if (this.total <= this.maxBytes) return [];
      // Too long for one blob: cut what is held into parts, keeping the last, still open one.
      this.inParts = true;
      const held = this.nodes;
      this.nodes = [];
      const out: Buffer[] = [];
      for (const j of held) out.push(...this.append(j, Buffer.byteLength(j, 'utf8') + 1));
      return out;
    }
    return this.append(json, len);
  }

  /** The blobs left: the one blob, or the last part and the head (given the ids of all parts, in order). */
  finish(): { whole: Buffer } | { parts: Buffer[]; head: (partIds: BlobId[]) => Buffer } {
    if (!this.inParts)
      return { whole: Buffer.from(`${this.prefix}"nodes":[${this.nodes.join(',')}]${this.suffix}`, 'utf8') };
    const last = this.part();
    const head = (partIds: BlobId[]): Buffer =>
      Buffer.from(`${this.prefix}"parts":${JSON.stringify(partIds)}${this.suffix}`, 'utf8');
    return { parts: last ? [last] : [], head };
  }

  /** A node into the open part; the part is handed out first when the node does not fit (at least one node each). */
  private append(json: string, len: number): Buffer[] {
    const out: Buffer[] = [];
    if (this.nodes.length > 0 && this.partBytes + len > this.maxBytes) out.push(this.part()!);
    this.nodes.push(json);
    this.partBytes += len;
    return out;
  }

  private part(): Buffer | undefined {
    if (this.nodes.length === 0) return undefined;
    const blob = Buffer.from(`{"nodes":[${this.nodes.join(',')}]}`, 'utf8');
    this.nodes = [];
    this.partBytes = PART_FRAME;
    return blob;
  }
}

const PART_FRAME = '{"nodes":[]}'.length;

/** The blobs of a whole tree (`ListingEncoder`); its nodes in any order. */
export function encodeTreeParts(
  tree: TreeBlob,
  maxBytes = TREE_PART_BYTES,
): { whole: Buffer } | { parts: Buffer[]; head: (partIds: BlobId[]) => Buffer } {
  const { nodes, ...rest } = tree;
  const enc = new ListingEncoder(rest, maxBytes);
  const parts: Buffer[] = [];
  for (const n of [...nodes].sort((a, b) => compareNames(a.name, b.name))) parts.push(...enc.add(n));
  const end = enc.finish();
  if ('whole' in end) return end;
  return { parts: [...parts, ...end.parts], head: end.head };
}

/** The root's chunker parameters with their keys in one fixed order. */
function canonicalChunker(c: NonNullable<TreeBlob['chunker']>): TreeBlob['chunker'] {
  return {
    algorithm: c.algorithm,
    minSize: c.minSize,
    avgSize: c.avgSize,
    maxSize: c.maxSize,
    normalization: c.normalization,
    seed: c.seed,
  };
}

/** A tree as one blob, however long (a backup stores long listings in parts: `encodeTreeParts`). */
export function encodeTree(tree: TreeBlob): Buffer {
  const enc = encodeTreeParts(tree, Infinity);
  if (!('whole' in enc)) throw new Error('unreachable: no size limit');
  return enc.whole;
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
    if (node.contentParts !== undefined) {
      const parts: unknown = node.contentParts;
      if (
        !Array.isArray(parts) ||
        parts.length === 0 ||
        !parts.every((p) => typeof p === 'string' && BLOB_ID.test(p))
      )
        bad(id, `file ${node.name} has a bad list of content parts`);
      if (node.content !== undefined || node.holeSizes !== undefined)
        bad(id, `file ${node.name} has both content and content parts`);
    } else checkContent(id, node);
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

/** A file node's chunk list: ids or holes with their sizes, the holes not longer than the file. */
function checkContent(id: BlobId, node: TreeNode): void {
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
  if (
    node.holeSizes !== undefined &&
    (!Array.isArray(node.holeSizes) || node.holeSizes.length !== content.length)
  )
    bad(id, `file ${node.name} holeSizes does not match content`);
  if (total > node.size!) bad(id, `file ${node.name} holes exceed its size`);
}

/**
 * A file's chunk list longer than this is stored in parts of this many chunks (~4.4 MB of JSON each): at the
 * 1 MiB average chunk a 1 TiB file has ~1M chunks, ~67 MB of ids, over the 64 MiB blob limit in one node.
 */
export const CONTENT_PART_CHUNKS = 65536;

/** The blobs of a long chunk list: `{"content":[...]}` (and `"holeSizes"` where it has holes) per run. */
export function encodeContentParts(
  content: (BlobId | null)[],
  holeSizes: number[] | undefined,
  chunksPerPart = CONTENT_PART_CHUNKS,
): Buffer[] {
  const parts: Buffer[] = [];
  for (let i = 0; i < content.length; i += chunksPerPart) {
    const part: { content: (BlobId | null)[]; holeSizes?: number[] } = {
      content: content.slice(i, i + chunksPerPart),
    };
    if (holeSizes && part.content.includes(null)) part.holeSizes = holeSizes.slice(i, i + chunksPerPart);
    parts.push(Buffer.from(JSON.stringify(part), 'utf8'));
  }
  return parts;
}

export function decodeTree(id: BlobId, data: Buffer): TreeBlob {
  let parsed: unknown;
  try {
    parsed = JSON.parse(data.toString('utf8'));
  } catch (cause) {
    throw new IntegrityError(`tree blob ${id} is not valid JSON`, { cause, details: { blob: id } });
  }
  if (typeof parsed !== 'object' || parsed === null) bad(id, 'not an object');
  const raw = parsed as { nodes?: unknown; parts?: unknown; self?: unknown; chunker?: TreeBlob['chunker'] };
  if (raw.parts !== undefined) {
    // A listing in parts: the head names them; `openTree` loads them.
    if (raw.nodes !== undefined) bad(id, 'both nodes and parts');
    const parts = raw.parts;
    if (
      !Array.isArray(parts) ||
      parts.length === 0 ||
      !parts.every((p) => typeof p === 'string' && BLOB_ID.test(p))
    )
      bad(id, 'bad part list');
    const head: TreeBlob = { nodes: [], parts: parts as BlobId[] };
    if (raw.chunker !== undefined) head.chunker = raw.chunker;
    if (raw.self !== undefined) head.self = checkNode(id, raw.self, true);
    return head;
  }
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

/**
 * Tree blob `id` loaded with `load`, decoded, and its listing and content parts loaded the same way: the whole
 * listing in memory (`openTree` reads it a part at a time).
 */
export async function readTree(id: BlobId, load: (blob: BlobId) => Promise<Buffer>): Promise<TreeBlob> {
  const opened = await openTree(id, load);
  const nodes: TreeNode[] = [];
  for await (const run of opened.runs()) for (const n of run) nodes.push(n);
  return { ...opened.tree, nodes };
}

/** A tree blob decoded (for a head: `parts`, `chunker`, `self`, no nodes) and its nodes, read a run at a time. */
export interface OpenedTree {
  tree: TreeBlob;
  /**
   * The nodes in stored (name) order, a listing part at a time (a whole listing in one run), each file's content
   * parts joined into its `content` and `holeSizes`. The next part loads while the caller works on one.
   */
  runs(): AsyncGenerator<TreeNode[]>;
}

/** Tree blob `id` loaded with `load` and decoded; its parts are loaded as `runs()` reaches them. */
export async function openTree(id: BlobId, load: (blob: BlobId) => Promise<Buffer>): Promise<OpenedTree> {
  const tree = decodeTree(id, await load(id));
  return { tree, runs: () => listingRuns(id, tree, load) };
}

async function* listingRuns(
  id: BlobId,
  tree: TreeBlob,
  load: (partId: BlobId) => Promise<Buffer>,
): AsyncGenerator<TreeNode[]> {
  const withContent = async (nodes: TreeNode[]): Promise<TreeNode[]> => {
    for (const node of nodes) if (node.contentParts) await loadContent(id, node, load);
    return nodes;
  };
  if (!tree.parts) {
    yield await withContent(tree.nodes);
    return;
  }
  const parts = tree.parts;
  let last: string | undefined;
  const loadPart = (partId: BlobId): Promise<TreeNode[]> =>
    load(partId).then((data) => {
      const part = decodeTree(partId, data);
      if (part.parts || part.self || part.chunker) bad(id, `part ${partId} is not a plain listing`);
      if (part.nodes.length === 0) bad(id, `part ${partId} is empty`);
      return part.nodes;
    });
  let next: Promise<TreeNode[]> | undefined = loadPart(parts[0]!);
  for (let i = 0; next; i++) {
    const nodes = await next;
    next = i + 1 < parts.length ? loadPart(parts[i + 1]!) : undefined;
    // Keep a failed look-ahead from being reported as unhandled if this run's consumer stops first.
    next?.catch(() => undefined);
    // Parts hold runs of the sorted listing: in name order, a name in two parts is out of order or repeated.
    for (const n of nodes) {
      if (last !== undefined) {
        const c = compareNames(last, n.name);
        if (c === 0) bad(id, `duplicate name ${n.name} in part ${parts[i]!}`);
        if (c > 0) bad(id, `name ${n.name} out of order in part ${parts[i]!}`);
      }
      last = n.name;
    }
    yield await withContent(nodes);
  }
}

/** Fills a node's `content` and `holeSizes` from its content parts, checked as one list. */
async function loadContent(
  id: BlobId,
  node: TreeNode,
  load: (partId: BlobId) => Promise<Buffer>,
): Promise<void> {
  const content: (BlobId | null)[] = [];
  const holeSizes: number[] = [];
  let holes = false;
  for (const partId of node.contentParts!) {
    let part: { content?: unknown; holeSizes?: unknown };
    try {
      part = JSON.parse((await load(partId)).toString('utf8')) as typeof part;
    } catch (cause) {
      throw new IntegrityError(`content part ${partId} of ${node.name} is not valid JSON`, {
        cause,
        details: { blob: partId },
      });
    }
    if (
      typeof part !== 'object' ||
      part === null ||
      !Array.isArray(part.content) ||
      part.content.length === 0
    )
      bad(id, `content part ${partId} of ${node.name} has no chunk list`);
    if (
      part.holeSizes !== undefined &&
      (!Array.isArray(part.holeSizes) || part.holeSizes.length !== part.content.length)
    )
      bad(id, `content part ${partId} of ${node.name}: holeSizes does not match content`);
    for (let i = 0; i < part.content.length; i++) {
      content.push(part.content[i] as BlobId | null);
      holeSizes.push(Array.isArray(part.holeSizes) ? (part.holeSizes[i] as number) : 0);
    }
    if (part.holeSizes !== undefined) holes = true;
  }
  node.content = content;
  if (holes) node.holeSizes = holeSizes;
  checkContent(id, node);
}
