/** Block images: a regular file or block device as fixed aligned chunks; zero chunks recorded as null. */
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import crypto from 'node:crypto';
import type { RunOptions } from '../../core/base.ts';
import { InputError, IntegrityError, NoSpaceError, throwIfAborted, CancelledError } from '../../core/base.ts';
import type { BlobId, BlobReader, BlobWriter, ByteRange, ImageChunk, ImageExtent } from '../api.ts';
import { chunkExtents, ImageMapView, ImageMapWriter } from './map.ts';
import { openDirect, PositionalWriter } from '../file-writer.ts';

export { chunkExtents, imageMapBlobs, ImageMapView, loadImageMap, SEGMENT_CHUNKS } from './map.ts';

export const DEFAULT_CHUNK_SIZE = 1024 * 1024;
const READS_AHEAD = 6;
const LOADS_AHEAD = 8;
/**
 * A restore plans and loads this many chunks at a time (8 GiB at 1 MiB chunks): what it holds per chunk is
 * bounded by that, not by the image's size. A blob used in two windows is read twice. A restore of 4 GiB in
 * 4 KiB chunks (2^20 chunks, as many as 1 TiB has at 1 MiB) from a cold repository, alternating: windows of
 * 16384 chunks peaked at 458-510 MiB RSS in 7.6 s, of 8192 at 418-446 MiB in 7.1-8.0 s, of 4096 at
 * 381-387 MiB in 8.2 s (3, 5 and 2 runs).
 */
const WINDOW_CHUNKS = 8192;

export interface ImageBackupOptions extends RunOptions {
  chunkSize?: number;
  /** Map of the parent snapshot's image (needs `reader`). */
  parentMap?: BlobId;
  reader?: BlobReader;
  /** With a parent: only chunks overlapping these ranges are read; the rest keep the parent's ids. */
  changedRanges?: ByteRange[];
  /** Chunk entries per map segment (default SEGMENT_CHUNKS; tests use small ones). */
  segmentChunks?: number;
}

export interface ImageBackupResult {
  map: BlobId;
  size: number;
  chunks: number;
  chunksRead: number;
  zeroChunks: number;
  bytesRead: number;
  bytesAdded: number;
}

export async function deviceSize(
  fd: fs.promises.FileHandle,
  file: string,
): Promise<{ size: number; isDevice: boolean }> {
  const st = await fd.stat();
  if (st.isFile()) return { size: st.size, isDevice: false };
  if (st.isBlockDevice()) {
    const { stdout } = await promisify(execFile)('blockdev', ['--getsize64', file]);
    return { size: Number(stdout.trim()), isDevice: true };
  }
  throw new InputError(`${file} is neither a regular file nor a block device`);
}

function isZero(buf: Buffer, zero: Buffer): boolean {
  return buf.equals(zero.subarray(0, buf.length));
}

export function parseRanges(text: string): ByteRange[] {
  let j: unknown;
  try {
    j = JSON.parse(text);
  } catch (err) {
    throw new InputError('changed ranges must be JSON [{offset, length}]', { cause: err });
  }
  if (!Array.isArray(j)) throw new InputError('changed ranges must be a JSON array');
  return j.map((r: unknown, i) => {
    const o = r as { offset?: unknown; length?: unknown };
    if (typeof o.offset !== 'number' || typeof o.length !== 'number' || o.offset < 0 || o.length < 0)
      throw new InputError(`changed range ${i} needs non-negative numeric offset and length`);
    return { offset: o.offset, length: o.length };
  });
}

/** Changed parts of a chunk are stored as extents when they cover at most this share of it... */
const EXTENT_MAX_SHARE = 0.5;
/** ...and the chunk would have at most this many extents; else the whole chunk is read again. */
const MAX_EXTENTS = 16;
/** Changed ranges are widened to this alignment before reading. */
const EXTENT_ALIGN = 4096;

