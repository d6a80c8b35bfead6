/** Retention (forget), garbage collection (prune), verification and statistics. */
import type { RunOptions, TernError } from '../core/base.ts';
import { IntegrityError, selectRetention, throwIfAborted } from '../core/base.ts';
import type { BlobId, SnapshotManifest } from './api.ts';
import { decodePackHeader, encodeIndexWith, packKey } from './format.ts';
import type { BlobIndex } from './blob-index.ts';
import { RepoLock } from './lock.ts';
import type { Repository } from './repository.ts';
import { imageMapBlobs } from './image/index.ts';
import { walkTree } from './tree/index.ts';

// ---------- forget ----------

export interface KeepPolicy {
  last?: number;
  hourly?: number;
  daily?: number;
  weekly?: number;
  monthly?: number;
  yearly?: number;
  tags?: string[];
}

/**
 * restic semantics (the GFS rules are `selectRetention` in core, shared with the engine): snapshots newest
 * first; keep-last keeps the n newest; each keep-<period> keeps the newest snapshot of each of the n most recent
 * periods that have one. Snapshots are grouped by host + paths. Snapshots without every tag in `tags` are neither
 * kept nor removed.
 */
export function applyRetention(
  snaps: SnapshotManifest[],
  p: KeepPolicy,
): { keep: SnapshotManifest[]; remove: SnapshotManifest[]; reasons: Map<string, string[]> } {
  const keep: SnapshotManifest[] = [];
  const remove: SnapshotManifest[] = [];
  const reasons = new Map<string, string[]>();
  const selected = snaps.filter((s) => !p.tags?.length || p.tags.every((t) => s.tags.includes(t)));
  const groups = new Map<string, SnapshotManifest[]>();
  for (const s of selected) {
    const g = `${s.hostname}\0${[...s.paths].sort().join('\0')}`;
    const arr = groups.get(g) ?? [];
    arr.push(s);
    groups.set(g, arr);
  }
  const rules = {
    latest: p.last ?? 0,
    hourly: p.hourly ?? 0,
    daily: p.daily ?? 0,
    weekly: p.weekly ?? 0,
    monthly: p.monthly ?? 0,
    yearly: p.yearly ?? 0,
  };
  for (const list of groups.values()) {
    const d = selectRetention(list, rules);
    keep.push(...d.keep);
    remove.push(...d.remove);
    // The CLI's flag is --keep-last: name the reason after it.
    for (const [id, why] of d.reasons)
      reasons.set(
        id,
        why.map((w) => (w === 'latest' ? 'last' : w)),
      );
  }
  return { keep, remove, reasons };
}

export async function forget(
  repo: Repository,
  policy: KeepPolicy,
  opts: RunOptions & { dryRun?: boolean } = {},
): Promise<{ keep: SnapshotManifest[]; remove: SnapshotManifest[] }> {
  const lock = opts.dryRun ? undefined : await RepoLock.acquire(repo.store, false, repo.clock);
  try {
    const r = applyRetention(await repo.listSnapshots(opts), policy);
    if (!opts.dryRun) for (const s of r.remove) await repo.store.delete(`snapshots/${s.id}`, opts);
    return r;
  } finally {
    await lock?.release();
  }
}

// ---------- reachability ----------

/** Every blob id a snapshot needs (its tree/map blobs and data chunks). */
export async function snapshotBlobs(
  repo: Repository,
  s: SnapshotManifest,
  visit: (id: BlobId) => void,
  opts: RunOptions = {},
): Promise<void> {
  if (s.root.kind === 'image') {
    await imageMapBlobs(repo, s.root.map, visit, opts);
  } else {
    await walkTree(repo, s.root.tree, (id) => visit(id), opts);
  }
}

// ---------- prune ----------

export interface PruneResult {
  snapshots: number;
  packsDeleted: number;
  packsRepacked: number;
  packsUnindexedDeleted: number;
  blobsRemoved: number;
  bytesFreed: number;
  dryRun: boolean;
}

