/**
 * Backup of a directory tree into blobs: files are cut by FastCDC into 'data' blobs, directories become
 * canonical 'tree' blobs (bottom-up, so a directory's id depends on everything below it).
 *
 * Incremental (like restic): with a parent tree, a regular file whose size, mtime, ctime and inode match the
 * parent's node (and whose chunks are all still known to the writer) reuses the parent's content list unread.
 * Files that vanish or cannot be read become warnings, never a failed backup.
 */
import fsSync, { constants as fsc } from 'node:fs';
import fs from 'node:fs/promises';
import type { BigIntStats } from 'node:fs';
import path from 'node:path';
import { CancelledError, InputError, throwIfAborted } from '../../core/base.ts';
import type { RunOptions } from '../../core/base.ts';
import {
  FILE_BLOB_MAX,
  MIN_HOLE,
  type BlobId,
  type BlobReader,
  type BlobWriter,
  type TreeBlob,
  type TreeNode,
} from '../api.ts';
import { FastCdc } from './chunker.ts';
import type { ChunkerParams } from './chunker.ts';
import { compareNames, CONTENT_PART_CHUNKS, encodeContentParts, ListingEncoder, openTree } from './codec.ts';
import { ExcludeMatcher } from './exclude.ts';
import { errnoOf, fsError } from './fserrors.ts';
import { Semaphore } from './limit.ts';
import { isAllZero } from './zero.ts';

export interface TreeBackupOptions extends RunOptions {
  /** Tree of the previous snapshot of the same path; needs `reader`. */
  parentTree?: BlobId;
  reader?: BlobReader;
  excludes?: string[];
  chunker?: Partial<ChunkerParams>;
  /** Files read at once (small files); default 24. */
  fileConcurrency?: number;
  /** Files larger than one chunk read at once; default 2. */
  largeFileConcurrency?: number;
  /** A directory listing longer than this is stored in parts (default TREE_PART_BYTES; tests use less). */
  treePartBytes?: number;
  /** A file's chunk list longer than this is stored in parts (default CONTENT_PART_CHUNKS; tests use less). */
  contentPartChunks?: number;
}

export interface TreeBackupStats {
  bytesRead: number;
  bytesAdded: number;
  filesNew: number;
  filesChanged: number;
  filesUnmodified: number;
  dirs: number;
  /** Entries skipped or changed while being read (path: reason). At most MAX_WARNINGS, then a count. */
  warnings: string[];
}

export interface TreeBackupResult {
  tree: BlobId;
  stats: TreeBackupStats;
}

const READ_SIZE = 8 * 1024 * 1024;
/**
 * Files up to this size are one blob, read whole with synchronous calls: by the writer's crypto worker when
 * it offers `saveFile`, else here. On a local filesystem the syscalls take a few microseconds while each
 * asynchronous round trip through libuv's pool costs tens, which dominated backups of many small files.
 * Metadata (readdir, lstat, readlink) is read synchronously for the same reason.
 */
const SMALL_FILE = FILE_BLOB_MAX;
/** Chunk saves in flight per file, and their bytes: the writer applies its own back-pressure as well. */
const SAVES_IN_FLIGHT = 8;
const SAVE_BYTES_IN_FLIGHT = 32 * 1024 * 1024;
/**
 * Zero runs of at least this many bytes (in 4 KiB blocks aligned to the file offset, like filesystem holes)
 * become holes of their own: the data chunk before one ends where the run begins.
 */
const ZERO_RUN = 256 * 1024;
const BLOCK = 4096;

/** Zero runs ([start, end) buffer indexes) of at least ZERO_RUN bytes in buf[0, end), blocks aligned to file offsets. */
function zeroRuns(buf: Buffer, end: number, fileOffset: number): [number, number][] {
  const runs: [number, number][] = [];
  let b = (BLOCK - (fileOffset % BLOCK)) % BLOCK;
  let runStart = -1;
  for (; b + BLOCK <= end; b += BLOCK) {
    if (isAllZero(buf, b, b + BLOCK)) {
      if (runStart < 0) runStart = b;
    } else {
      if (runStart >= 0 && b - runStart >= ZERO_RUN) runs.push([runStart, b]);
      runStart = -1;
    }
  }
  if (runStart >= 0 && b - runStart >= ZERO_RUN) runs.push([runStart, b]);
  return runs;
}
const MAX_WARNINGS = 1000;
/** Subdirectories of one directory walked at once (see backupDir). */
const SUBDIRS_AT_ONCE = 4;