/** `base` with [start, start+len) replaced by each patch, adjacent pieces of one blob merged. */
function overlay(base: ImageExtent[], patches: { start: number; ext: ImageExtent }[]): ImageChunk {
  const out: ImageExtent[] = [];
  const push = (e: ImageExtent): void => {
    if (e[2] === 0) return;
    const last = out[out.length - 1];
    if (last && last[0] === e[0] && (e[0] === null || last[1] + last[2] === e[1])) last[2] += e[2];
    else out.push([e[0], e[1], e[2]]);
  };
  // Pieces of `base` covering [from, to) of the chunk.
  const cut = (from: number, to: number): void => {
    let pos = 0;
    for (const [b, f, l] of base) {
      const s = Math.max(from, pos);
      const e = Math.min(to, pos + l);
      if (s < e) push([b, b === null ? 0 : f + (s - pos), e - s]);
      pos += l;
    }
  };
  let pos = 0;
  for (const p of patches) {
    cut(pos, p.start);
    push(p.ext);
    pos = p.start + p.ext[2];
  }
  let total = 0;
  for (const [, , l] of base) total += l;
  cut(pos, total);
  if (out.length === 1 && out[0]![1] === 0) return out[0]![0];
  return out;
}

interface Piece {
  chunk: number;
  /** offset within the chunk; whole chunks have start 0 and the chunk's length */
  start: number;
  length: number;
  whole: boolean;
}

