/**
 * The datamover repository: keys, config, packs, index, snapshots (docs/repository-format.md).
 * `Repository` is the BlobReader; `BackupSession` (from `startBackup`) is the BlobWriter.
 */
import crypto from 'node:crypto';
import os from 'node:os';
import type { Clock, RunOptions } from '../core/base.ts';
import {
  ConflictError,
  InputError,
  IntegrityError,
  NotFoundError,
  StorageError,
  systemClock,
  throwIfAborted,
  TernError,
} from '../core/base.ts';
import type { ObjectStore, RangeReader } from '../storage/index.ts';
import type {
  BlobId,
  BlobReader,
  BlobType,
  BlobFile,
  BlobWriter,
  FileFailure,
  FileJob,
  FileSaved,
  LoadOptions,
  SaveResult,
  SnapshotManifest,
} from './api.ts';
import { FILE_BLOB_MAX, MIN_HOLE } from './api.ts';
import { BlobIndex, type BlobEntry } from './blob-index.ts';
import {
  IdHasher,
  NONCE_LEN,
  openBlob,
  openObject,
  sealObject,
  TYPE_DATA,
  TAG_LEN,
  TYPE_TREE,
  type MasterKey,
} from './crypto.ts';
import {
  encodeIndex,
  encodePackHeader,
  INDEX_ENTRY,
  INDEX_MAGIC,
  packKey,
  scanIndex,
  type IndexPack,
  type PackBlob,
} from './format.ts';
import { DEFAULT_KDF, makeKeyFile, parseKeyFile, unwrapKey } from './keys.ts';
import { RepoLock } from './lock.ts';
import { DIRECT_ALIGN, RunArena } from '../core/aligned.ts';
import {
  CryptoPool,
  FILE_META,
  ownArrayBuffer,
  RUN_META,
  SAVED_BLOB,
  SAVED_EMPTY,
  SAVED_GREW,
  SAVED_ZERO,
  type Ok,
  type WorkerRequest,
} from './pool.ts';
import { packJobs } from './files.ts';

export interface RepoConfig {
  version: 1;
  id: string;
  created: string;
}

export interface OpenOptions {
  clock?: Clock;
  /** Worker threads for crypto; default min(4, cores). */
  workers?: number;
  /**
   * Start the crypto workers while the key is derived (default), or on first use: verbs that only read
   * metadata (listings, keys, retention) rarely need them.
   */
  startWorkers?: boolean;
}

export interface InitOptions extends OpenOptions {
  kdf?: { N: number; r: number; p: number };
}

const TARGET_PACK = 16 * 1024 * 1024;
const MAX_BLOB = 64 * 1024 * 1024;
/** Packs per incremental index object during a backup: a killed backup loses at most about this many packs. */
const PACKS_PER_INDEX = 2;
/**
 * Pack uploads in flight, and of those, how many may still hold their pack buffer: a local store releases
 * the buffer once written, before its fsync, so fsyncs overlap without more memory (2 → 4 uploads: 2 GiB
 * random backup 2.88 → 2.58 s, median of 3, this 2-core machine).
 */
const UPLOADS_IN_FLIGHT = 4;
const PACKS_UPLOADING = 2;
const WORKER_BYTES_IN_FLIGHT = 24 * 1024 * 1024;
/** Pack buffer: a full pack plus its largest usual last blob (image chunks are 1 MiB) and header. */
const PACK_BUF = TARGET_PACK + 4 * 1024 * 1024;
/** Blob read buffers kept for reuse (allocBlobBuffer). */
const FREE_BLOB_BYTES = 32 * 1024 * 1024;
/**
 * Sealed-blob buffers kept for the next blob of the same class (blobClass), at most this many bytes: without a
 * bound, a tree backup of a 2 GiB random file kept every chunk's buffer (content-defined chunks all differ in
 * length, and they were kept by exact length, so none was reused) and peaked at 2527 MiB RSS.
 */
const FREE_SEALED_BYTES = 32 * 1024 * 1024;
/**
 * The capacity of a pooled buffer for a blob of `length` bytes: the length itself for image chunks (multiples
 * of 4 KiB, one length per image), else the length rounded up to 256 KiB. Content-defined chunks almost never
 * repeat a length: pooled by exact length, their buffers were never taken again (a 2 GiB file kept every one
 * of them, 2527 MiB RSS); in 256 KiB classes the next chunk of about the same size takes one.
 */
function blobClass(length: number): number {
  return length % 4096 === 0 ? length : Math.ceil(length / BLOB_CLASS) * BLOB_CLASS;
}
const BLOB_CLASS = 256 * 1024;

/** Buffers kept for reuse by a key (a blob class): at most `maxBytes` of them, and `perKey` of one key. */
class BufferPool {
  private readonly lists = new Map<number, ArrayBuffer[]>();
  /** Bytes held. */
  bytes = 0;
  private readonly maxBytes: number;
  private readonly perKey: number;

  constructor(maxBytes: number, perKey = Infinity) {
    this.maxBytes = maxBytes;
    this.perKey = perKey;
  }

  take(key: number): ArrayBuffer | undefined {
    const ab = this.lists.get(key)?.pop();
    if (ab) this.bytes -= ab.byteLength;
    return ab;
  }

  give(key: number, ab: ArrayBuffer): void {
    let list = this.lists.get(key);
    if (this.bytes + ab.byteLength > this.maxBytes || (list?.length ?? 0) >= this.perKey) return;
    if (!list) this.lists.set(key, (list = []));
    list.push(ab);
    this.bytes += ab.byteLength;
  }
}
/** Blobs up to SMALL_BLOB bytes go to the workers in batches of up to BATCH_BLOBS / BATCH_BYTES. */
const SMALL_BLOB = 64 * 1024;
const BATCH_BLOBS = 64;
const BATCH_BYTES = 512 * 1024;
/** A batch buffer holds BATCH_BYTES plus one more small blob, sealed (28 bytes more per blob). */
const BATCH_BUF = BATCH_BYTES + SMALL_BLOB + 28 * BATCH_BLOBS + 28;
/** loadMany: largest ranged read, largest gap read through, reads in flight. */
const RUN_BYTES = 4 * 1024 * 1024;
const RUN_GAP = 256 * 1024;
const RUNS_IN_FLIGHT = 3;
/** Most runs in flight a caller may ask for (LoadOptions.runsInFlight): the arena's slots. */
const MAX_RUNS_IN_FLIGHT = 8;
/** Blobs sealed in at most this many bytes are opened on the calling thread, not in the pool. */
const INLINE_OPEN = 64 * 1024;
/** Size of the recycled read and plaintext buffers of loadMany: a run plus its last blob. */
const RUN_BUF = RUN_BYTES + 2 * 1024 * 1024;

export function newId(bytes = 32): string {
  return crypto.randomBytes(bytes).toString('hex');
}

function typeCode(t: BlobType): number {
  return t === 'tree' ? TYPE_TREE : TYPE_DATA;
}

async function mapLimit<T>(items: T[], limit: number, fn: (t: T) => Promise<void>): Promise<void> {
  let i = 0;
  let failed = false;
  // After the first failure no new item starts: the caller is already unwinding (and may close the pool).
  const run = async (): Promise<void> => {
    while (!failed && i < items.length)
      await fn(items[i++]!).catch((err: unknown) => {
        failed = true;
        throw err;
      });
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, run));
}

/** A run's sealed bytes at `offset` of `buf` (shared, or transferred to the worker); `release` after the reply. */
interface RunRead {
  buf: ArrayBuffer | SharedArrayBuffer;
  offset: number;
  release: () => void;
}