interface FileContent {
  size: number;
  content: (BlobId | null)[];
  holeSizes?: number[];
}

/** Thrown inside the walk for an entry that is skipped with a warning. */
class SkipEntry extends Error {}

/**
 * Entries of one directory started and not yet added to its listing: past this many the walk of the directory
 * waits for the oldest (a directory of 393k entries held them all, 792 MiB of RSS).
 */
const NODES_AHEAD = 8192;
const DONE: Promise<TreeNode | undefined> = Promise.resolve(undefined);

/**
 * The parent snapshot's listing of a directory, looked up in name order (the order the backup takes the
 * names in and the order listings are stored in): read a part at a time, never held whole.
 */
class ParentListing {
  private run: TreeNode[] = [];
  private at = 0;
  private ended = false;
  private readonly runs: AsyncIterator<TreeNode[]>;

  constructor(runs: AsyncIterator<TreeNode[]>) {
    this.runs = runs;
  }

  /** The node named `name`, or undefined; names must be asked for in increasing order. */
  async find(name: string): Promise<TreeNode | undefined> {
    for (;;) {
      while (this.at < this.run.length) {
        const node = this.run[this.at]!;
        const c = compareNames(node.name, name);
        if (c > 0) return undefined;
        this.at++;
        if (c === 0) return node;
      }
      if (this.ended) return undefined;
      const r = await this.runs.next();
      if (r.done) {
        this.ended = true;
        return undefined;
      }
      this.run = r.value;
      this.at = 0;
    }
  }
}

function nodeType(st: BigIntStats): TreeNode['type'] | undefined {
  if (st.isFile()) return 'file';
  if (st.isDirectory()) return 'dir';
  if (st.isSymbolicLink()) return 'symlink';
  if (st.isFIFO()) return 'fifo';
  if (st.isCharacterDevice()) return 'chardev';
  if (st.isBlockDevice()) return 'blockdev';
  if (st.isSocket()) return 'socket';
  return undefined;
}

function baseNode(name: string, st: BigIntStats, type: TreeNode['type']): TreeNode {
  return {
    name,
    type,
    mode: Number(st.mode & 0o7777n),
    uid: Number(st.uid),
    gid: Number(st.gid),
    mtimeMs: Number(st.mtimeNs) / 1e6,
    mtimeNs: st.mtimeNs.toString(),
  };
}

class TreeBackup {
  readonly stats: TreeBackupStats = {
    bytesRead: 0,
    bytesAdded: 0,
    filesNew: 0,
    filesChanged: 0,
    filesUnmodified: 0,
    dirs: 0,
    warnings: [],
  };
  private warningCount = 0;
  private readonly chunker: FastCdc;
  private readonly excludes: ExcludeMatcher;
  private readonly fileSem: Semaphore;
  private readonly largeSem: Semaphore;
  private readonly treeLoadSem = new Semaphore(8);
  /**
   * Entries being worked on (directories only while they are stat'ed): bounds the memory of a walk over
   * millions of files, whose entries otherwise would all be stat'ed and queued at once.
   */
  private readonly entrySem = new Semaphore(256);
  private readonly hardLinks = new Map<string, Promise<FileContent | undefined>>();
  private readonly controller = new AbortController();
  private firstError: { error: unknown } | undefined;
  readonly signal: AbortSignal;
  /**
   * O_NONBLOCK: if a file was replaced by a fifo after lstat, open must not hang (no effect on regular files).
   * O_NOATIME (root only, else EPERM on others' files): a backup does not touch access times.
   */
  private readonly openFlags = fsc.O_RDONLY | fsc.O_NONBLOCK | (process.getuid?.() === 0 ? fsc.O_NOATIME : 0);
  private lastProgress = 0;
  private itemsDone = 0;
  private lastYield = performance.now();
  private pause: Promise<void> | undefined;