/** Packs that no index references are left alone this long: a concurrent backup may still be writing them. */
export const UNINDEXED_SAFETY_MS = 2 * 60 * 60 * 1000;

export async function prune(
  repo: Repository,
  opts: RunOptions & { dryRun?: boolean; repackBelow?: number } = {},
): Promise<PruneResult> {
  const lock = await RepoLock.acquire(repo.store, true, repo.clock);
  try {
    await repo.loadIndex(opts);
    const snaps = await repo.listSnapshots(opts);
    // By entry number of the index, not by id string or object: a prune of 2^20 blobs that way peaked at
    // 1.1 GiB RSS. The index holds each blob's first location; copies elsewhere count as unused.
    const index = repo.index;
    const n = index.size;
    const used = new Uint8Array(n);
    for (const s of snaps) {
      throwIfAborted(opts.signal);
      await snapshotBlobs(
        repo,
        s,
        (id) => {
          const i = index.numberOf(id);
          if (i >= 0) used[i] = 1;
        },
        opts,
      );
    }
    const packCount = index.packIds.length;
    const blobsIn = new Uint32Array(packCount);
    const usedIn = new Uint32Array(packCount);
    const usedBytes = new Float64Array(packCount);
    const totalBytes = new Float64Array(packCount);
    let blobsRemoved = 0;
    for (let i = 0; i < n; i++) {
      const p = index.packAt(i);
      const len = index.lengthAt(i);
      blobsIn[p]!++;
      totalBytes[p]! += len;
      if (used[i]) {
        usedIn[p]!++;
        usedBytes[p]! += len;
      } else blobsRemoved++;
    }
    const sizes = new Map<string, { size: number; modified?: Date }>();
    for await (const o of repo.store.list('data/', opts))
      sizes.set(o.key.split('/').pop()!, { size: o.size, modified: o.modified });
    const res: PruneResult = {
      snapshots: snaps.length,
      packsDeleted: 0,
      packsRepacked: 0,
      packsUnindexedDeleted: 0,
      blobsRemoved,
      bytesFreed: 0,
      dryRun: opts.dryRun === true,
    };
    /** Pack number → 'keep' (listed whole in the new index), 'repack' or 'delete'; absent: no entry. */
    const fate = new Uint8Array(packCount);
    const KEEP = 1;
    const REPACK = 2;
    const DELETE = 3;
    const deletePacks: string[] = [];
    let repacks = 0;
    const repackBelow = opts.repackBelow ?? 0.5;
    for (let p = 0; p < packCount; p++) {
      if (blobsIn[p] === 0) continue;
      const packId = index.packIds[p]!;
      if (usedIn[p] === 0) {
        fate[p] = DELETE;
        deletePacks.push(packId);
        res.bytesFreed += sizes.get(packId)?.size ?? totalBytes[p]!;
      } else if (usedBytes[p]! < totalBytes[p]! * repackBelow) {
        fate[p] = REPACK;
        repacks++;
        deletePacks.push(packId);
        res.bytesFreed += totalBytes[p]! - usedBytes[p]!;
      } else fate[p] = KEEP;
    }
    const indexed = new Set(index.packIds);
    const now = repo.clock.now().getTime();
    const unindexed = [...sizes.entries()].filter(
      ([id, info]) =>
        !indexed.has(id) && (!info.modified || now - info.modified.getTime() > UNINDEXED_SAFETY_MS),
    );
    if (opts.dryRun) {
      res.packsDeleted = deletePacks.length - repacks;
      res.packsRepacked = repacks;
      res.packsUnindexedDeleted = unindexed.length;
      return res;
    }
    // 1. repack live blobs of sparse packs into new packs (sealed bytes are copied after verification)
    const oldIndexFiles = [...repo.indexFiles];
    if (repacks > 0) {
      // The session indexes its new packs itself; it ignores the old locations so the blobs are stored again.
      const session = await repo.startBackup({ lock: false, ignoreIndex: true });
      try {
        for (let i = 0; i < n; i++) {
          if (!used[i] || fate[index.packAt(i)] !== REPACK) continue;
          const b = index.blobAt(i);
          const plain = await repo.loadBlob(b.id, opts);
          await session.saveBlob(b.type === 1 ? 'tree' : 'data', plain, opts);
        }
        await session.flush();
      } finally {
        await session.close();
      }
    }
    // 2. one new index with the kept packs, each with all its blobs (unused ones stay until a later repack),
    // encoded straight from the index; then 3. the old indexes go, then 4. the packs.
    await repo.writeIndexPlain(
      encodeIndexOf(index, (p) => fate[p] === KEEP),
      opts,
    );
    for (const f of oldIndexFiles) await repo.store.delete(f, opts);
    for (const id of deletePacks) await repo.store.delete(packKey(id), opts);
    for (const [id] of unindexed) await repo.store.delete(packKey(id), opts);
    res.packsDeleted = deletePacks.length - repacks;
    res.packsRepacked = repacks;
    res.packsUnindexedDeleted = unindexed.length;
    await repo.loadIndex(opts);
    return res;
  } finally {
    await lock.release();
  }
}