export async function backupImage(
  writer: BlobWriter,
  file: string,
  opts: ImageBackupOptions = {},
): Promise<ImageBackupResult> {
  const fh = await fsp.open(file, 'r');
  try {
    const { size } = await deviceSize(fh, file);
    let parent: ImageMapView | undefined;
    if (opts.parentMap) {
      if (!opts.reader) throw new InputError('a parent map needs a reader');
      parent = await ImageMapView.open(opts.reader, opts.parentMap, opts);
    }
    const chunkSize = opts.chunkSize ?? parent?.chunkSize ?? DEFAULT_CHUNK_SIZE;
    if (chunkSize < 4096 || chunkSize > 64 * 1024 * 1024 || chunkSize % 4096 !== 0)
      throw new InputError('chunk size must be a multiple of 4 KiB between 4 KiB and 64 MiB');
    const n = Math.ceil(size / chunkSize);
    const chunkLen = (i: number): number => Math.min(chunkSize, size - i * chunkSize);
    // With changed ranges, the chunks that keep their parent's entry unless a range touches them: those the
    // parent had at the same length (not the chunks of a grown image, nor a last chunk whose length changed).
    const keeps = (i: number): boolean =>
      parent !== undefined && i < parent.chunks && parent.chunkLength(i) === chunkLen(i);
    /** With changed ranges: the pieces to read of each kept chunk a range touches (others are read whole). */
    let touched: Map<number, Piece[]> | undefined;
    let bytesTotal = size;
    if (opts.changedRanges) {
      if (!parent) throw new InputError('--changed-ranges needs --parent');
      if (parent.chunkSize !== chunkSize)
        throw new InputError("--changed-ranges needs the parent's chunk size");
      // Per chunk: the changed ranges within it (chunk-relative, aligned, merged).
      const changed = new Map<number, [number, number][]>();
      const sorted = [...opts.changedRanges]
        .filter((r) => r.length > 0 && r.offset < size)
        .sort((a, b) => a.offset - b.offset);
      for (const r of sorted) {
        const end = Math.min(size, r.offset + r.length);
        for (let i = Math.floor(r.offset / chunkSize); i * chunkSize < end; i++) {
          const base = i * chunkSize;
          const s = Math.floor((Math.max(r.offset, base) - base) / EXTENT_ALIGN) * EXTENT_ALIGN;
          const e = Math.min(
            chunkLen(i),
            Math.ceil((Math.min(end, base + chunkSize) - base) / EXTENT_ALIGN) * EXTENT_ALIGN,
          );
          let list = changed.get(i);
          if (!list) changed.set(i, (list = []));
          const last = list[list.length - 1];
          if (last && s <= last[1]) last[1] = Math.max(last[1], e);
          else list.push([s, e]);
        }
      }
      touched = new Map();
      bytesTotal = 0;
      // In chunk order, so each segment of the parent's map is loaded once.
      for (const [i, list] of changed) {
        if (!keeps(i)) continue;
        const len = chunkLen(i);
        const bytes = list.reduce((a, [s, e]) => a + e - s, 0);
        const extents = chunkExtents(await parent.entry(i, opts), len).length + 2 * list.length;
        touched.set(
          i,
          bytes > len * EXTENT_MAX_SHARE || extents > MAX_EXTENTS
            ? [{ chunk: i, start: 0, length: len, whole: true }]
            : list.map(([s, e]) => ({ chunk: i, start: s, length: e - s, whole: false })),
        );
      }
      for (let i = 0; i < n; i++) {
        if (!keeps(i)) bytesTotal += chunkLen(i);
        else for (const p of touched.get(i) ?? []) bytesTotal += p.length;
      }
    }
    /** The pieces to read, in file order. */
    function* pieces(): Generator<Piece> {
      for (let i = 0; i < n; i++) {
        if (touched && keeps(i)) yield* touched.get(i) ?? [];
        else yield { chunk: i, start: 0, length: chunkLen(i), whole: true };
      }
    }
    const zero = Buffer.alloc(chunkSize);
    const res: ImageBackupResult = {
      map: '',
      size,
      chunks: n,
      chunksRead: 0,
      zeroChunks: 0,
      bytesRead: 0,
      bytesAdded: 0,
    };
    const out = new ImageMapWriter(writer, { size, chunkSize, segmentChunks: opts.segmentChunks }, opts);
    const S = out.segmentChunks;
    /** What was read of the chunks whose entries are not written yet: a whole chunk's id, or patches. */
    const read = new Map<
      number,
      { whole?: BlobId | null; patches?: { start: number; ext: ImageExtent }[] }
    >();
    let emitted = 0;
    /** Writes the entries of every chunk before `to` into the map (all their pieces are placed). */
    const emit = async (to: number): Promise<void> => {
      while (emitted < to) {
        const i = emitted;
        // A segment of kept chunks that no piece touched is the parent's segment, when the parent's map has
        // the same segments: its id is kept without loading it.
        const segEnd = Math.min(n, i + S);
        if (
          touched &&
          i % S === 0 &&
          segEnd <= to &&
          parent?.segmentIds !== undefined &&
          parent.segmentChunks === S &&
          Math.min(S, parent.chunks - i) === segEnd - i &&
          keeps(segEnd - 1) &&
          ![...read.keys()].some((c) => c >= i && c < segEnd)
        ) {
          out.addStored(parent.segmentIds[i / S]!, segEnd - i);
          emitted = segEnd;
          continue;
        }
        const got = read.get(i);
        read.delete(i);
        let c: ImageChunk;
        if (got?.whole !== undefined) c = got.whole;
        else {
          c = await parent!.entry(i, opts);
          if (got?.patches) {
            got.patches.sort((a, b) => a.start - b.start);
            c = overlay(chunkExtents(c, chunkLen(i)), got.patches);
          }
        }
        if (!opts.changedRanges && c === null) res.zeroChunks++;
        await out.add(c);
        emitted++;
      }
    };
    const place = async (p: Piece, id: BlobId | null): Promise<void> => {
      // Pieces are placed in file order: every chunk before this one is complete.
      await emit(p.chunk);
      let r = read.get(p.chunk);
      if (!r) read.set(p.chunk, (r = {}));
      if (p.whole) r.whole = id;
      else (r.patches ??= []).push({ start: p.start, ext: [id, 0, p.length] });
    };

    // Reads run READS_AHEAD ahead; saves are started in order and awaited in order (the writer applies back-pressure).
    let spare: Buffer | undefined;
    const readPiece = async (p: Piece): Promise<Buffer> => {
      const len = p.length;
      let buf: Buffer;
      if (spare?.length === len) {
        buf = spare;
        spare = undefined;
      } else buf = writer.allocBlobBuffer?.(len) ?? Buffer.allocUnsafeSlow(len);
      const at = p.chunk * chunkSize + p.start;
      let got = 0;
      while (got < len) {
        const { bytesRead } = await fh.read(buf, got, len - got, at + got);
        if (bytesRead === 0) throw new InputError(`${file} shrank while being read`);
        got += bytesRead;
      }
      return buf;
    };
    const todo = pieces();
    const reads: { p: Piece; r: Promise<Buffer> }[] = [];
    const saves: { p: Piece; s: Promise<{ id: BlobId | null; storedBytes: number }> }[] = [];
    const fill = (): void => {
      while (reads.length < READS_AHEAD) {
        const next = todo.next();
        if (next.done) return;
        const r = readPiece(next.value);
        r.catch(() => undefined); // awaited in order later, as the saves
        reads.push({ p: next.value, r });
      }
    };
    fill();
    let lastChunk = -1;
    const drainSave = async (): Promise<void> => {
      const s = saves.shift()!;
      const r = await s.s;
      await place(s.p, r.id);
      res.bytesAdded += r.storedBytes;
    };
    try {
      while (reads.length > 0) {
        throwIfAborted(opts.signal);
        const { p, r } = reads.shift()!;
        const buf = await r;
        fill();
        if (p.chunk !== lastChunk) {
          lastChunk = p.chunk;
          res.chunksRead++;
        }
        res.bytesRead += buf.length;
        if (isZero(buf, zero)) {
          // Queued behind the saves before it: pieces are placed in file order.
          saves.push({ p, s: Promise.resolve({ id: null, storedBytes: 0 }) });
          if (p.whole && opts.changedRanges) res.zeroChunks++;
          spare = buf;
        } else {
          const save = writer.saveBlob('data', buf, { signal: opts.signal });
          // Awaited in order later; until then a failure must not count as unhandled.
          save.catch(() => undefined);
          saves.push({ p, s: save });
          if (saves.length > 8) await drainSave();
        }
        opts.onProgress?.({
          phase: 'backup',
          bytesRead: res.bytesRead,
          bytesTotal,
          bytesTransferred: res.bytesAdded,
        });
      }
      while (saves.length > 0) await drainSave();
    } catch (err) {
      // Reads and saves still in flight settle before the source is closed and the error goes up.
      await Promise.allSettled([...reads.map((x) => x.r), ...saves.map((s) => s.s)]);
      throw err;
    }
    await emit(n);
    res.map = await out.finish();
    res.bytesAdded += out.bytesAdded;
    return res;
  } finally {
    await fh.close();
  }
}