  private readonly writer: BlobWriter;
  private readonly root: string;
  private readonly opts: TreeBackupOptions;

  constructor(writer: BlobWriter, root: string, opts: TreeBackupOptions) {
    this.writer = writer;
    this.root = root;
    this.opts = opts;
    this.chunker = new FastCdc(opts.chunker);
    this.excludes = new ExcludeMatcher(opts.excludes ?? [], root);
    this.fileSem = new Semaphore(opts.fileConcurrency ?? 128);
    this.largeSem = new Semaphore(opts.largeFileConcurrency ?? 2);
    this.signal = opts.signal
      ? AbortSignal.any([opts.signal, this.controller.signal])
      : this.controller.signal;
  }

  async run(): Promise<TreeBackupResult> {
    const absRoot = path.resolve(this.root);
    let st: BigIntStats;
    try {
      st = await fs.stat(absRoot, { bigint: true });
    } catch (err) {
      throw fsError(err, `reading backup source ${absRoot}`);
    }
    if (!st.isDirectory()) throw new InputError(`${absRoot} is not a directory`);
    const parent = await this.loadParent(this.opts.parentTree);
    const self = baseNode('', st, 'dir');
    let tree: BlobId;
    try {
      tree = await this.backupDir(absRoot, '', parent, { chunker: { ...this.chunker.params }, self }, true);
    } catch (err) {
      if (this.opts.signal?.aborted) throw new CancelledError('tree backup cancelled', { cause: err });
      throw this.firstError ? this.firstError.error : err;
    }
    this.stats.dirs++;
    this.report(true);
    return { tree, stats: this.stats };
  }

  /**
   * Metadata and small files are read synchronously; with a writer that answers at once the whole walk could run
   * without the event loop turning (no timers, no signals, no Ctrl-C). Give it a turn every 10 ms.
   */
  private breathe(): Promise<void> | undefined {
    // Every chain of work passes here before its next synchronous read, so all of them wait for the same turn.
    if (this.pause) return this.pause;
    if (performance.now() - this.lastYield < 10) return undefined;
    this.pause = new Promise((resolve) =>
      setImmediate(() => {
        this.pause = undefined;
        this.lastYield = performance.now();
        resolve();
      }),
    );
    return this.pause;
  }

  private fail(err: unknown): void {
    if (!this.firstError && !(err instanceof SkipEntry)) {
      this.firstError = { error: err };
      this.controller.abort(err);
    }
  }

  warn(rel: string, why: string): void {
    this.warningCount++;
    if (this.stats.warnings.length < MAX_WARNINGS) this.stats.warnings.push(`${rel || '.'}: ${why}`);
    else this.stats.warnings[MAX_WARNINGS - 1] = `… and ${this.warningCount - MAX_WARNINGS + 1} more`;
  }

  private report(force = false): void {
    const onProgress = this.opts.onProgress;
    if (!onProgress) return;
    const now = Date.now();
    if (!force && now - this.lastProgress < 200) return;
    this.lastProgress = now;
    onProgress({
      phase: 'backup',
      bytesRead: this.stats.bytesRead,
      bytesTransferred: this.stats.bytesAdded,
      items: this.itemsDone,
    });
  }

  /** A chunk list longer than the part size goes into content parts (tree/FORMAT.md). */
  private async splitContent(node: TreeNode): Promise<void> {
    const max = this.opts.contentPartChunks ?? CONTENT_PART_CHUNKS;
    if ((node.content?.length ?? 0) <= max) return;
    const ids: BlobId[] = [];
    for (const part of encodeContentParts(node.content!, node.holeSizes, max)) {
      const saved = await this.writer.saveBlob('tree', part, { signal: this.signal });
      this.stats.bytesAdded += saved.storedBytes;
      ids.push(saved.id);
    }
    node.contentParts = ids;
  }

  /** The parent's listing of a directory, read a part at a time as the backup goes through the names. */
  private async loadParent(id: BlobId | undefined): Promise<ParentListing | undefined> {
    if (id === undefined) return undefined;
    const reader = this.opts.reader;
    if (!reader) throw new InputError('an incremental tree backup needs a reader for the parent tree');
    const opened = await openTree(id, (blob) =>
      this.treeLoadSem.run(() => reader.loadBlob(blob, { signal: this.signal })),
    );
    return new ParentListing(opened.runs());
  }