/**
 * A plain index object (format.ts) listing every entry of the packs `keep` selects, grouped by pack, from the
 * index's arrays (the entries of a pack in the order they were added).
 */
function encodeIndexOf(index: BlobIndex, keep: (pack: number) => boolean): Buffer {
  const n = index.size;
  const packCount = index.packIds.length;
  const counts = new Uint32Array(packCount);
  for (let i = 0; i < n; i++) counts[index.packAt(i)]!++;
  // The kept packs' entry numbers, pack after pack (a counting sort).
  const kept: { packId: string; count: number; from: number }[] = [];
  const fill = new Uint32Array(packCount);
  let total = 0;
  for (let p = 0; p < packCount; p++) {
    if (!keep(p) || counts[p] === 0) continue;
    kept.push({ packId: index.packIds[p]!, count: counts[p]!, from: total });
    fill[p] = total;
    total += counts[p]!;
  }
  const order = new Uint32Array(total);
  for (let i = 0; i < n; i++) {
    const p = index.packAt(i);
    if (keep(p) && counts[p]! > 0) order[fill[p]!++] = i;
  }
  return encodeIndexWith(kept, (k, j, out, at) => index.encodeAt(order[kept[k]!.from + j]!, out, at));
}

// ---------- verify ----------

export interface VerifyResult {
  ok: boolean;
  errors: { object: string; message: string }[];
  snapshots: number;
  packs: number;
  blobsChecked: number;
  bytesChecked: number;
}

