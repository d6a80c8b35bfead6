/**
 * Restore of a directory tree from blobs.
 *
 * Every file is written under a temporary name in its final directory, checked (size), given its metadata and
 * only then renamed into place, so an interrupted or failed restore never leaves a complete-looking file.
 * Holes (null chunks) and all-zero runs inside chunks are not written: the file is sized first with ftruncate,
 * so they stay sparse. Directory modes and times are applied after their contents (post-order).
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fsSync from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { CancelledError, ConflictError, IntegrityError, throwIfAborted } from '../../core/base.ts';
import type { RunOptions } from '../../core/base.ts';
import type { BlobId, BlobReader, TreeBlob, TreeNode } from '../api.ts';
import { decodeTree } from './codec.ts';
import { errnoOf, fsError } from './fserrors.ts';
import { Semaphore } from './limit.ts';
import { SmallFileWriter, SPARSE_BLOCK, type SmallFileFailure } from './small-files.ts';
import { isAllZero } from './zero.ts';

const execFileAsync = promisify(execFile);

export interface TreeRestoreOptions extends RunOptions {
  /** Paths below the tree root ('a/b'); only these and everything below them are restored. */
  include?: string[];
  /** Replace existing files (atomically); without it an existing entry is a ConflictError. */
  overwrite?: boolean;
  /** Files written at once; default 16. */
  fileConcurrency?: number;
}

export interface TreeRestoreResult {
  files: number;
  bytes: number;
  /** Entries that could not be recreated (sockets; devices when not root). */
  warnings: string[];
}

/** Blob loads in flight per file. */
const LOADS_AHEAD = 4;
/** Files of one chunk up to this size are written by the small-file writer threads (small-files.ts). */
const SMALL_FILE = 1024 * 1024;

type Selection = 'all' | 'ancestor' | 'none';

function normalizeIncludes(include: string[] | undefined): string[] | undefined {
  if (!include || include.length === 0) return undefined;
  return include.map((p) =>
    p
      .split('/')
      .filter((s) => s !== '' && s !== '.')
      .join('/'),
  );
}

/** Temporary names: one random prefix per process and a counter (no CSPRNG call per file). */
const TEMP_PREFIX = `.tern-restore-${randomBytes(6).toString('hex')}-`;
let tempCounter = 0;
function tempName(): string {
  return `${TEMP_PREFIX}${(tempCounter++).toString(36)}`;
}

/**
 * Single-chunk files are queued across directories and restored in batches of QUEUE_FILES, their blobs
 * loaded in pack order (BlobReader.loadMany): the backup interleaves directories, so per directory the blobs
 * are scattered over the packs, but a batch reads each pack region once. The walk waits while more than two
 * batches are pending, so a huge tree is not held in memory at once.
 */
const QUEUE_FILES = 4096;
/** Most small files queued or being restored; a directory listing waits while more are pending. */
const PENDING_FILES = 2 * QUEUE_FILES;
/**
 * Directory listings loaded but not yet queued: the check against PENDING_FILES and the queueing of a
 * directory's files are separated by the listing's load, so without this every waiting directory would pass
 * the check at once and queue its files (the whole tree in memory).
 */
const DIRS_LOADING = 8;

function timesOf(node: TreeNode): number {
  // Node's utimes takes seconds as a double and libuv truncates them to whole microseconds. A double near
  // 1.8e9 s resolves ~0.24 µs, so aim at the middle of the microsecond to get exactly that microsecond back.
  const ns = node.mtimeNs !== undefined ? BigInt(node.mtimeNs) : BigInt(Math.round(node.mtimeMs * 1e6));
  const sec = ns / 1_000_000_000n - (ns < 0n && ns % 1_000_000_000n !== 0n ? 1n : 0n);
  const us = (ns - sec * 1_000_000_000n) / 1000n;
  return Number(sec) + (Number(us) + 0.5) / 1e6;
}