  private async backupDir(
    abs: string,
    rel: string,
    parent: ParentListing | undefined,
    extra: Omit<TreeBlob, 'nodes'>,
    isRoot = false,
  ): Promise<BlobId> {
    throwIfAborted(this.signal);
    let names: string[];
    /** Entries the listing says are directories (d_type; unknown types count as not). */
    const dirNames = new Set<string>();
    try {
      const dirents = fsSync.readdirSync(abs, { withFileTypes: true });
      names = dirents.map((d) => {
        if (d.isDirectory()) dirNames.add(d.name);
        return d.name;
      });
    } catch (err) {
      if (isRoot) throw fsError(err, `listing ${abs}`);
      const code = errnoOf(err);
      if (code === 'ENOENT' || code === 'ENOTDIR') {
        this.warn(rel, 'directory vanished during backup');
        throw new SkipEntry();
      }
      this.warn(rel, `cannot list directory (${code ?? String(err)}); stored empty`);
      names = [];
    }
    names.sort(compareNames);
    // The nodes go to the listing's encoder in name order as they complete, and its parts are saved as they
    // fill: at most NODES_AHEAD entries of a directory are held, however many it has.
    const encoder = new ListingEncoder(extra, this.opts.treePartBytes);
    const partIds: BlobId[] = [];
    const save = async (blob: Buffer): Promise<BlobId> => {
      const saved = await this.writer.saveBlob('tree', blob, { signal: this.signal });
      this.stats.bytesAdded += saved.storedBytes;
      return saved.id;
    };
    const pending: Promise<TreeNode | undefined>[] = [];
    let next = 0;
    const takeOne = async (): Promise<void> => {
      const task = pending[next]!;
      pending[next++] = DONE;
      if (next >= 4096) {
        void pending.splice(0, next);
        next = 0;
      }
      const node = await task;
      if (node) for (const part of encoder.add(node)) partIds.push(await save(part));
    };
    // Subdirectories of one directory are walked SUBDIRS_AT_ONCE at a time: a walk that entered every
    // directory at once would interleave all of them, keeping the nodes of nearly the whole tree in memory
    // (a directory's nodes are freed when its tree blob is saved) and scattering each directory's blobs
    // over the packs, which a restore then reads back in many small pieces.
    const subdirSem = new Semaphore(SUBDIRS_AT_ONCE);
    try {
      for (const name of names) {
        const childRel = rel === '' ? name : `${rel}/${name}`;
        if (!this.excludes.empty && this.excludes.excludes(childRel, name)) continue;
        const parentNode = parent ? await parent.find(name) : undefined;
        while (pending.length - next >= NODES_AHEAD) await takeOne();
        let task: Promise<TreeNode | undefined>;
        if (dirNames.has(name)) {
          const childAbs = path.join(abs, name);
          task = subdirSem.run(async () => {
            throwIfAborted(this.signal);
            await this.entrySem.acquire();
            return this.backupEntry(childAbs, childRel, name, parentNode);
          });
        } else {
          // Take the slot before starting the entry, so a huge directory does not queue all its entries at once.
          await this.entrySem.acquire();
          if (this.signal.aborted) {
            this.entrySem.release();
            throwIfAborted(this.signal);
          }
          task = this.backupEntry(path.join(abs, name), childRel, name, parentNode);
        }
        task.catch((err: unknown) => this.fail(err));
        pending.push(task);
      }
      while (next < pending.length) await takeOne();
    } catch (err) {
      // Every entry started ends before the directory fails, so nothing is still running when the backup does.
      this.fail(err);
      await Promise.allSettled(pending.slice(next));
      throw err;
    }
    const end = encoder.finish();
    if ('whole' in end) return save(end.whole);
    for (const part of end.parts) partIds.push(await save(part));
    return save(end.head(partIds));
  }

  private async backupEntry(
    abs: string,
    rel: string,
    name: string,
    parentNode: TreeNode | undefined,
  ): Promise<TreeNode | undefined> {
    // The caller (backupDir) acquired this entry's slot.
    let held = true;
    const release = (): void => {
      if (held) {
        held = false;
        this.entrySem.release();
      }
    };
    try {
      return await this.backupEntryHeld(abs, rel, name, parentNode, release);
    } finally {
      release();
    }
  }