export async function verify(
  repo: Repository,
  opts: RunOptions & { readData?: boolean; subsetPercent?: number } = {},
): Promise<VerifyResult> {
  const res: VerifyResult = {
    ok: true,
    errors: [],
    snapshots: 0,
    packs: 0,
    blobsChecked: 0,
    bytesChecked: 0,
  };
  const fail = (object: string, err: unknown): void => {
    const message = err instanceof Error ? err.message : String(err);
    res.errors.push({ object, message });
  };
  // indexes one by one so a bad one is named and the rest still checked; the index loaded at open is
  // dropped first (two indexes of 2^20 blobs are ~120 MB)
  const files: { key: string; size: number }[] = [];
  for await (const o of repo.store.list('index/', opts)) files.push({ key: o.key, size: o.size });
  const { BlobIndex } = await import('./blob-index.ts');
  const index = new BlobIndex();
  repo.index = index;
  index.reserve(repo.indexEntriesBound(files.map((f) => f.size)));
  for (const { key: f } of files.sort((a, b) => (a.key < b.key ? -1 : 1))) {
    try {
      repo.addIndexObject(index, await repo.store.get(f, opts), f);
    } catch (err) {
      fail(f, err);
    }
  }
  const sizes = new Map<string, number>();
  for await (const o of repo.store.list('data/', opts)) sizes.set(o.key.split('/').pop()!, o.size);
  res.packs = sizes.size;
  const packEnd = new Map<number, number>();
  for (const [, e] of index.entries())
    packEnd.set(e.pack, Math.max(packEnd.get(e.pack) ?? 0, e.offset + e.length));
  for (const [pn, end] of packEnd) {
    const id = index.packIds[pn]!;
    const size = sizes.get(id);
    if (size === undefined) fail(packKey(id), new IntegrityError(`${packKey(id)}: indexed pack is missing`));
    else if (size < end + 4)
      fail(
        packKey(id),
        new IntegrityError(`${packKey(id)}: truncated (${size} bytes, index needs > ${end})`),
      );
  }
  const errors: TernError[] = [];
  const snaps = await repo.listSnapshots({ ...opts, errors });
  for (const e of errors)
    fail(String(e.details.object ?? /snapshots\/\w+/.exec(e.message)?.[0] ?? 'snapshot'), e);
  res.snapshots = snaps.length;
  for (const s of snaps) {
    try {
      await snapshotBlobs(
        repo,
        s,
        (id) => {
          if (!index.has(Buffer.from(id, 'hex')))
            fail(`snapshots/${s.id}`, new IntegrityError(`blob ${id} is not indexed`));
        },
        opts,
      );
    } catch (err) {
      fail(`snapshots/${s.id}`, err);
    }
  }
  if (opts.readData) {
    const pct = opts.subsetPercent ?? 100;
    const packIds = [...packEnd.keys()].map((pn) => index.packIds[pn]!).filter((id) => sizes.has(id));
    const chosen = pct >= 100 ? packIds : packIds.filter(() => Math.random() * 100 < pct);
    for (const id of chosen) {
      throwIfAborted(opts.signal);
      const key = packKey(id);
      try {
        const data = await repo.store.get(key, opts);
        res.bytesChecked += data.length;
        const hlen = data.readUInt32LE(data.length - 4);
        if (hlen + 4 > data.length) throw new IntegrityError(`${key}: bad header length`);
        const header = decodePackHeader(
          repo.openSmall('packheader', data.subarray(data.length - 4 - hlen, data.length - 4), key),
          key,
        );
        res.blobsChecked += await repo.verifyPack(data, header, key, opts);
      } catch (err) {
        fail(key, err);
      }
    }
  }
  res.ok = res.errors.length === 0;
  return res;
}

// ---------- stats ----------

export interface RepoStats {
  snapshots: number;
  packs: number;
  blobs: number;
  storedBytes: number;
  rawBytes: number;
  /** Bytes that all snapshots refer to (sum of image sizes / file sizes as chunks), over raw bytes stored. */
  logicalBytes: number;
  dedupRatio: number;
  compressionRatio: number;
}

export async function stats(repo: Repository, opts: RunOptions = {}): Promise<RepoStats> {
  const snaps = await repo.listSnapshots(opts);
  let storedBytes = 0;
  let rawBytes = 0;
  for (const [, e] of repo.index.entries()) {
    storedBytes += e.length;
    rawBytes += e.rawLength;
  }
  // Sizes from the index itself: a map of every id as a string took ~150 MB at 2^20 blobs.
  let logicalBytes = 0;
  for (const s of snaps) {
    await snapshotBlobs(repo, s, (id) => (logicalBytes += repo.blobSize(id) ?? 0), opts);
  }
  const packs = new Set<number>();
  for (const [, e] of repo.index.entries()) packs.add(e.pack);
  return {
    snapshots: snaps.length,
    packs: packs.size,
    blobs: repo.index.size,
    storedBytes,
    rawBytes,
    logicalBytes,
    dedupRatio: rawBytes > 0 ? logicalBytes / rawBytes : 1,
    compressionRatio: storedBytes > 0 ? rawBytes / storedBytes : 1,
  };
}