class TreeRestore {
  readonly result: TreeRestoreResult = { files: 0, bytes: 0, warnings: [] };
  private readonly reader: BlobReader;
  private readonly opts: TreeRestoreOptions;
  private readonly includes: string[] | undefined;
  private readonly fileSem: Semaphore;
  private readonly treeSem = new Semaphore(8);
  private readonly entrySem = new Semaphore(256);
  /** Small files waiting to be restored in storage order, and the chain of restores of such batches. */
  private smallQueue: { node: TreeNode; abs: string }[] = [];
  private smallChain: Promise<void> = Promise.resolve();
  /** Files queued or in a batch being restored. */
  private smallPending = 0;
  /** Directories between passing the PENDING_FILES check and queueing their files; walkers waiting for a turn. */
  private dirsLoading = 0;
  private walkWaiters: (() => void)[] = [];
  /** Directories whose metadata is applied at the end, children first. */
  private readonly dirMeta: { node: TreeNode; abs: string }[] = [];
  private readonly hardLinks = new Map<string, Promise<string>>();
  private readonly controller = new AbortController();
  private firstError: { error: unknown } | undefined;
  private readonly signal: AbortSignal;
  private readonly isRoot = process.getuid?.() === 0;
  private bytesRead = 0;
  private lastProgress = 0;
  /** Directories this restore created (or found empty): nothing can be in the way inside them. */
  private readonly freshDirs = new Set<string>();
  /** Writes files of at most one chunk in worker threads. */
  private readonly smallWriter = new SmallFileWriter();

  constructor(reader: BlobReader, opts: TreeRestoreOptions) {
    this.reader = reader;
    this.opts = opts;
    this.includes = normalizeIncludes(opts.include);
    this.fileSem = new Semaphore(opts.fileConcurrency ?? 16);
    this.signal = opts.signal
      ? AbortSignal.any([opts.signal, this.controller.signal])
      : this.controller.signal;
  }

  async run(tree: BlobId, target: string): Promise<TreeRestoreResult> {
    const abs = path.resolve(target);
    try {
      await fs.mkdir(abs, { recursive: true });
      const st = await fs.stat(abs);
      if (!st.isDirectory()) throw new ConflictError(`restore target ${abs} is not a directory`);
      if ((await fs.readdir(abs)).length === 0) this.freshDirs.add(abs);
    } catch (err) {
      throw fsError(err, `creating restore target ${abs}`);
    }
    try {
      const root = await this.loadTree(tree);
      await this.restoreDir(root, abs, '', 'ancestor', root.self, true);
      await this.flushSmall();
      for (const d of this.dirMeta) {
        throwIfAborted(this.signal);
        await this.applyMeta(d.node, d.abs, 'dir');
      }
    } catch (err) {
      if (this.opts.signal?.aborted) throw new CancelledError('tree restore cancelled', { cause: err });
      throw this.firstError ? this.firstError.error : err;
    } finally {
      await this.smallWriter.close();
    }
    this.report(true);
    return this.result;
  }

  private fail(err: unknown): void {
    if (!this.firstError) {
      this.firstError = { error: err };
      this.controller.abort(err);
    }
  }

  private report(force = false): void {
    const onProgress = this.opts.onProgress;
    if (!onProgress) return;
    const now = Date.now();
    if (!force && now - this.lastProgress < 200) return;
    this.lastProgress = now;
    onProgress({
      phase: 'restore',
      bytesRead: this.result.bytes,
      bytesTransferred: this.bytesRead,
      items: this.result.files,
    });
  }

  private async settle(tasks: Promise<unknown>[]): Promise<void> {
    for (const t of tasks) t.catch((err: unknown) => this.fail(err));
    const results = await Promise.allSettled(tasks);
    for (const r of results) if (r.status === 'rejected') throw r.reason;
  }