/** Adjacent blobs of one pack, read in one ranged read (loadMany, writeFiles). */
interface LoadRun {
  pack: number;
  start: number;
  end: number;
  raw: number;
  blobs: { id: BlobId; e: BlobEntry }[];
}

/**
 * The pack reads of one loadMany or writeFiles call, where the store can hold an object open
 * (ObjectStore.openRanges): one reader per pack, opened at its first run and closed after its last, and a
 * pack's runs read one after another, in order. The kernel then sees one sequential reader per pack and reads
 * ahead (see LocalStore's RANGE_PIECE); with runs in flight across packs, a few packs are read side by side.
 */
class PackReads {
  private readonly open = new Map<
    number,
    { reader: Promise<RangeReader>; last: Promise<unknown>; left: number }
  >();
  private readonly runsLeft = new Map<number, number>();
  private closed = false;

  private readonly openRanges: (key: string, opts?: RunOptions) => Promise<RangeReader>;

  constructor(openRanges: (key: string, opts?: RunOptions) => Promise<RangeReader>, runs: LoadRun[]) {
    this.openRanges = openRanges;
    for (const r of runs) this.runsLeft.set(r.pack, (this.runsLeft.get(r.pack) ?? 0) + 1);
  }

  async read(run: LoadRun, what: string, buf: Buffer, opts: RunOptions): Promise<number> {
    if (this.closed) {
      // The call is unwinding (another run failed): a run still starting reads on its own.
      const reader = await this.openRanges(what, opts);
      try {
        return await reader.readInto(run.start, buf, opts);
      } finally {
        await reader.close();
      }
    }
    let p = this.open.get(run.pack);
    if (!p) {
      const reader = this.openRanges(what, opts);
      reader.catch(() => undefined); // awaited below; a failed open fails each of the pack's runs
      p = { reader, last: Promise.resolve(), left: this.runsLeft.get(run.pack) ?? 1 };
      this.open.set(run.pack, p);
    }
    const entry = p;
    const before = entry.last;
    const mine = (async () => {
      await before.catch(() => undefined);
      return (await entry.reader).readInto(run.start, buf, opts);
    })();
    entry.last = mine;
    try {
      return await mine;
    } finally {
      if (--entry.left === 0 && this.open.get(run.pack) === entry) {
        this.open.delete(run.pack);
        await (await entry.reader.catch(() => undefined))?.close();
      }
    }
  }

  /** Closes the readers still open (after a failure), once their reads have settled. */
  async close(): Promise<void> {
    this.closed = true;
    const open = [...this.open.values()];
    this.open.clear();
    await Promise.all(
      open.map(async (e) => {
        await e.last.catch(() => undefined);
        await (await e.reader.catch(() => undefined))?.close();
      }),
    );
  }
}

export class Repository implements BlobReader {
  readonly store: ObjectStore;
  readonly config: RepoConfig;
  readonly keyId: string;
  readonly clock: Clock;
  index = new BlobIndex();
  /** index object keys loaded (index/<id>) */
  indexFiles: string[] = [];
  private readonly key: MasterKey;
  /** Keys for blobs opened on this thread (openBlob of small blobs). */
  private inlineKeys: { enc: crypto.KeyObject; id: IdHasher } | undefined;
  private poolInstance: CryptoPool | undefined;
  private readonly workers: number | undefined;
  /** loadMany's recycled RUN_BUF read buffers (at most as many as runs in flight kept). */
  private readonly freeRunRead: ArrayBuffer[] = [];
  /** loadMany's plaintext slots: page-aligned shared memory the workers write into (made on first use). */
  private runArena: RunArena | undefined;
  /** Shared slots the runs of loadMany and writeFiles are read into (readRun). */
  private readArena: RunArena | undefined;
  /** Page-aligned pack buffers of backup sessions (packArena). */
  private packSlots: RunArena<ArrayBuffer> | undefined;

  private constructor(
    store: ObjectStore,
    key: MasterKey,
    keyId: string,
    config: RepoConfig,
    opts: OpenOptions,
    pool?: CryptoPool,
  ) {
    this.poolInstance = pool;
    this.store = store;
    this.key = key;
    this.keyId = keyId;
    this.config = config;
    this.clock = opts.clock ?? systemClock;
    this.workers = opts.workers;
  }

  get pool(): CryptoPool {
    this.poolInstance ??= new CryptoPool(this.key, this.workers);
    return this.poolInstance;
  }

  static async init(store: ObjectStore, passphrase: string, opts: InitOptions = {}): Promise<Repository> {
    if (!passphrase) throw new InputError('an empty passphrase is not allowed');
    if (await store.head('config'))
      throw new ConflictError(`a repository already exists at ${store.location}`);
    const key: MasterKey = { encKey: crypto.randomBytes(32), idKey: crypto.randomBytes(32) };
    const keyFile = await makeKeyFile(key, passphrase, opts.kdf ?? DEFAULT_KDF);
    const keyId = newId();
    await store.put(`keys/${keyId}`, Buffer.from(JSON.stringify(keyFile, null, 2)), { ifNoneMatch: true });
    const config: RepoConfig = { version: 1, id: newId(), created: new Date().toISOString() };
    await store.put('config', sealObject(key.encKey, 'config', Buffer.from(JSON.stringify(config))), {
      ifNoneMatch: true,
    });
    return new Repository(store, key, keyId, config, opts);
  }

