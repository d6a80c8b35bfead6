/** Retention (forget), garbage collection (prune), verification and statistics. */
import type { RunOptions, TernError } from '../core/base.ts';
import { IntegrityError, selectRetention, throwIfAborted } from '../core/base.ts';
import type { BlobId, SnapshotManifest } from './api.ts';
import { decodePackHeader, packKey, type IndexPack, type PackBlob } from './format.ts';
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
    const used = new Set<string>();
    for (const s of snaps) {
      throwIfAborted(opts.signal);
      await snapshotBlobs(repo, s, (id) => used.add(id), opts);
    }
    // pack → its blobs (first location of each blob; duplicates elsewhere count as unused)
    const packs = new Map<number, { blobs: PackBlob[]; usedBytes: number; totalBytes: number }>();
    for (const [id, e] of repo.index.entries()) {
      const p = packs.get(e.pack) ?? { blobs: [], usedBytes: 0, totalBytes: 0 };
      const hex = Buffer.from(id).toString('hex');
      p.totalBytes += e.length;
      if (used.has(hex)) {
        p.usedBytes += e.length;
        p.blobs.push({
          id: Buffer.from(id),
          type: e.type,
          comp: e.comp,
          offset: e.offset,
          length: e.length,
          rawLength: e.rawLength,
        });
      }
      packs.set(e.pack, p);
    }
    const sizes = new Map<string, { size: number; modified?: Date }>();
    for await (const o of repo.store.list('data/', opts))
      sizes.set(o.key.split('/').pop()!, { size: o.size, modified: o.modified });
    const res: PruneResult = {
      snapshots: snaps.length,
      packsDeleted: 0,
      packsRepacked: 0,
      packsUnindexedDeleted: 0,
      blobsRemoved: 0,
      bytesFreed: 0,
      dryRun: opts.dryRun === true,
    };
    const keepPacks: IndexPack[] = [];
    const deletePacks: string[] = [];
    const repack: { packId: string; blobs: PackBlob[] }[] = [];
    const repackBelow = opts.repackBelow ?? 0.5;
    for (const [pn, p] of packs) {
      const packId = repo.index.packIds[pn]!;
      const blobsTotal = p.totalBytes;
      if (p.blobs.length === 0) {
        deletePacks.push(packId);
        res.bytesFreed += sizes.get(packId)?.size ?? blobsTotal;
      } else if (p.usedBytes < blobsTotal * repackBelow) {
        repack.push({ packId, blobs: p.blobs });
        deletePacks.push(packId);
        res.bytesFreed += blobsTotal - p.usedBytes;
      } else keepPacks.push({ packId, blobs: p.blobs.concat() });
    }
    // kept packs must list all their blobs (unused ones stay until a later repack)
    const full = new Map<string, PackBlob[]>();
    for (const [id, e] of repo.index.entries()) {
      const packId = repo.index.packIds[e.pack]!;
      const arr = full.get(packId) ?? [];
      arr.push({
        id: Buffer.from(id),
        type: e.type,
        comp: e.comp,
        offset: e.offset,
        length: e.length,
        rawLength: e.rawLength,
      });
      full.set(packId, arr);
    }
    for (const k of keepPacks) k.blobs = full.get(k.packId) ?? k.blobs;
    const indexed = new Set(repo.index.packIds);
    const now = repo.clock.now().getTime();
    const unindexed = [...sizes.entries()].filter(
      ([id, info]) =>
        !indexed.has(id) && (!info.modified || now - info.modified.getTime() > UNINDEXED_SAFETY_MS),
    );
    for (const [id] of repo.index.entries())
      if (!used.has(Buffer.from(id).toString('hex'))) res.blobsRemoved++;
    if (opts.dryRun) {
      res.packsDeleted = deletePacks.length - repack.length;
      res.packsRepacked = repack.length;
      res.packsUnindexedDeleted = unindexed.length;
      return res;
    }
    // 1. repack live blobs of sparse packs into new packs (sealed bytes are copied after verification)
    const oldIndexFiles = [...repo.indexFiles];
    if (repack.length > 0) {
      // The session indexes its new packs itself; it ignores the old locations so the blobs are stored again.
      const session = await repo.startBackup({ lock: false, ignoreIndex: true });
      try {
        for (const r of repack) {
          for (const b of r.blobs) {
            const plain = await repo.loadBlob(Buffer.from(b.id).toString('hex'), opts);
            await session.saveBlob(b.type === 1 ? 'tree' : 'data', plain, opts);
          }
        }
        await session.flush();
      } finally {
        await session.close();
      }
    }
    // 2. one new index with the kept packs, then 3. the old indexes go, then 4. the packs.
    await repo.writeIndex(keepPacks, opts);
    for (const f of oldIndexFiles) await repo.store.delete(f, opts);
    for (const id of deletePacks) await repo.store.delete(packKey(id), opts);
    for (const [id] of unindexed) await repo.store.delete(packKey(id), opts);
    res.packsDeleted = deletePacks.length - repack.length;
    res.packsRepacked = repack.length;
    res.packsUnindexedDeleted = unindexed.length;
    await repo.loadIndex(opts);
    return res;
  } finally {
    await lock.release();
  }
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
  // indexes one by one so a bad one is named and the rest still checked
  const files: string[] = [];
  for await (const o of repo.store.list('index/', opts)) files.push(o.key);
  const { BlobIndex } = await import('./blob-index.ts');
  const index = new BlobIndex();
  for (const f of files.sort()) {
    try {
      for (const p of repo.decodeIndexObject(await repo.store.get(f, opts), f)) repo.addPackToIndex(index, p);
    } catch (err) {
      fail(f, err);
    }
  }
  repo.index = index;
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
        const loads: Promise<unknown>[] = [];
        for (const b of header) {
          const hex = Buffer.from(b.id).toString('hex');
          loads.push(
            repo
              .openBlob(
                hex,
                b.type,
                b.comp,
                b.rawLength,
                Buffer.from(data.subarray(b.offset, b.offset + b.length)),
                key,
              )
              .then(() => res.blobsChecked++),
          );
        }
        const settled = await Promise.allSettled(loads);
        const bad = settled.find((s) => s.status === 'rejected');
        if (bad) throw (bad as PromiseRejectedResult).reason;
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
  const sizes = new Map<string, number>();
  for (const [id, e] of repo.index.entries()) {
    storedBytes += e.length;
    rawBytes += e.rawLength;
    sizes.set(Buffer.from(id).toString('hex'), e.rawLength);
  }
  let logicalBytes = 0;
  for (const s of snaps) {
    await snapshotBlobs(repo, s, (id) => (logicalBytes += sizes.get(id) ?? 0), opts);
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