  private async loadTree(id: BlobId): Promise<TreeBlob> {
    const data = await this.treeSem.run(() => this.reader.loadBlob(id, { signal: this.signal }));
    this.bytesRead += data.length;
    return decodeTree(id, data);
  }

  private select(rel: string, parent: Selection): Selection {
    if (parent === 'all' || !this.includes) return 'all';
    let sel: Selection = 'none';
    for (const inc of this.includes) {
      if (inc === '' || inc === rel || rel.startsWith(inc + '/')) return 'all';
      if (inc.startsWith(rel + '/')) sel = 'ancestor';
    }
    return sel;
  }

  /** Removes what is in the way of `abs`, or refuses when not overwriting. Returns whether it was a directory. */
  private async clearWay(abs: string, wantDir: boolean): Promise<boolean> {
    if (this.freshDirs.has(path.dirname(abs))) return false;
    let st;
    try {
      st = fsSync.lstatSync(abs);
    } catch (err) {
      if (errnoOf(err) === 'ENOENT') return false;
      throw fsError(err, `checking ${abs}`);
    }
    if (wantDir && st.isDirectory()) return true;
    if (!this.opts.overwrite)
      throw new ConflictError(`${abs} already exists (restore with overwrite to replace it)`);
    // A file is replaced by rename; only a directory in the way of a non-directory must go first.
    if (st.isDirectory() || wantDir) await fs.rm(abs, { recursive: true, force: true });
    return false;
  }

  private async restoreDir(
    tree: TreeBlob,
    abs: string,
    rel: string,
    sel: Selection,
    self: TreeNode | undefined,
    isTarget = false,
    onQueued?: () => void,
  ): Promise<void> {
    throwIfAborted(this.signal);
    const tasks: Promise<unknown>[] = [];
    const small: { node: TreeNode; abs: string }[] = [];
    for (const node of tree.nodes) {
      const childRel = rel === '' ? node.name : `${rel}/${node.name}`;
      const childSel = this.select(childRel, sel);
      if (childSel === 'none') continue;
      const childAbs = path.join(abs, node.name);
      if (
        childSel === 'all' &&
        node.type === 'file' &&
        node.linkGroup === undefined &&
        (node.content?.length ?? 0) <= 1 &&
        (node.size ?? 0) <= SMALL_FILE
      )
        small.push({ node, abs: childAbs });
      else if (node.type === 'dir') tasks.push(this.restoreSubdir(node, childAbs, childRel, childSel));
      else if (childSel === 'all') {
        // A slot per entry in progress keeps a directory of a million files from queueing them all at once.
        await this.entrySem.acquire();
        if (this.signal.aborted) {
          this.entrySem.release();
          break;
        }
        const leaf = this.restoreLeaf(node, childAbs, childRel);
        leaf.then(
          () => this.entrySem.release(),
          () => this.entrySem.release(),
        );
        tasks.push(leaf);
      }
    }
    if (small.length > 0) {
      for (const f of small) this.smallQueue.push(f);
      this.smallPending += small.length;
      if (this.smallQueue.length >= QUEUE_FILES) tasks.push(this.flushSmall());
    }
    onQueued?.();
    await this.settle(tasks);
    throwIfAborted(this.signal);
    // Only a directory the tree fully describes gets its metadata; the target gets it when restored whole.
    // It is applied at the end (children before parents), after the queued small files are in place.
    if (self && (sel === 'all' || (isTarget && !this.includes))) this.dirMeta.push({ node: self, abs });
  }

  /** Restores the queued small files, their blobs loaded in pack order (one pass over each pack region). */
  private flushSmall(): Promise<void> {
    const files = this.smallQueue;
    this.smallQueue = [];
    this.smallChain = this.smallChain.then(async () => {
      try {
        if (files.length > 0) await this.restoreSmallGroup(files);
      } finally {
        this.smallPending -= files.length;
        this.wakeWalkers();
      }
    });
    return this.smallChain;
  }