  static async open(store: ObjectStore, passphrase: string, opts: OpenOptions = {}): Promise<Repository> {
    const head = await store.head('config');
    if (!head) throw new NotFoundError(`no repository at ${store.location} (run "tern repo init")`);
    const keyKeys: string[] = [];
    for await (const o of store.list('keys/')) keyKeys.push(o.key);
    if (keyKeys.length === 0) throw new IntegrityError(`repository at ${store.location} has no key files`);
    let lastErr: unknown;
    let integrityErr: unknown;
    // While scrypt derives the key (~0.1 s), the crypto workers start and the index objects are read.
    const pool = opts.startWorkers === false ? undefined : new CryptoPool(undefined, opts.workers);
    const prefetched = Repository.fetchIndexObjects(store);
    prefetched.catch(() => undefined); // awaited (and its error reported) by loadIndex below
    for (const k of keyKeys.sort()) {
      try {
        const kf = parseKeyFile(await store.get(k), k);
        const key = await unwrapKey(kf, passphrase, k);
        const raw = await store.get('config');
        const config = JSON.parse(
          openObject(key.encKey, 'config', raw, 'config').toString('utf8'),
        ) as RepoConfig;
        pool?.setKey(key);
        const repo = new Repository(store, key, k.slice('keys/'.length), config, opts, pool);
        await repo.loadIndex({}, prefetched);
        return repo;
      } catch (err) {
        if (err instanceof IntegrityError && !integrityErr) integrityErr = err;
        lastErr = err;
        const fatal =
          (err instanceof TernError && err.code !== 'AUTH' && err.code !== 'INTEGRITY') ||
          (err instanceof IntegrityError && !/^keys\//.test(err.message));
        if (fatal) {
          await pool?.close();
          throw err;
        }
      }
    }
    await pool?.close();
    // A corrupted key file is reported as such when no other key opens, so it is not mistaken for a typo.
    throw integrityErr ?? lastErr;
  }

  async close(): Promise<void> {
    await this.poolInstance?.close();
    this.poolInstance = undefined;
  }

  // ---- index ----

  /** The raw (sealed) index objects, by key, in key order. */
  private static async fetchIndexObjects(
    store: ObjectStore,
    opts: RunOptions = {},
  ): Promise<[string, Buffer][]> {
    const files: string[] = [];
    for await (const o of store.list('index/', opts)) files.push(o.key);
    files.sort();
    const raw = new Map<string, Buffer>();
    await mapLimit(files, 8, async (f) => {
      throwIfAborted(opts.signal);
      raw.set(f, await store.get(f, opts));
    });
    return files.map((f) => [f, raw.get(f)!]);
  }

  /** (Re)load the whole index; `prefetched` = the objects already being read (Repository.open). */
  async loadIndex(opts: RunOptions = {}, prefetched?: Promise<[string, Buffer][]>): Promise<void> {
    const index = new BlobIndex();
    const objects = await (prefetched ?? Repository.fetchIndexObjects(this.store, opts));
    const files = objects.map(([f]) => f);
    // Each entry takes INDEX_ENTRY bytes of an index object: the objects' sizes bound the number of blobs, so
    // the index is allocated once, at about its size (grown as it filled, it ended up to twice as large).
    index.reserve(this.indexEntriesBound(objects.map(([, raw]) => raw.length)));
    for (const [f, raw] of objects) this.addIndexObject(index, raw, f);
    this.index = index;
    this.indexFiles = files;
  }

  /** Adds the entries of the sealed index object `raw` (named `what` in errors) to `index`. */
  addIndexObject(index: BlobIndex, raw: Buffer, what: string): void {
    const plain = openObject(this.key.encKey, 'index', raw, what);
    scanIndex(plain, what, (packId, at, n) => {
      const pn = index.packNumber(packId);
      for (let i = 0; i < n; i++) index.addEncoded(plain, at + i * INDEX_ENTRY, pn);
    });
  }

  /** Upper bound of the entries in sealed index objects of these sizes (for BlobIndex.reserve). */
  indexEntriesBound(sizes: Iterable<number>): number {
    const overhead = NONCE_LEN + TAG_LEN + INDEX_MAGIC.length;
    let bound = 0;
    for (const size of sizes) bound += Math.max(0, Math.floor((size - overhead) / INDEX_ENTRY));
    return bound;
  }

  addPackToIndex(index: BlobIndex, p: IndexPack): void {
    const pn = index.packNumber(p.packId);
    for (const b of p.blobs)
      index.add(b.id, {
        pack: pn,
        offset: b.offset,
        length: b.length,
        rawLength: b.rawLength,
        type: b.type,
        comp: b.comp,
      });
  }

  async writeIndex(packs: IndexPack[], opts: RunOptions = {}): Promise<string> {
    return this.writeIndexPlain(encodeIndex(packs), opts);
  }

  /** Seals and stores an index object already encoded (format.ts `encodeIndex`). */
  async writeIndexPlain(plain: Buffer, opts: RunOptions = {}): Promise<string> {
    const key = `index/${newId()}`;
    await this.store.put(key, sealObject(this.key.encKey, 'index', plain), opts);
    this.indexFiles.push(key);
    return key;
  }

  // ---- blobs ----

  blobSize(id: BlobId): number | undefined {
    return this.index.get(Buffer.from(id, 'hex'))?.rawLength;
  }

  hasBlob(id: BlobId): boolean {
    return this.index.has(Buffer.from(id, 'hex'));
  }

  async loadBlob(id: BlobId, opts: LoadOptions = {}): Promise<Buffer> {
    throwIfAborted(opts.signal);
    const e = this.index.get(Buffer.from(id, 'hex'));
    if (!e)
      throw new IntegrityError(`blob ${id} is not in any index (missing data)`, { details: { blob: id } });
    const packId = this.index.packIds[e.pack]!;
    const what = packKey(packId);
    const sealed = await this.readPackRange(what, e.offset, e.length, opts);
    return this.openBlob(id, e.type, e.comp, e.rawLength, sealed, what, opts.verify ?? true);
  }

  private async readPackRange(
    what: string,
    offset: number,
    length: number,
    opts: RunOptions,
  ): Promise<Buffer> {
    let sealed: Buffer = Buffer.alloc(0);
    await Repository.readChecked(what, offset, length, async () => {
      sealed = await this.store.getRange(what, offset, length, opts);
      return sealed.length;
    });
    return sealed;
  }

  /** Blobs to read in storage order: sorted by pack and offset, neighbours merged into runs (ranged reads). */
  private planRuns(ids: Iterable<BlobId>): LoadRun[] {
    const items: { id: BlobId; e: BlobEntry }[] = [];
    const seen = new Set<string>();
    for (const id of ids) {
      if (seen.has(id)) continue;
      seen.add(id);
      const e = this.index.get(Buffer.from(id, 'hex'));
      if (!e)
        throw new IntegrityError(`blob ${id} is not in any index (missing data)`, { details: { blob: id } });
      items.push({ id, e });
    }
    items.sort((a, b) => a.e.pack - b.e.pack || a.e.offset - b.e.offset);
    return Repository.groupRuns(items);
  }

  /**
   * Blobs sorted by pack and offset, neighbours (gaps up to RUN_GAP) merged into runs. A run is capped in
   * sealed and in plaintext bytes (compressed blobs expand), so both fit RUN_BUF buffers.
   */
  private static groupRuns(items: { id: BlobId; e: BlobEntry }[]): LoadRun[] {
    const runs: LoadRun[] = [];
    for (const it of items) {
      const last = runs[runs.length - 1];
      if (
        last &&
        last.pack === it.e.pack &&
        it.e.offset >= last.end &&
        it.e.offset - last.end <= RUN_GAP &&
        it.e.offset + it.e.length - last.start <= RUN_BYTES &&
        last.raw + it.e.rawLength <= RUN_BYTES
      ) {
        last.blobs.push(it);
        last.end = it.e.offset + it.e.length;
        last.raw += it.e.rawLength;
      } else
        runs.push({
          pack: it.e.pack,
          start: it.e.offset,
          end: it.e.offset + it.e.length,
          raw: it.e.rawLength,
          blobs: [it],
        });
    }
    return runs;
  }

  /**
   * Reads a run's sealed bytes for a worker: into a slot of a shared arena, which the worker reads in place,
   * when the store reads into caller memory (`reads`, ObjectStore.openRanges). Transferring a 6 MiB buffer to
   * the worker and back per run made V8 count it as new external memory each time and run a major GC every
   * few runs (24 in a 2 GiB restore); when every slot is taken, a recycled buffer is transferred as before.
   * `release` frees the slot once the worker has replied.
   */
  private async readRun(run: LoadRun, what: string, opts: LoadOptions, reads?: PackReads): Promise<RunRead> {
    const len = run.end - run.start;
    if (!reads || len > RUN_BUF)
      return {
        buf: ownArrayBuffer(
          reads
            ? await this.readFresh(run, what, len, reads, opts)
            : await this.readPackRange(what, run.start, len, opts),
        ),
        offset: 0,
        release: () => undefined,
      };
    const arena = (this.readArena ??= new RunArena(MAX_RUNS_IN_FLIGHT, RUN_BUF));
    const slot = arena.take();
    const buf = slot === undefined ? (this.freeRunRead.pop() ?? new ArrayBuffer(RUN_BUF)) : arena.buffer;
    const offset = slot ?? 0;
    let held = slot !== undefined;
    const release = (): void => {
      if (held) arena.give(offset);
      held = false;
    };
    try {
      await Repository.readChecked(what, run.start, len, () =>
        reads.read(run, what, Buffer.from(buf, offset, len), opts),
      );
    } catch (err) {
      release();
      throw err;
    }
    return { buf, offset, release };
  }

  /** A run too large for the recycled buffers, read through `reads` into a buffer of its own. */
  private async readFresh(
    run: LoadRun,
    what: string,
    len: number,
    reads: PackReads,
    opts: RunOptions,
  ): Promise<Buffer> {
    const buf = Buffer.allocUnsafe(len);
    await Repository.readChecked(what, run.start, len, () => reads.read(run, what, buf, opts));
    return buf;
  }

  /** `len` bytes at `start` of pack `what` read by `read`: a missing pack or a short read is an IntegrityError. */
  private static async readChecked(
    what: string,
    start: number,
    len: number,
    read: () => Promise<number>,
  ): Promise<void> {
    let got: number;
    try {
      got = await read();
    } catch (err) {
      if (err instanceof NotFoundError)
        throw new IntegrityError(`${what}: pack is missing`, { cause: err, details: { object: what } });
      throw err;
    }
    if (got !== len)
      throw new IntegrityError(`${what}: truncated (${len} bytes needed at ${start}, got ${got})`, {
        details: { object: what },
      });
  }

  /** PackReads for one bulk read, where the store holds objects open for ranged reads. */
  private packReads(runs: LoadRun[]): PackReads | undefined {
    const open = this.store.openRanges?.bind(this.store);
    return open ? new PackReads(open, runs) : undefined;
  }

  /**
   * The worker message for a run read into `read`: its blobs as ids (32 bytes each) and RUN_META numbers
   * each, the plaintexts to go at `at`.
   */
  private static runRequest(
    run: LoadRun,
    at: number[],
    read: RunRead,
    what: string,
    verify: boolean,
  ): Extract<WorkerRequest, { op: 'loadRun' }> {
    const n = run.blobs.length;
    const ids = Buffer.allocUnsafeSlow(32 * n);
    const meta = new Uint32Array(RUN_META * n);
    // Written in place: no buffer or array per blob (a restore of small chunks plans ~100k blobs a second).
    for (let i = 0; i < n; i++) {
      const { id, e } = run.blobs[i]!;
      ids.write(id, 32 * i, 32, 'hex');
      const m = RUN_META * i;
      meta[m] = e.type;
      meta[m + 1] = e.comp;
      meta[m + 2] = e.rawLength;
      meta[m + 3] = e.offset - run.start;
      meta[m + 4] = e.length;
      meta[m + 5] = at[i]!;
    }
    return { op: 'loadRun', seq: 0, buf: read.buf, bufOffset: read.offset, ids, meta, what, verify };
  }

  /** Runs a run's message in the pool, then frees its read; an IntegrityError from the worker names the pack. */
  private async runInPool(req: WorkerRequest, read: RunRead, what: string): Promise<Ok> {
    let r;
    try {
      r = await this.pool.run(req, read.buf instanceof ArrayBuffer ? [read.buf] : []);
    } catch (err) {
      if (err instanceof IntegrityError) throw new IntegrityError(err.message, { details: { object: what } });
      throw err;
    } finally {
      read.release();
    }
    if (r.buf?.byteLength === RUN_BUF && this.freeRunRead.length < MAX_RUNS_IN_FLIGHT)
      this.freeRunRead.push(r.buf);
    return r;
  }

  /**
   * Bulk load (BlobReader.loadMany): blobs sorted by pack and offset, neighbours merged into ranged reads of
   * up to RUN_BYTES (gaps up to RUN_GAP are read through), RUNS_IN_FLIGHT reads at once, each run decrypted
   * by one worker in one message.
   */
  async loadMany(
    ids: BlobId[],
    onBlob: (id: BlobId, plain: Buffer) => Promise<void>,
    opts: LoadOptions = {},
  ): Promise<void> {
    const verify = opts.verify ?? false;
    // Slots are committed memory only once used; the most recently returned slot is taken first.
    const arena = (this.runArena ??= new RunArena(MAX_RUNS_IN_FLIGHT, RUN_BUF));
    await this.eachRun(this.planRuns(ids), opts, async (run, what, read) => {
      // Where each plaintext goes: back to back, or, in an arena slot, blobs of 4 KiB or more each on a 4 KiB
      // boundary (or where opts.placeAt puts them), so a restore can write their pages with O_DIRECT whatever
      // came before them in the pack (a short tail chunk, say); back to back when that padding would not fit
      // the slot.
      const outAt = (aligned: boolean): { at: number[]; total: number } => {
        const at: number[] = new Array<number>(run.blobs.length);
        const place = aligned ? opts.placeAt : undefined;
        // With placeAt, in file order: blobs that follow each other in the file then follow each other here.
        const order = run.blobs.map((b, i) => ({ i, e: b.e, pos: place?.(b.id) }));
        if (place) order.sort((x, y) => (x.pos ?? Infinity) - (y.pos ?? Infinity) || x.i - y.i);
        let end = 0;
        for (const { i, e, pos } of order) {
          if (aligned) {
            const r = pos !== undefined ? pos % DIRECT_ALIGN : e.rawLength >= DIRECT_ALIGN ? 0 : undefined;
            if (r !== undefined) end += (((r - end) % DIRECT_ALIGN) + DIRECT_ALIGN) % DIRECT_ALIGN;
          }
          at[i] = end;
          end += e.rawLength;
        }
        return { at, total: end };
      };
      let layout = outAt(false);
      // A free arena slot when the run fits one (concurrent loadMany calls may have taken them all).
      const slot = layout.total <= RUN_BUF ? arena.take() : undefined;
      if (slot !== undefined) {
        const aligned = outAt(true);
        if (aligned.total <= RUN_BUF) layout = aligned;
      }
      const { at, total } = layout;
      const base = Repository.runRequest(run, at, read, what, verify);
      try {
        const r = await this.runInPool(
          slot === undefined ? base : { ...base, shared: arena.buffer, sharedOffset: slot },
          read,
          what,
        );
        const plain = slot === undefined ? Buffer.from(r.plain!) : Buffer.from(arena.buffer, slot, total);
        throwIfAborted(opts.signal);
        await Promise.all(
          run.blobs.map(({ id, e }, i) => onBlob(id, plain.subarray(at[i]!, at[i]! + e.rawLength))),
        );
      } finally {
        // A slot goes back only when no worker can still be writing into it: after its reply (or its failure).
        if (slot !== undefined) arena.give(slot);
      }
    });
  }

  /**
   * The runs of a bulk read, `opts.runsInFlight` at a time (default RUNS_IN_FLIGHT), each read (`readRun`,
   * a pack's runs through one reader where the store allows) and then handed to `fn` with its sealed bytes.
   */
  private async eachRun(
    runs: LoadRun[],
    opts: LoadOptions,
    fn: (run: LoadRun, what: string, read: RunRead) => Promise<void>,
  ): Promise<void> {
    const inFlight = Math.max(1, Math.min(MAX_RUNS_IN_FLIGHT, opts.runsInFlight ?? RUNS_IN_FLIGHT));
    const reads = this.packReads(runs);
    try {
      await mapLimit(runs, inFlight, async (run) => {
        throwIfAborted(opts.signal);
        const what = packKey(this.index.packIds[run.pack]!);
        await fn(run, what, await this.readRun(run, what, opts, reads));
      });
    } finally {
      await reads?.close();
    }
  }

  /**
   * verify --read-data: every blob of a pack already read whole (`data`, its header's `blobs`) authenticated,
   * decompressed and checked against its id, neighbours in one worker message per run of up to RUN_BYTES (as
   * loadMany reads them) rather than one message and one copy per blob. Resolves with the number of blobs
   * checked; the first bad blob rejects with an IntegrityError naming `what`.
   */
  async verifyPack(data: Buffer, blobs: PackBlob[], what: string, opts: RunOptions = {}): Promise<number> {
    const items = [...blobs]
      .sort((x, y) => x.offset - y.offset)
      .map((b) => {
        if (b.offset + b.length > data.length)
          throw new IntegrityError(`${what}: blob beyond the pack's end`);
        const e: BlobEntry = {
          pack: 0,
          offset: b.offset,
          length: b.length,
          rawLength: b.rawLength,
          type: b.type,
          comp: b.comp,
        };
        return { id: Buffer.from(b.id).toString('hex'), e };
      });
    const runs = Repository.groupRuns(items);
    let checked = 0;
    await mapLimit(runs, RUNS_IN_FLIGHT, async (run) => {
      throwIfAborted(opts.signal);
      const len = run.end - run.start;
      // A recycled read buffer when the run fits one (runInPool gives it back).
      const buf =
        len <= RUN_BUF ? (this.freeRunRead.pop() ?? new ArrayBuffer(RUN_BUF)) : new ArrayBuffer(len);
      data.copy(Buffer.from(buf), 0, run.start, run.end);
      const at: number[] = [];
      let end = 0;
      for (const { e } of run.blobs) {
        at.push(end);
        end += e.rawLength;
      }
      const read: RunRead = { buf, offset: 0, release: () => undefined };
      await this.runInPool(Repository.runRequest(run, at, read, what, true), read, what);
      checked += run.blobs.length;
    });
    return checked;
  }

  /**
   * BlobReader.writeFiles: like `loadMany`, but each run's worker writes the files of its blobs right after
   * decrypting them (files.ts), so the plaintext stays in the worker and the main thread only plans.
   */
  async writeFiles(files: BlobFile[], opts: LoadOptions = {}): Promise<(FileFailure | null)[]> {
    const failures: (FileFailure | null)[] = new Array<FileFailure | null>(files.length).fill(null);
    const byId = new Map<BlobId, number[]>();
    files.forEach((f, k) => {
      const list = byId.get(f.id);
      if (list) list.push(k);
      else byId.set(f.id, [k]);
    });
    await this.eachRun(this.planRuns(byId.keys()), opts, async (run, what, read) => {
      const at: number[] = [];
      let end = 0;
      const jobs: { blob: number; job: FileJob }[] = [];
      const order: number[] = [];
      run.blobs.forEach(({ id, e }, i) => {
        at.push(end);
        end += e.rawLength;
        for (const k of byId.get(id)!) {
          jobs.push({ blob: i, job: files[k]!.job });
          order.push(k);
        }
      });
      const r = await this.runInPool(
        { ...Repository.runRequest(run, at, read, what, opts.verify ?? false), files: packJobs(jobs) },
        read,
        what,
      );
      r.failures?.forEach((f, j) => {
        if (f) failures[order[j]!] = f;
      });
    });
    return failures;
  }

  /** Decrypt + verify a sealed blob in the pool. */
  private async openBlob(
    id: string,
    type: number,
    comp: number,
    rawLength: number,
    sealed: Buffer,
    what: string,
    verify = true,
  ): Promise<Buffer> {
    if (sealed.length <= INLINE_OPEN) {
      // A small blob (a directory listing, say) is opened right here: in the pool it would wait behind
      // whole runs of file data, and a tree restore's walk waits for its listings.
      const keys = (this.inlineKeys ??= {
        enc: crypto.createSecretKey(this.key.encKey),
        id: new IdHasher(this.key.idKey),
      });
      try {
        return openBlob(
          keys.enc,
          keys.id,
          { id: Buffer.from(id, 'hex'), type, comp, rawLength, what, verify },
          sealed,
        );
      } catch (err) {
        if (err instanceof IntegrityError)
          throw new IntegrityError(err.message, { details: { object: what, blob: id } });
        throw err;
      }
    }
    const ab = ownArrayBuffer(sealed);
    try {
      const r = await this.pool.run(
        { op: 'load', seq: 0, id, type, comp, rawLength, buf: ab, length: sealed.length, what, verify },
        [ab],
      );
      return Buffer.from(r.plain!);
    } catch (err) {
      if (err instanceof IntegrityError)
        throw new IntegrityError(err.message, { details: { object: what, blob: id } });
      throw err;
    }
  }

  /**
   * Aligned memory for the packs a backup assembles: the local store writes a pack from there with O_DIRECT.
   * Slots for the pack being filled and those being uploaded (made on first use).
   */
  packArena(): RunArena<ArrayBuffer> {
    return (this.packSlots ??= new RunArena<ArrayBuffer>(PACKS_UPLOADING + 2, PACK_BUF, false));
  }

  sealSmall(label: string, plain: Buffer): Buffer {
    return sealObject(this.key.encKey, label, plain);
  }

  openSmall(label: string, raw: Buffer, what: string): Buffer {
    return openObject(this.key.encKey, label, raw, what);
  }

  // ---- snapshots ----

  async listSnapshotIds(opts: RunOptions = {}): Promise<string[]> {
    const ids: string[] = [];
    for await (const o of this.store.list('snapshots/', opts)) ids.push(o.key.slice('snapshots/'.length));
    return ids;
  }

  async loadSnapshotById(id: string, opts: RunOptions = {}): Promise<SnapshotManifest> {
    const what = `snapshots/${id}`;
    const raw = await this.store.get(what, opts);
    const m = JSON.parse(this.openSmall('snapshot', raw, what).toString('utf8')) as SnapshotManifest;
    if (m.id !== id) throw new IntegrityError(`${what}: manifest names another id (${m.id})`);
    return m;
  }

  /** All snapshots, oldest first. Unreadable manifests are thrown unless `errors` collects them. */
  async listSnapshots(opts: RunOptions & { errors?: TernError[] } = {}): Promise<SnapshotManifest[]> {
    const ids = await this.listSnapshotIds(opts);
    const out: SnapshotManifest[] = [];
    await mapLimit(ids, 8, async (id) => {
      try {
        out.push(await this.loadSnapshotById(id, opts));
      } catch (err) {
        if (opts.errors && err instanceof TernError) opts.errors.push(err);
        else throw err;
      }
    });
    return out.sort((a, b) => a.time.localeCompare(b.time) || a.id.localeCompare(b.id));
  }

  /** 'latest', a full id or a unique prefix. */
  async resolveSnapshot(ref: string, opts: RunOptions = {}): Promise<SnapshotManifest> {
    if (ref === 'latest') {
      const all = await this.listSnapshots(opts);
      const last = all[all.length - 1];
      if (!last) throw new NotFoundError('the repository has no snapshots');
      return last;
    }
    if (!/^[0-9a-f]+$/i.test(ref)) throw new InputError(`"${ref}" is not a snapshot id`);
    const ids = (await this.listSnapshotIds(opts)).filter((i) => i.startsWith(ref.toLowerCase()));
    if (ids.length === 0) throw new NotFoundError(`no snapshot ${ref}`);
    if (ids.length > 1) throw new InputError(`snapshot prefix ${ref} is ambiguous (${ids.length} matches)`);
    return this.loadSnapshotById(ids[0]!, opts);
  }

  async writeSnapshot(m: SnapshotManifest, opts: RunOptions = {}): Promise<void> {
    await this.store.put(
      `snapshots/${m.id}`,
      this.sealSmall('snapshot', Buffer.from(JSON.stringify(m))),
      opts,
    );
  }

  // ---- keys ----

  async listKeys(): Promise<{ id: string; created: string; hostname: string; current: boolean }[]> {
    const out: { id: string; created: string; hostname: string; current: boolean }[] = [];
    for await (const o of this.store.list('keys/')) {
      const id = o.key.slice('keys/'.length);
      try {
        const k = parseKeyFile(await this.store.get(o.key), o.key);
        out.push({ id, created: k.created, hostname: k.hostname, current: id === this.keyId });
      } catch {
        out.push({ id, created: '?', hostname: '?', current: id === this.keyId });
      }
    }
    return out.sort((a, b) => a.created.localeCompare(b.created));
  }

  async addKey(passphrase: string, kdf = DEFAULT_KDF): Promise<string> {
    if (!passphrase) throw new InputError('an empty passphrase is not allowed');
    const id = newId();
    await this.store.put(
      `keys/${id}`,
      Buffer.from(JSON.stringify(await makeKeyFile(this.key, passphrase, kdf), null, 2)),
      {
        ifNoneMatch: true,
      },
    );
    return id;
  }

  async removeKey(ref: string): Promise<string> {
    const keys = await this.listKeys();
    const matches = keys.filter((k) => k.id.startsWith(ref));
    if (matches.length !== 1)
      throw new NotFoundError(matches.length ? `key prefix ${ref} is ambiguous` : `no key ${ref}`);
    const k = matches[0]!;
    if (k.current)
      throw new InputError('cannot remove the key in use (open the repository with another passphrase)');
    if (keys.length <= 1) throw new InputError('cannot remove the last key');
    await this.store.delete(`keys/${k.id}`);
    return k.id;
  }

  /** The master key, for callers that export it wrapped (export details). Never log it. */
  exportMasterKey(): MasterKey {
    return { encKey: Buffer.from(this.key.encKey), idKey: Buffer.from(this.key.idKey) };
  }

  // ---- backup ----

  /** `lock: false` when the caller holds a lock already; `ignoreIndex` stores blobs again (repacking). */
  async startBackup(opts: { lock?: boolean; ignoreIndex?: boolean } = {}): Promise<BackupSession> {
    const lock = opts.lock === false ? undefined : await RepoLock.acquire(this.store, false, this.clock);
    return new BackupSession(this, lock, opts.ignoreIndex ?? false);
  }
}

/** The pack being filled: sealed blobs are copied into `buf` (recycled between packs) as they arrive. */
interface OpenPack {
  buf: Buffer;
  /** The buffer's offset in the repository's pack arena, when it is a slot of it. */
  slot?: number;
  blobs: PackBlob[];
  size: number;
}

const NO_BUF = Buffer.alloc(0);

/** An item of a batch for the workers, with the promise waiting for its result. */
type Waiting<T, R> = T & { resolve: (r: R) => void; reject: (e: unknown) => void };

/**
 * Items gathered for one worker message: handed to `send` once there are BATCH_BLOBS of them or BATCH_BYTES,
 * else on the next turn of the event loop.
 */
class Batch<T, R> {
  private items: Waiting<T, R>[] = [];
  private bytes = 0;
  private timer: NodeJS.Immediate | undefined;
  private readonly send: (items: Waiting<T, R>[]) => void;