export interface ImageRestoreResult {
  size: number;
  bytesWritten: number;
  /** of bytesWritten, those written with O_DIRECT (0 where the filesystem refuses it) */
  bytesDirect: number;
  /** write calls made (neighbouring chunks are merged into one) */
  writes: number;
  chunks: number;
  /** bytes of the new file's data extents allocated ahead of the writes (0 where that is not done) */
  bytesPreallocated: number;
}

function mapFsError(err: unknown, target: string): unknown {
  const code = (err as { code?: string }).code;
  if (code === 'ENOSPC' || code === 'EDQUOT')
    return new NoSpaceError(`no space left writing ${target}`, { cause: err });
  return err;
}

/** Data extents of a new image file allocated ahead, the largest first (per window of chunks). */
const PREALLOC_EXTENTS = 64;
/** Windows after the first are preallocated when they hold at least this much data. */
const PREALLOC_MIN_WINDOW = 256 * 1024 * 1024;

/**
 * One shell allocates the extents given as (offset, length) pairs after the file, in that order, with util-linux
 * `fallocate`; it prints each length once allocated and stops at the first failure (the others would fail alike).
 */
const PREALLOC_SCRIPT = `f=$1; shift
while [ $# -ge 2 ]; do
  fallocate --keep-size --offset "$1" --length "$2" "$f" 2>/dev/null || exit 0
  echo "$2"; shift 2
done`;

/**
 * Allocates the data extents of a new image file ahead of the writes, in the background, with util-linux
 * `fallocate --keep-size` (Node has no fallocate(2)); resolves with the bytes allocated, never rejects. ext4
 * holds the inode lock exclusively through an O_DIRECT write that fills a hole, so the restore's writes went
 * one at a time; into allocated (unwritten) blocks they run side by side (2 GiB compressible restore from a
 * cold repository, alternating with the code before, 5 each: 1.80-1.99 s -> 1.59-1.91 s). Only an optimisation: the
 * extents read as zeros until written, holes (zero chunks) stay holes, a write that lands before its extent
 * is allocated is just slower, and a failure (no `sh` or `fallocate`, a filesystem without it, no space: the
 * write then reports it) changes nothing.
 *
 * All extents go to one shell: a process started from Node costs its main thread ~20 ms at a restore's
 * resident size, and the main thread is the one that issues the writes. One `fallocate` started from Node per
 * extent made a restore of an image with 128 data extents slower than no preallocation at all (0.92-1.08 s
 * against 0.82-0.90 s, 4 each).
 */
async function preallocate(
  file: string,
  extents: { pos: number; length: number }[],
  signal: AbortSignal | undefined,
): Promise<number> {
  const todo = [...extents].sort((a, b) => b.length - a.length).slice(0, PREALLOC_EXTENTS);
  const args = todo.flatMap((e) => [String(e.pos), String(e.length)]);
  const sum = (out: unknown): number =>
    String(out ?? '')
      .split('\n')
      .filter((l) => /^\d+$/.test(l))
      .reduce((a, l) => a + Number(l), 0);
  try {
    const { stdout } = await promisify(execFile)('sh', ['-c', PREALLOC_SCRIPT, 'sh', file, ...args], {
      signal,
    });
    return sum(stdout);
  } catch (err) {
    // No `sh` (nothing allocated) or cancelled (what was allocated before).
    return sum((err as { stdout?: unknown }).stdout);
  }
}