  private wakeWalkers(): void {
    const waiters = this.walkWaiters;
    this.walkWaiters = [];
    for (const w of waiters) w();
  }

  /** Waits for a turn to load a directory listing (bounded small-file queue, few listings loading). */
  private async walkTurn(): Promise<void> {
    for (;;) {
      throwIfAborted(this.signal);
      if (this.smallPending < PENDING_FILES && this.dirsLoading < DIRS_LOADING) {
        this.dirsLoading++;
        return;
      }
      if (this.smallPending >= PENDING_FILES) {
        if (this.smallQueue.length >= QUEUE_FILES) void this.flushSmall().catch(() => undefined);
        // A failed batch rejects the chain: this walker fails with it.
        await this.smallChain;
      } else await new Promise<void>((resolve) => this.walkWaiters.push(resolve));
    }
  }

  private async restoreSubdir(node: TreeNode, abs: string, rel: string, sel: Selection): Promise<void> {
    try {
      if (!(await this.clearWay(abs, true))) {
        fsSync.mkdirSync(abs, { mode: 0o700 });
        this.freshDirs.add(abs);
      }
    } catch (err) {
      throw fsError(err, `creating directory ${abs}`);
    }
    await this.walkTurn();
    let held = true;
    const done = (): void => {
      if (!held) return;
      held = false;
      this.dirsLoading--;
      this.wakeWalkers();
    };
    try {
      const sub = await this.loadTree(node.subtree ?? '');
      await this.restoreDir(sub, abs, rel, sel, node, false, done);
    } finally {
      done();
    }
  }

  private async restoreLeaf(node: TreeNode, abs: string, rel: string): Promise<void> {
    throwIfAborted(this.signal);
    switch (node.type) {
      case 'file':
        return this.restoreFile(node, abs);
      case 'symlink':
        return this.restoreSpecial(node, abs, (tmp) => fs.symlink(node.linkTarget ?? '', tmp));
      case 'fifo':
        return this.restoreSpecial(node, abs, async (tmp) => {
          await execFileAsync('mkfifo', ['-m', '600', '--', tmp]);
        });
      case 'chardev':
      case 'blockdev': {
        if (!this.isRoot || node.rdev === undefined) {
          this.warning(rel, `${node.type} not restored (needs root)`);
          return;
        }
        const rdev = node.rdev;
        // Linux dev_t encoding (glibc gnu_dev_major/minor).
        const major = ((rdev >> 8) & 0xfff) | (Math.floor(rdev / 2 ** 32) & ~0xfff);
        const minor = (rdev & 0xff) | ((rdev >> 12) & ~0xff & 0xfffff);
        return this.restoreSpecial(node, abs, async (tmp) => {
          await execFileAsync('mknod', [
            '-m',
            '600',
            '--',
            tmp,
            node.type === 'chardev' ? 'c' : 'b',
            `${major}`,
            `${minor}`,
          ]);
        });
      }
      default:
        this.warning(rel, `${node.type} not restored`);
    }
  }

  private warning(rel: string, why: string): void {
    if (this.result.warnings.length < 1000) this.result.warnings.push(`${rel}: ${why}`);
  }

  /** Creates a non-regular entry under a temporary name, gives it its metadata, renames it into place. */
  private async restoreSpecial(
    node: TreeNode,
    abs: string,
    create: (tmp: string) => Promise<void>,
  ): Promise<void> {
    const tmp = path.join(path.dirname(abs), tempName());
    try {
      await this.clearWay(abs, false);
      await create(tmp);
      await this.applyMeta(node, tmp, node.type);
      await fs.rename(tmp, abs);
    } catch (err) {
      await fs.rm(tmp, { force: true }).catch(() => undefined);
      throw fsError(err, `restoring ${abs}`);
    }
  }