  constructor(send: (items: Waiting<T, R>[]) => void) {
    this.send = send;
  }

  add(item: T, bytes: number): Promise<R> {
    return new Promise<R>((resolve, reject) => {
      this.items.push({ ...item, resolve, reject });
      this.bytes += bytes;
      if (this.items.length >= BATCH_BLOBS || this.bytes >= BATCH_BYTES) this.flush();
      else this.timer ??= setImmediate(() => this.flush());
    });
  }

  private flush(): void {
    if (this.timer) clearImmediate(this.timer);
    this.timer = undefined;
    const items = this.items;
    if (items.length === 0) return;
    this.items = [];
    this.bytes = 0;
    this.send(items);
  }
}

/** A file of saveFile as the worker found it: sealed, or why not. */
type FileRead =
  | { kind: 'sealed'; id: string; comp: number; size: number; sealed: Buffer }
  | Exclude<FileSaved, { kind: 'blob' }>;

interface SmallSealed {
  id: string;
  comp: number;
  sealed: Buffer;
}

export interface SessionStats {
  blobsNew: number;
  blobsDuplicate: number;
  bytesAdded: number;
  packsWritten: number;
}

/** One writer's session: blobs go into packs, packs are uploaded, indexes written every few packs. */
export class BackupSession implements BlobWriter {
  readonly repo: Repository;
  private readonly lock: RepoLock | undefined;
  private readonly pendingIds = new Set<string>();
  private pack: OpenPack = { buf: NO_BUF, blobs: [], size: 0 };
  /**
   * Recycled pack buffers (PACK_BUF bytes, used when the pack arena has no free slot) and blob read buffers
   * (by exact length).
   */
  private readonly packBufs: Buffer[] = [];
  private readonly freeBlobBufs = new BufferPool(FREE_BLOB_BYTES);
  /** Sealed-blob buffers by the class of the blob's length (capacity: that class + 28). */
  private readonly freeSealed = new BufferPool(FREE_SEALED_BYTES, 16);
  /** Buffers allocBlobBuffer handed out: saveBlob takes them over whole (no copy), whatever their capacity. */
  private readonly lent = new WeakSet<ArrayBufferLike>();
  private readonly batchBufs: ArrayBuffer[] = [];
  /** Small blobs (saveBlob) and small files (saveFile) waiting to go to a worker. */
  private readonly batch = new Batch<{ type: number; plain: Buffer }, SmallSealed>((items) =>
    this.sendBatch(items),
  );
  private readonly fileBatch = new Batch<{ path: string; size: number; flags: number }, FileRead>((items) =>
    this.sendFileBatch(items),
  );
  private readonly uploads = new Set<Promise<void>>();
  /** Uploads whose pack buffer the store may still read. */
  private packsUploading = 0;
  private durable: IndexPack[] = [];
  private indexChain: Promise<void> = Promise.resolve();
  private indexesPending = 0;
  private failure: unknown;
  private workerBytes = 0;
  private waiters: (() => void)[] = [];
  /** Recent dedup ratio decides whether to hash first (skip encrypting duplicates) or do all in one trip. */
  private recentDup = 0;
  /**
   * Settles once every large blob saved so far is in the pack or known not to go there: a large blob goes
   * into the pack after those given to saveBlob before it, whichever worker finishes first. A file's chunks
   * then lie in its packs in file order, and a restore finds neighbours of the file side by side in a run
   * (written as one; with the workers' order, chunks 0, 1, 3, 5, 2, 4, ... came one by one).
   */
  private packOrder: Promise<void> = Promise.resolve();
  readonly stats: SessionStats = { blobsNew: 0, blobsDuplicate: 0, bytesAdded: 0, packsWritten: 0 };
  private closed = false;