  private async backupEntryHeld(
    abs: string,
    rel: string,
    name: string,
    parentNode: TreeNode | undefined,
    release: () => void,
  ): Promise<TreeNode | undefined> {
    const pause = this.breathe();
    if (pause) await pause;
    throwIfAborted(this.signal);
    let st: BigIntStats;
    try {
      st = fsSync.lstatSync(abs, { bigint: true });
    } catch (err) {
      if (errnoOf(err) === 'ENOENT') this.warn(rel, 'vanished during backup');
      else this.warn(rel, `cannot stat (${errnoOf(err) ?? String(err)})`);
      return undefined;
    }
    const type = nodeType(st);
    if (!type) {
      this.warn(rel, 'unknown file type, skipped');
      return undefined;
    }
    const node = baseNode(name, st, type);
    try {
      switch (type) {
        case 'file':
          await this.backupFile(abs, rel, st, node, parentNode);
          break;
        case 'dir': {
          // A directory waits for its entries: it must not hold a slot they need.
          release();
          const parentSub =
            parentNode?.type === 'dir' && parentNode.subtree
              ? await this.loadParent(parentNode.subtree)
              : undefined;
          node.subtree = await this.backupDir(abs, rel, parentSub, {});
          this.stats.dirs++;
          break;
        }
        case 'symlink':
          node.linkTarget = fsSync.readlinkSync(abs);
          break;
        case 'chardev':
        case 'blockdev':
          node.rdev = Number(st.rdev);
          break;
        default:
          break;
      }
    } catch (err) {
      if (err instanceof SkipEntry) return undefined;
      const code = errnoOf(err);
      if (code === 'ENOENT' && type !== 'dir') {
        this.warn(rel, 'vanished during backup');
        return undefined;
      }
      if ((code === 'EACCES' || code === 'EPERM') && type !== 'dir') {
        this.warn(rel, `cannot read (${code}), skipped`);
        return undefined;
      }
      throw err;
    }
    this.itemsDone++;
    this.report();
    return node;
  }

  private async backupFile(
    abs: string,
    rel: string,
    st: BigIntStats,
    node: TreeNode,
    parentNode: TreeNode | undefined,
  ): Promise<void> {
    node.ctimeNs = st.ctimeNs.toString();
    node.inode = st.ino.toString();
    node.size = Number(st.size);
    if (st.nlink > 1n) node.linkGroup = `${st.dev}:${st.ino}`;
    if (
      parentNode?.type === 'file' &&
      parentNode.size === node.size &&
      parentNode.mtimeNs === node.mtimeNs &&
      parentNode.ctimeNs === node.ctimeNs &&
      parentNode.inode === node.inode &&
      (parentNode.content ?? []).every((id) => id === null || this.writer.hasBlob(id)) &&
      (parentNode.contentParts ?? []).every((id) => this.writer.hasBlob(id))
    ) {
      node.content = parentNode.content ?? [];
      if (parentNode.holeSizes) node.holeSizes = parentNode.holeSizes;
      if (parentNode.contentParts) node.contentParts = parentNode.contentParts;
      this.stats.filesUnmodified++;
      return;
    }
    let pending: Promise<FileContent | undefined>;
    const group = node.linkGroup;
    const known = group === undefined ? undefined : this.hardLinks.get(group);
    if (known) pending = known;
    else {
      const size = node.size;
      pending =
        size <= SMALL_FILE
          ? this.fileSem.run(() => this.readSmallFile(abs, rel, size))
          : size <= this.chunker.minSize
            ? this.fileSem.run(() => this.readFile(abs, rel, size))
            : this.largeSem.run(() => this.readFile(abs, rel, size));
      if (group !== undefined) this.hardLinks.set(group, pending);
    }
    const content = await pending;
    if (!content) throw new SkipEntry();
    node.size = content.size;
    node.content = content.content;
    if (content.holeSizes) node.holeSizes = content.holeSizes;
    await this.splitContent(node);
    if (known) this.stats.filesUnmodified++;
    else if (parentNode?.type === 'file') this.stats.filesChanged++;
    else this.stats.filesNew++;
  }