/** Where a blob's bytes go: `length` bytes from `from` of its plaintext to file position `pos`. */
interface Target {
  from: number;
  length: number;
  pos: number;
  /** a whole chunk: the plaintext must be exactly `length` bytes */
  whole: boolean;
}

/** Restore to a regular file (sparse, via a temp name renamed when complete) or onto an existing block device. */
export async function restoreImage(
  reader: BlobReader,
  mapId: BlobId,
  target: string,
  opts: RunOptions & { overwrite?: boolean; windowChunks?: number } = {},
): Promise<ImageRestoreResult> {
  const map = await ImageMapView.open(reader, mapId, opts);
  let st: fs.Stats | undefined;
  try {
    st = await fsp.stat(target);
  } catch {
    st = undefined;
  }
  const isDevice = st?.isBlockDevice() ?? false;
  if (st && !isDevice && !opts.overwrite) {
    if (st.isDirectory()) target = path.join(target, 'image');
    else throw new InputError(`${target} exists (restore to a new path or a block device)`);
    if (fs.existsSync(target)) throw new InputError(`${target} exists`);
  }
  const tmp = isDevice
    ? target
    : path.join(
        path.dirname(target),
        `.${path.basename(target)}.tern-partial-${crypto.randomBytes(4).toString('hex')}`,
      );
  let fh: fs.promises.FileHandle | undefined;
  let direct: fs.promises.FileHandle | undefined;
  const res: ImageRestoreResult = {
    size: map.size,
    bytesWritten: 0,
    bytesDirect: 0,
    writes: 0,
    chunks: map.chunks,
    bytesPreallocated: 0,
  };
  let prealloc: Promise<number> | undefined;
  let zero: Buffer | undefined;
  try {
    fh = await fsp.open(tmp, isDevice ? 'r+' : 'wx', 0o600);
    if (isDevice) {
      const { size } = await deviceSize(fh, target);
      if (size < map.size) throw new InputError(`${target} has ${size} bytes, the image needs ${map.size}`);
    } else await fh.truncate(map.size);
    const h = fh;
    // A second handle with O_DIRECT for the aligned runs that come from the repository's shared arena: their
    // bytes go to the device without a page-cache copy, and the final sync has little left to flush. Where the
    // filesystem refuses O_DIRECT (tmpfs, some FUSE and network filesystems) everything goes through `h`.
    direct = await openDirect(tmp);
    /**
     * Where the bytes of chunks [from, to) come from: per blob, its pieces' [from, length, file position]
     * (a whole chunk must match its length exactly); the zeros a device needs written; the data extents,
     * neighbours merged (what `preallocate` allocates).
     */
    const plan = async (
      from: number,
      to: number,
    ): Promise<{
      targets: Map<BlobId, Target[]>;
      zeros: { pos: number; length: number }[];
      data: { pos: number; length: number }[];
    }> => {
      const targets = new Map<BlobId, Target[]>();
      const zeros: { pos: number; length: number }[] = [];
      const data: { pos: number; length: number }[] = [];
      const entries = await map.entries(from, to, opts);
      // No array per chunk (a window of small chunks plans ~16k of them): a whole chunk or a hole is one piece.
      const piece = (b: BlobId | null, off: number, length: number, pos: number, whole: boolean): void => {
        if (b === null) {
          // A new file is all holes already; a device gets the zeros written.
          if (isDevice) zeros.push({ pos, length });
          return;
        }
        const t: Target = { from: off, length, pos, whole };
        const list = targets.get(b);
        if (list) list.push(t);
        else targets.set(b, [t]);
        const last = data[data.length - 1];
        if (last && last.pos + last.length === pos) last.length += length;
        else data.push({ pos, length });
      };
      for (let i = from; i < to; i++) {
        const c = entries[i - from] ?? null;
        const len = map.chunkLength(i);
        const start = i * map.chunkSize;
        if (c === null || typeof c === 'string') {
          piece(c, 0, len, start, c !== null);
          continue;
        }
        let pos = start;
        for (const [b, off, length] of c) {
          piece(b, off, length, pos, false);
          pos += length;
        }
        if (pos !== start + len)
          throw new IntegrityError(
            `chunk ${i} of image ${mapId}: extents cover ${pos - start} bytes, expected ${len}`,
          );
      }
      return { targets, zeros, data };
    };
    const writer = new PositionalWriter(h, direct, () =>
      opts.onProgress?.({
        phase: 'restore',
        bytesRead: writer.bytesWritten,
        bytesTotal: map.size,
        bytesTransferred: writer.bytesWritten,
      }),
    );
    const writeAll = (buf: Buffer, pos: number): Promise<void> => writer.write(buf, pos);
    const write = (id: BlobId, plain: Buffer, t: Target): Promise<void> => {
      if (t.whole ? plain.length !== t.length : plain.length < t.from + t.length)
        return Promise.reject(
          new IntegrityError(
            `blob ${id} of image ${mapId} has ${plain.length} bytes, the map needs ${t.whole ? t.length : t.from + t.length}`,
          ),
        );
      return writeAll(
        t.from === 0 && t.length === plain.length ? plain : plain.subarray(t.from, t.from + t.length),
        t.pos,
      );
    };
    const windowChunks = opts.windowChunks ?? WINDOW_CHUNKS;
    // The next window is planned (its segments loaded) while this one loads.
    const planFrom = (w: number): Promise<Awaited<ReturnType<typeof plan>>> | undefined => {
      if (w >= map.chunks) return undefined;
      const p = plan(w, Math.min(map.chunks, w + windowChunks));
      p.catch(() => undefined); // awaited in turn (or dropped when the restore fails first)
      return p;
    };
    let planned = planFrom(0);
    for (let w = 0; w < map.chunks; w += windowChunks) {
      const { targets, zeros, data } = (await planned)!;
      planned = planFrom(w + windowChunks);
      // A shell per window costs the main thread a fork (~20 ms at a restore's resident size): later windows
      // only when they hold enough data to gain from it (a 4 GiB image of 4 KiB chunks has 128 windows).
      const dataBytes = data.reduce((a, e) => a + e.length, 0);
      if (writer.direct && !isDevice && dataBytes > 0 && (w === 0 || dataBytes >= PREALLOC_MIN_WINDOW)) {
        const before = prealloc;
        prealloc = (async () => ((await before) ?? 0) + (await preallocate(tmp, data, opts.signal)))();
      }
      const onBlob = (id: BlobId, plain: Buffer): Promise<void> => {
        const ts = targets.get(id);
        if (ts === undefined) return Promise.resolve();
        if (ts.length === 1) return write(id, plain, ts[0]!);
        return Promise.all(ts.map((t) => write(id, plain, t))).then(() => undefined);
      };
      const ids = [...targets.keys()];
      // 8 runs in flight (of up to 4 MiB each): the writer then finds more neighbouring chunks to merge
      // (2 GiB compressible: ~950 writes and 1.6-2.0 s with 3 runs, ~500 writes and 1.4 s with 8).
      if (reader.loadMany) await reader.loadMany(ids, onBlob, { signal: opts.signal, runsInFlight: 8 });
      else {
        let next = 0;
        const worker = async (): Promise<void> => {
          while (next < ids.length) {
            throwIfAborted(opts.signal);
            const id = ids[next++]!;
            await onBlob(id, await reader.loadBlob(id, { signal: opts.signal, verify: false }));
          }
        };
        await Promise.all(Array.from({ length: LOADS_AHEAD }, worker));
      }
      for (const z of zeros) {
        throwIfAborted(opts.signal);
        zero ??= Buffer.alloc(map.chunkSize);
        await writeAll(zero.subarray(0, z.length), z.pos);
      }
    }
    res.bytesWritten = writer.bytesWritten;
    res.bytesDirect = writer.bytesDirect;
    res.writes = writer.writes;
    res.bytesPreallocated = (await prealloc) ?? 0;
    await direct?.close();
    direct = undefined;
    await fh.sync();
    await fh.close();
    fh = undefined;
    if (!isDevice) await fsp.rename(tmp, target);
    return res;
  } catch (err) {
    await prealloc; // no fallocate left running on the file being removed
    await direct?.close().catch(() => undefined);
    await fh?.close().catch(() => undefined);
    if (!isDevice) await fsp.rm(tmp, { force: true }).catch(() => undefined);
    if (err instanceof Error && err.name === 'AbortError')
      throw new CancelledError('restore cancelled', { cause: err });
    throw mapFsError(err, target);
  }
}