  private readonly ignoreIndex: boolean;
  private readonly written = new Set<string>();

  constructor(repo: Repository, lock: RepoLock | undefined, ignoreIndex = false) {
    this.repo = repo;
    this.lock = lock;
    this.ignoreIndex = ignoreIndex;
  }

  hasBlob(id: BlobId): boolean {
    if (this.ignoreIndex) return this.pendingIds.has(id) || this.written.has(id);
    return this.pendingIds.has(id) || this.repo.hasBlob(id);
  }

  private check(): void {
    if (this.failure) throw this.failure;
    if (this.closed) throw new StorageError('backup session is closed');
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  private async waitFor(cond: () => boolean, signal?: AbortSignal): Promise<void> {
    while (!cond()) {
      throwIfAborted(signal);
      this.check();
      await new Promise<void>((r) => this.waiters.push(r));
    }
  }

  /** Waits until the session may take more work (back-pressure on workers, uploads and index writes). */
  private admit(signal: AbortSignal | undefined): Promise<void> {
    return this.waitFor(
      // Index writes must keep up too: packs without an index are lost if the process dies.
      () =>
        this.workerBytes < WORKER_BYTES_IN_FLIGHT &&
        this.uploads.size <= UPLOADS_IN_FLIGHT &&
        this.packsUploading <= PACKS_UPLOADING &&
        this.indexesPending <= 1,
      signal,
    );
  }

  /** A sealed blob the workers returned: a duplicate by now, or into the pack. */
  private accept(id: string, type: number, comp: number, rawLength: number, sealed: Buffer): SaveResult {
    if (this.hasBlob(id)) return this.dup(id);
    this.check();
    this.addToPack(id, type, comp, rawLength, sealed);
    this.stats.blobsNew++;
    this.stats.bytesAdded += sealed.length;
    if (this.pack.size >= TARGET_PACK) this.finishPack();
    return { id, stored: true, storedBytes: sealed.length };
  }

  async saveBlob(type: BlobType, plaintext: Buffer, opts: RunOptions = {}): Promise<SaveResult> {
    this.check();
    if (plaintext.length > MAX_BLOB)
      throw new InputError(`blob of ${plaintext.length} bytes is larger than ${MAX_BLOB}`);
    await this.admit(opts.signal);
    const len = plaintext.length;
    this.workerBytes += len;
    try {
      const t = typeCode(type);
      if (len <= SMALL_BLOB) {
        // Small blobs travel to the workers in batches: one message and one copy per batch.
        const r = await this.batch.add({ type: t, plain: plaintext }, len);
        return this.accept(r.id, t, r.comp, len, r.sealed);
      }
      const before = this.packOrder;
      let settle!: () => void;
      const mine = new Promise<void>((r) => (settle = r));
      this.packOrder = Promise.all([before, mine]).then(() => undefined);
      try {
        return await this.saveLarge(t, plaintext, before);
      } finally {
        settle();
      }
    } finally {
      this.workerBytes -= len;
      this.wake();
    }
  }

  /** saveBlob of a blob larger than SMALL_BLOB, into the pack once `before` settled. */
  private async saveLarge(t: number, plaintext: Buffer, before: Promise<void>): Promise<SaveResult> {
    const len = plaintext.length;
    let ab =
      plaintext.byteOffset === 0 && this.lent.has(plaintext.buffer)
        ? (plaintext.buffer as ArrayBuffer)
        : ownArrayBuffer(plaintext);
    const hashFirst = this.recentDup > 0.5;
    if (hashFirst) {
      const h = await this.repo.pool.run(
        { op: 'save', seq: 0, type: t, buf: ab, length: len, hashOnly: true },
        [ab],
      );
      const id = h.id!;
      ab = h.buf!;
      if (this.hasBlob(id)) {
        this.recycle(ab);
        return this.dup(id);
      }
    }
    const cls = blobClass(len);
    const out = this.freeSealed.take(cls);
    const r = await this.repo.pool.run(
      { op: 'save', seq: 0, type: t, buf: ab, length: len, hashOnly: false, out },
      out ? [ab, out] : [ab],
    );
    if (r.buf) this.recycle(r.buf);
    const id = r.id!;
    await before;
    if (this.hasBlob(id)) return this.dup(id);
    this.check();
    this.recentDup *= 0.95;
    const sealed = Buffer.from(r.sealed!, 0, r.sealedLength);
    this.addToPack(id, t, r.comp!, len, sealed);
    // The sealed buffer is copied into the pack: it can take the next blob of the same size.
    if (r.sealed!.byteLength === cls + 28) this.freeSealed.give(cls, r.sealed!);
    this.stats.blobsNew++;
    this.stats.bytesAdded += sealed.length;
    if (this.pack.size >= TARGET_PACK) this.finishPack();
    return { id, stored: true, storedBytes: sealed.length };
  }

  async saveFile(
    path: string,
    expectedSize: number,
    flags: number,
    opts: RunOptions = {},
  ): Promise<FileSaved> {
    this.check();
    if (!Number.isInteger(expectedSize) || expectedSize < 0 || expectedSize > FILE_BLOB_MAX)
      throw new InputError(`saveFile takes files of at most ${FILE_BLOB_MAX} bytes, not ${expectedSize}`);
    await this.admit(opts.signal);
    this.workerBytes += expectedSize;
    try {
      const r = await this.fileBatch.add({ path, size: expectedSize, flags }, expectedSize);
      if (r.kind !== 'sealed') return r;
      return { kind: 'blob', size: r.size, ...this.accept(r.id, TYPE_DATA, r.comp, r.size, r.sealed) };
    } finally {
      this.workerBytes -= expectedSize;
      this.wake();
    }
  }

  /** One message to a worker for a batch of small files (saveFile): they are read and sealed there. */
  private sendFileBatch(items: Waiting<{ path: string; size: number; flags: number }, FileRead>[]): void {
    const files = new Float64Array(items.flatMap((it) => [it.size, it.flags]));
    let need = 0;
    for (const it of items) need += it.size + 28;
    const out = need <= BATCH_BUF ? (this.batchBufs.pop() ?? new ArrayBuffer(BATCH_BUF)) : undefined;
    const req = {
      op: 'saveFiles' as const,
      seq: 0,
      type: TYPE_DATA,
      paths: items.map((it) => it.path).join('\0'),
      files,
      minZero: MIN_HOLE,
      ...(out ? { out } : {}),
    };
    this.repo.pool.run(req, out ? [out] : []).then(
      (r) => {
        const sealed = Buffer.from(r.sealed!);
        const meta = r.fileMeta!;
        let at = 0;
        items.forEach((it, i) => {
          const [status, size, comp, length] = meta.subarray(FILE_META * i, FILE_META * i + FILE_META);
          if (status === SAVED_BLOB) {
            it.resolve({
              kind: 'sealed',
              id: Buffer.from(r.ids!.buffer, r.ids!.byteOffset + 32 * i, 32).toString('hex'),
              comp: comp!,
              size: size!,
              sealed: sealed.subarray(at, at + length!),
            });
            at += length!;
          } else if (status === SAVED_ZERO) it.resolve({ kind: 'zero', size: size! });
          else if (status === SAVED_EMPTY) it.resolve({ kind: 'empty' });
          else if (status === SAVED_GREW) it.resolve({ kind: 'grew' });
          else it.resolve({ kind: 'error', code: r.codes?.[i] ?? 'EIO' });
        });
        // Resolutions run their continuations (copies into the pack) before the buffer is reused.
        queueMicrotask(() => {
          if (r.sealed!.byteLength === BATCH_BUF && this.batchBufs.length < 8) this.batchBufs.push(r.sealed!);
        });
      },
      (err: unknown) => {
        for (const it of items) it.reject(err);
      },
    );
  }

  private sendBatch(items: Waiting<{ type: number; plain: Buffer }, SmallSealed>[]): void {
    let total = 0;
    for (const it of items) total += it.plain.length;
    // Batch buffers (plaintexts in, sealed blobs out) go round instead of being allocated per batch.
    const inAb =
      total <= BATCH_BUF ? (this.batchBufs.pop() ?? new ArrayBuffer(BATCH_BUF)) : new ArrayBuffer(total);
    const buf = Buffer.from(inAb);
    const meta = new Uint32Array(3 * items.length);
    let pos = 0;
    items.forEach((it, i) => {
      it.plain.copy(buf, pos);
      meta[3 * i] = it.type;
      meta[3 * i + 1] = pos;
      meta[3 * i + 2] = it.plain.length;
      pos += it.plain.length;
    });
    const out = this.batchBufs.pop() ?? new ArrayBuffer(BATCH_BUF);
    this.repo.pool.run({ op: 'saveMany', seq: 0, buf: inAb, meta, out }, [inAb, out]).then(
      (r) => {
        const sealed = Buffer.from(r.sealed!);
        const ids = Buffer.from(r.ids!.buffer, r.ids!.byteOffset, r.ids!.byteLength);
        let at = 0;
        items.forEach((it, i) => {
          const n = r.meta![2 * i + 1]!;
          it.resolve({
            id: ids.toString('hex', 32 * i, 32 * i + 32),
            comp: r.meta![2 * i]!,
            sealed: sealed.subarray(at, at + n),
          });
          at += n;
        });
        // Resolutions run their continuations (copies into the pack) before the buffers are reused.
        queueMicrotask(() => {
          for (const b of [r.sealed!, r.buf!])
            if (b.byteLength === BATCH_BUF && this.batchBufs.length < 8) this.batchBufs.push(b);
        });
      },
      (err: unknown) => {
        for (const it of items) it.reject(err);
      },
    );
  }

  allocBlobBuffer(length: number): Buffer {
    const cls = blobClass(length);
    const ab = this.freeBlobBufs.take(cls) ?? (Buffer.allocUnsafeSlow(cls).buffer as ArrayBuffer);
    this.lent.add(ab);
    return Buffer.from(ab, 0, length);
  }

  /** A plaintext buffer back from a worker: kept for allocBlobBuffer if it has a class's capacity. */
  private recycle(ab: ArrayBuffer): void {
    if (ab.byteLength >= 64 * 1024 && blobClass(ab.byteLength) === ab.byteLength)
      this.freeBlobBufs.give(ab.byteLength, ab);
  }

  private addToPack(id: string, type: number, comp: number, rawLength: number, sealed: Buffer): void {
    // Room for the blob plus the sealed header (42 bytes per blob + 28) and trailer.
    const room = (n: number): number => n + (this.pack.blobs.length + 1) * 42 + 64;
    if (this.pack.blobs.length > 0 && room(this.pack.size + sealed.length) > this.pack.buf.length)
      this.finishPack();
    if (this.pack.blobs.length === 0) {
      const need = room(sealed.length);
      if (need > PACK_BUF) this.pack.buf = Buffer.allocUnsafeSlow(need);
      else {
        const arena = this.repo.packArena();
        const slot = arena.take();
        if (slot !== undefined) {
          this.pack.buf = Buffer.from(arena.buffer, slot, PACK_BUF);
          this.pack.slot = slot;
        } else this.pack.buf = this.packBufs.pop() ?? Buffer.allocUnsafeSlow(PACK_BUF);
      }
    }
    this.pendingIds.add(id);
    this.pack.blobs.push({
      id: Buffer.from(id, 'hex'),
      type,
      comp,
      offset: this.pack.size,
      length: sealed.length,
      rawLength,
    });
    sealed.copy(this.pack.buf, this.pack.size);
    this.pack.size += sealed.length;
  }

  private dup(id: string): SaveResult {
    this.recentDup = this.recentDup * 0.95 + 0.05;
    this.stats.blobsDuplicate++;
    return { id, stored: false, storedBytes: 0 };
  }

  private finishPack(): void {
    const pack = this.pack;
    if (pack.blobs.length === 0) return;
    this.pack = { buf: NO_BUF, blobs: [], size: 0 };
    const header = this.repo.sealSmall('packheader', encodePackHeader(pack.blobs));
    const total = pack.size + header.length + 4;
    let data: Buffer;
    if (total <= pack.buf.length) {
      header.copy(pack.buf, pack.size);
      pack.buf.writeUInt32LE(header.length, pack.size + header.length);
      data = pack.buf.subarray(0, total);
    } else {
      const trailer = Buffer.alloc(4);
      trailer.writeUInt32LE(header.length);
      data = Buffer.concat([pack.buf.subarray(0, pack.size), header, trailer]);
    }
    const packId = newId();
    // The pack buffer goes back to the free list as soon as the store is done with it (or the put settles).
    let held = true;
    this.packsUploading++;
    const release = (): void => {
      if (!held) return;
      held = false;
      this.packsUploading--;
      if (pack.slot !== undefined) this.repo.packArena().give(pack.slot);
      else if (pack.buf.length === PACK_BUF && this.packBufs.length < 2) this.packBufs.push(pack.buf);
      this.wake();
    };
    const up = this.repo.store
      .put(packKey(packId), data, { onDataReleased: release })
      .then(() => {
        this.stats.packsWritten++;
        const ip: IndexPack = { packId, blobs: pack.blobs };
        this.repo.addPackToIndex(this.repo.index, ip);
        for (const b of pack.blobs) {
          const hex = Buffer.from(b.id).toString('hex');
          this.pendingIds.delete(hex);
          if (this.ignoreIndex) this.written.add(hex);
        }
        this.durable.push(ip);
        if (this.durable.length >= PACKS_PER_INDEX) this.queueIndex();
      })
      .catch((err: unknown) => {
        this.failure ??= err;
      })
      .finally(() => {
        release();
        this.uploads.delete(up);
        this.wake();
      });
    this.uploads.add(up);
  }

  private queueIndex(): void {
    const packs = this.durable;
    this.durable = [];
    if (packs.length === 0) return;
    this.indexesPending++;
    this.indexChain = this.indexChain
      .then(async () => {
        if (this.failure) return;
        await this.repo.writeIndex(packs);
      })
      .catch((err: unknown) => {
        this.failure ??= err;
      })
      .finally(() => {
        this.indexesPending--;
        this.wake();
      });
  }

  /** Everything saved so far becomes durable: packs uploaded and indexed. */
  async flush(): Promise<void> {
    this.check();
    this.finishPack();
    while (this.uploads.size > 0) await Promise.all([...this.uploads]);
    this.queueIndex();
    await this.indexChain;
    if (this.failure) throw this.failure;
  }

  /** Flush, then write the manifest (last). Returns the manifest with its new id. */
  async saveSnapshot(
    m: Omit<SnapshotManifest, 'id' | 'hostname' | 'time'> & Partial<SnapshotManifest>,
  ): Promise<SnapshotManifest> {
    await this.flush();
    const manifest: SnapshotManifest = {
      ...m,
      id: newId(16),
      time: m.time ?? this.repo.clock.now().toISOString(),
      hostname: m.hostname ?? os.hostname(),
    };
    await this.lock?.refresh();
    await this.repo.writeSnapshot(manifest);
    return manifest;
  }

  /** Release the lock. Unflushed blobs are dropped; uploaded packs stay (indexed ones are reused next time). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.wake();
    // An unfinished pack is dropped; its slot goes back to the arena.
    if (this.pack.slot !== undefined) this.repo.packArena().give(this.pack.slot);
    this.pack = { buf: NO_BUF, blobs: [], size: 0 };
    await Promise.allSettled([...this.uploads]);
    // Packs that did reach the store are indexed so the next backup reuses them.
    this.queueIndex();
    await this.indexChain;
    await this.lock?.release();
  }
}