  private async applyMeta(node: TreeNode, abs: string, type: TreeNode['type']): Promise<void> {
    if (this.isRoot) await fs.lchown(abs, node.uid, node.gid);
    // chmod after chown: chown clears set-id bits. Symlinks have no mode of their own on Linux.
    if (type !== 'symlink') await fs.chmod(abs, node.mode);
    const t = timesOf(node);
    await fs.lutimes(abs, t, t);
  }

  private async restoreFile(node: TreeNode, abs: string): Promise<void> {
    const group = node.linkGroup;
    if (group !== undefined) {
      const first = this.hardLinks.get(group);
      if (first) {
        const firstPath = await first;
        const tmp = path.join(path.dirname(abs), tempName());
        try {
          await this.clearWay(abs, false);
          await fs.link(firstPath, tmp);
          await fs.rename(tmp, abs);
        } catch (err) {
          await fs.rm(tmp, { force: true }).catch(() => undefined);
          throw fsError(err, `linking ${abs} to ${firstPath}`);
        }
        this.result.files++;
        return;
      }
      const done = this.fileSem.run(() => this.writeFile(node, abs)).then(() => abs);
      this.hardLinks.set(group, done);
      await done;
      return;
    }
    await this.fileSem.run(() => this.writeFile(node, abs));
  }

  /** Small files whose blobs are loaded in one `loadMany` (adjacent blobs of a pack read together). */
  private async restoreSmallGroup(files: { node: TreeNode; abs: string }[]): Promise<void> {
    throwIfAborted(this.signal);
    const byId = new Map<BlobId, { node: TreeNode; abs: string }[]>();
    for (const f of files) {
      const id = f.node.content?.[0] ?? null;
      if (id === null) {
        await this.writeSmallLoaded(f.node, f.abs, undefined, null);
        continue;
      }
      let list = byId.get(id);
      if (!list) byId.set(id, (list = []));
      list.push(f);
    }
    const onBlob = async (id: BlobId, plain: Buffer): Promise<void> => {
      for (const f of byId.get(id) ?? []) await this.writeSmallLoaded(f.node, f.abs, plain, id);
    };
    const ids = [...byId.keys()];
    if (this.reader.loadMany) await this.reader.loadMany(ids, onBlob, { signal: this.signal });
    else for (const id of ids) await onBlob(id, await this.reader.loadBlob(id, { signal: this.signal }));
  }

  /** Writes a small file from its loaded blob in the file writer threads, under a temporary name renamed into place. */
  private async writeSmallLoaded(
    node: TreeNode,
    abs: string,
    data: Buffer | undefined,
    id: BlobId | null,
  ): Promise<void> {
    throwIfAborted(this.signal);
    const size = node.size ?? 0;
    await this.clearWay(abs, false);
    if (data) this.bytesRead += data.length;
    if ((data?.length ?? node.holeSizes?.[0] ?? 0) !== size)
      throw new IntegrityError(`chunks of ${abs} do not add up to its recorded size ${size}`, {
        details: { blob: id },
      });
    try {
      await this.smallWriter.write({
        tmp: path.join(path.dirname(abs), tempName()),
        abs,
        mode: node.mode,
        uid: this.isRoot ? node.uid : -1,
        gid: this.isRoot ? node.gid : -1,
        time: timesOf(node),
        size,
        data,
      });
    } catch (err) {
      const f = err as SmallFileFailure;
      if (f.code === 'SIZE') throw new IntegrityError(f.message);
      throw fsError(Object.assign(new Error(f.message), { code: f.code }), `restoring ${abs}`);
    }
    this.result.files++;
    this.result.bytes += size;
    this.report();
  }

  /** A file of at most one chunk: load it, then write it like the batched small files. */
  private async writeSmallFile(node: TreeNode, abs: string): Promise<void> {
    const id = node.content?.[0] ?? null;
    const data = id === null ? undefined : await this.reader.loadBlob(id, { signal: this.signal });
    await this.writeSmallLoaded(node, abs, data, id);
  }