  /** A small file is one chunk (or one hole). */
  private async readSmallFile(
    abs: string,
    rel: string,
    expectedSize: number,
  ): Promise<FileContent | undefined> {
    const pause = this.breathe();
    if (pause) await pause;
    throwIfAborted(this.signal);
    if (this.writer.saveFile) {
      // The writer reads the file where it seals it (a crypto worker): this thread only walks and stats.
      const r = await this.writer.saveFile(abs, expectedSize, this.openFlags, { signal: this.signal });
      switch (r.kind) {
        case 'error':
          if (r.code === 'ENOENT') this.warn(rel, 'vanished during backup');
          else this.warn(rel, `cannot read (${r.code}), skipped`);
          return undefined;
        case 'grew':
          return this.readFile(abs, rel, expectedSize);
        case 'empty':
          if (expectedSize !== 0) this.sizeChanged(rel, expectedSize, 0);
          return { size: 0, content: [] };
        case 'zero':
          if (r.size !== expectedSize) this.sizeChanged(rel, expectedSize, r.size);
          this.stats.bytesRead += r.size;
          return { size: r.size, content: [null], holeSizes: [r.size] };
        case 'blob':
          if (r.size !== expectedSize) this.sizeChanged(rel, expectedSize, r.size);
          this.stats.bytesRead += r.size;
          this.stats.bytesAdded += r.storedBytes;
          return { size: r.size, content: [r.id] };
      }
    }
    let buf: Buffer;
    let total = 0;
    try {
      const fd = fsSync.openSync(abs, this.openFlags);
      try {
        // One byte more than expected: a file that grew goes the streaming way.
        buf = Buffer.allocUnsafeSlow(expectedSize + 1);
        for (;;) {
          const n = fsSync.readSync(fd, buf, total, buf.length - total, null);
          if (n === 0) break;
          total += n;
          if (total === expectedSize || total === buf.length) break;
        }
      } finally {
        fsSync.closeSync(fd);
      }
    } catch (err) {
      const code = errnoOf(err);
      if (code === 'ENOENT') this.warn(rel, 'vanished during backup');
      else this.warn(rel, `cannot read (${code ?? String(err)}), skipped`);
      return undefined;
    }
    if (total > expectedSize) return this.readFile(abs, rel, expectedSize);
    this.stats.bytesRead += total;
    if (total !== expectedSize) this.sizeChanged(rel, expectedSize, total);
    if (total === 0) return { size: 0, content: [] };
    if (total >= MIN_HOLE && isAllZero(buf, 0, total))
      return { size: total, content: [null], holeSizes: [total] };
    // buf is not pooled and nothing else uses it: the writer may take it over.
    const r = await this.writer.saveBlob('data', buf.subarray(0, total), { signal: this.signal });
    this.stats.bytesAdded += r.storedBytes;
    return { size: total, content: [r.id] };
  }

  private sizeChanged(rel: string, expected: number, found: number): void {
    this.warn(rel, `size changed during backup (${expected} → ${found} bytes)`);
  }