  private async writeFile(node: TreeNode, abs: string): Promise<void> {
    throwIfAborted(this.signal);
    const size = node.size ?? 0;
    if ((node.content?.length ?? 0) <= 1 && size <= SMALL_FILE) return this.writeSmallFile(node, abs);
    const tmp = path.join(path.dirname(abs), tempName());
    let fh: fs.FileHandle | undefined;
    const content = node.content ?? [];
    const loads: (Promise<Buffer> | undefined)[] = [];
    const startLoad = (i: number): void => {
      const id = content[i];
      if (i < content.length && id !== null && id !== undefined && loads[i] === undefined) {
        const p = this.reader.loadBlob(id, { signal: this.signal });
        p.catch(() => undefined);
        loads[i] = p;
      }
    };
    try {
      await this.clearWay(abs, false);
      fh = await fs.open(tmp, 'wx', 0o600);
      if (size > 0) await fh.truncate(size);
      let offset = 0;
      for (let i = 0; i < Math.min(LOADS_AHEAD, content.length); i++) startLoad(i);
      for (let i = 0; i < content.length; i++) {
        throwIfAborted(this.signal);
        startLoad(i + LOADS_AHEAD);
        const id = content[i];
        if (id === null || id === undefined) {
          offset += node.holeSizes?.[i] ?? 0;
          continue;
        }
        const data = await loads[i]!;
        loads[i] = undefined;
        this.bytesRead += data.length;
        if (offset + data.length > size)
          throw new IntegrityError(`chunks of ${abs} exceed its recorded size ${size}`, {
            details: { blob: id },
          });
        await writeSparse(fh, data, offset);
        offset += data.length;
        this.report();
      }
      if (offset !== size)
        throw new IntegrityError(`chunks of ${abs} add up to ${offset} bytes, the tree records ${size}`);
      const st = await fh.stat();
      if (st.size !== size)
        throw new IntegrityError(`restored ${abs} has ${st.size} bytes, expected ${size}`);
      if (this.isRoot) await fh.chown(node.uid, node.gid);
      await fh.chmod(node.mode);
      const t = timesOf(node);
      await fh.utimes(t, t);
      await fh.close();
      fh = undefined;
      await fs.rename(tmp, abs);
    } catch (err) {
      await Promise.allSettled(loads.filter((p) => p !== undefined));
      await fh?.close().catch(() => undefined);
      await fs.rm(tmp, { force: true }).catch(() => undefined);
      throw fsError(err, `restoring ${abs}`);
    }
    this.result.files++;
    this.result.bytes += size;
  }
}

/** Writes `data` at `position`, skipping all-zero blocks (the file was pre-sized, so they read as zeros). */
async function writeSparse(fh: fs.FileHandle, data: Buffer, position: number): Promise<void> {
  let runStart = -1;
  for (let o = 0; o < data.length; o += SPARSE_BLOCK) {
    const end = Math.min(o + SPARSE_BLOCK, data.length);
    const zero = end - o === SPARSE_BLOCK && isAllZero(data, o, end);
    if (!zero && runStart < 0) runStart = o;
    else if (zero && runStart >= 0) {
      await writeAll(fh, data.subarray(runStart, o), position + runStart);
      runStart = -1;
    }
  }
  if (runStart >= 0) await writeAll(fh, data.subarray(runStart), position + runStart);
}

async function writeAll(fh: fs.FileHandle, data: Buffer, position: number): Promise<void> {
  let done = 0;
  while (done < data.length) {
    const { bytesWritten } = await fh.write(data, done, data.length - done, position + done);
    done += bytesWritten;
  }
}

export async function restoreTree(
  reader: BlobReader,
  tree: BlobId,
  target: string,
  opts: TreeRestoreOptions = {},
): Promise<TreeRestoreResult> {
  return new TreeRestore(reader, opts).run(tree, target);
}