  /** Reads one file, cuts it into chunks and saves them; undefined when the file vanished or is unreadable. */
  private async readFile(abs: string, rel: string, expectedSize: number): Promise<FileContent | undefined> {
    throwIfAborted(this.signal);
    let fh: fs.FileHandle;
    try {
      fh = await fs.open(abs, this.openFlags);
    } catch (err) {
      const code = errnoOf(err);
      if (code === 'ENOENT') this.warn(rel, 'vanished during backup');
      else this.warn(rel, `cannot open (${code ?? String(err)}), skipped`);
      return undefined;
    }
    const content: (BlobId | null)[] = [];
    const holeSizes: number[] = [];
    let holes = false;
    const saves: { index: number; size: number; promise: Promise<void> }[] = [];
    let savingBytes = 0;
    const drainOne = async (): Promise<void> => {
      const s = saves.shift();
      if (!s) return;
      try {
        await s.promise;
      } finally {
        savingBytes -= s.size;
      }
    };
    const emit = async (chunk: Buffer, zero = false): Promise<void> => {
      const index = content.length;
      if (zero || (chunk.length >= MIN_HOLE && isAllZero(chunk))) {
        content.push(null);
        holeSizes.push(chunk.length);
        holes = true;
        return;
      }
      content.push(null);
      holeSizes.push(0);
      // Each chunk owns its memory: the writer may hand the buffer to a worker thread.
      const own = this.writer.allocBlobBuffer?.(chunk.length) ?? Buffer.allocUnsafeSlow(chunk.length);
      chunk.copy(own);
      const promise = this.writer.saveBlob('data', own, { signal: this.signal }).then((r) => {
        content[index] = r.id;
        this.stats.bytesAdded += r.storedBytes;
      });
      // Rejections are taken by drainOne; keep them from being reported as unhandled in the meantime.
      promise.catch(() => undefined);
      saves.push({ index, size: chunk.length, promise });
      savingBytes += chunk.length;
      while (saves.length > SAVES_IN_FLIGHT || savingBytes > SAVE_BYTES_IN_FLIGHT) await drainOne();
    };
    let total = 0;
    try {
      let pending: Buffer | undefined;
      let eof = false;
      // Two read buffers in turn: the tail of one (pending) is copied to the start of the other. A new buffer
      // per read made 2 GiB of garbage for a 2 GiB file, which the collector let pile up.
      const bufs: Buffer[] = [];
      for (let turn = 0; !eof; turn ^= 1) {
        throwIfAborted(this.signal);
        const carry = pending?.length ?? 0;
        // One byte past the expected end, so that a small file needs a single read to see its end.
        const want = Math.min(READ_SIZE, Math.max(64 * 1024, expectedSize - total + 1));
        if ((bufs[turn]?.length ?? 0) < carry + want) bufs[turn] = Buffer.allocUnsafeSlow(carry + want);
        const buf = bufs[turn]!.subarray(0, carry + want);
        if (pending) pending.copy(buf, 0);
        let filled = 0;
        while (filled < want) {
          const { bytesRead } = await fh.read(buf, carry + filled, want - filled, null);
          if (bytesRead === 0) break;
          filled += bytesRead;
          // A short read that ends exactly at the size stat reported is the end of the file.
          if (filled < want && total + filled >= expectedSize) break;
        }
        if (filled < want) eof = true;
        total += filled;
        this.stats.bytesRead += filled;
        const end = carry + filled;
        const runs = zeroRuns(buf, end, total - end);
        let run = 0;
        let pos = 0;
        while (pos < end && (eof || end - pos >= this.chunker.maxSize)) {
          while (run < runs.length && runs[run]![1] <= pos) run++;
          const r = runs[run];
          if (r && r[0] <= pos) {
            await emit(buf.subarray(pos, r[1]), true);
            pos = r[1];
            continue;
          }
          // Content-defined cut, but never into the next zero run.
          const len = this.chunker.cut(buf, pos, r ? Math.min(end, r[0]) : end);
          await emit(buf.subarray(pos, pos + len));
          pos += len;
        }
        pending = pos < end ? buf.subarray(pos, end) : undefined;
        this.report();
      }
      while (saves.length > 0) await drainOne();
    } catch (err) {
      // Let in-flight saves finish before reporting, so nothing is still running when the backup fails.
      await Promise.allSettled(saves.map((s) => s.promise));
      await fh.close().catch(() => undefined);
      if (err instanceof CancelledError || this.signal.aborted) throw err;
      const code = errnoOf(err);
      if (code === 'EIO' || code === 'EACCES' || code === 'EPERM' || code === 'EISDIR') {
        this.warn(rel, `read failed (${code}), skipped`);
        return undefined;
      }
      throw err;
    }
    await fh.close();
    if (total !== expectedSize)
      this.warn(rel, `size changed during backup (${expectedSize} → ${total} bytes)`);
    const out: FileContent = { size: total, content };
    if (holes) out.holeSizes = holeSizes;
    return out;
  }
}

export async function backupTree(
  writer: BlobWriter,
  root: string,
  opts: TreeBackupOptions = {},
): Promise<TreeBackupResult> {
  return new TreeBackup(writer, root, opts).run();
}
