/**
 * Image maps: which blob holds each chunk of a block image, stored as a small head blob that lists segment
 * blobs of SEGMENT_CHUNKS chunk entries each (docs/repository-format.md, "Image maps").
 *
 * One blob for the whole map, as before 2026-11-26, grows with the image: at the default 1 MiB chunks a 1 TiB
 * volume has 2^20 entries, ~70 MB of JSON, more than a blob may hold, and backup and restore held every entry
 * as a JS value (a backup of 2^20 chunks peaked at 826 MiB RSS, then failed on its map). In segments, a
 * backup keeps one segment's entries at a time and a restore one window of them; an incremental keeps the
 * parent's id for each segment it did not change, and all-zero segments of a sparse volume are one blob.
 * Maps written before (a `chunks` array in the head) are still read.
 */
import { IntegrityError, type RunOptions } from '../../core/base.ts';
import type { BlobId, BlobReader, BlobWriter, ImageChunk, ImageExtent, ImageMap } from '../api.ts';

/** Chunk entries per segment blob: ~270 KB of JSON for whole-chunk ids (4 GiB of image at 1 MiB chunks). */
export const SEGMENT_CHUNKS = 4096;

/** The head blob of a segmented map. */
interface MapHead {
  size: number;
  chunkSize: number;
  segmentChunks: number;
  segments: BlobId[];
}

const ID = /^[0-9a-f]{64}$/;

function badMap(id: BlobId, why: string, cause?: unknown): IntegrityError {
  return new IntegrityError(`image map ${id} is malformed: ${why}`, { cause, details: { object: id } });
}

/** Checks one chunk entry's shape (a blob id, null, or extents); the extents' lengths are checked on restore. */
function checkChunk(c: unknown): c is ImageChunk {
  if (c === null) return true;
  if (typeof c === 'string') return ID.test(c);
  if (!Array.isArray(c) || c.length === 0) return false;
  for (const e of c as unknown[]) {
    if (!Array.isArray(e) || e.length !== 3) return false;
    const [b, from, len] = e as unknown[];
    if (!(b === null || (typeof b === 'string' && ID.test(b)))) return false;
    if (
      !Number.isSafeInteger(from) ||
      !Number.isSafeInteger(len) ||
      (from as number) < 0 ||
      (len as number) <= 0
    )
      return false;
  }
  return true;
}

function parseJson(raw: Buffer, id: BlobId): unknown {
  try {
    return JSON.parse(raw.toString('utf8'));
  } catch (err) {
    throw badMap(id, 'not JSON', err);
  }
}

/**
 * A stored image map, read a segment at a time. `entries(from, to)` loads the segments it needs and keeps
 * the last one, so a pass in chunk order loads each segment once.
 */
export class ImageMapView {
  readonly id: BlobId;
  readonly size: number;
  readonly chunkSize: number;
  /** Number of chunks: ceil(size / chunkSize). */
  readonly chunks: number;
  /** Chunk entries per segment (the whole map for a map written in one blob). */
  readonly segmentChunks: number;
  /** Segment blob ids; undefined for a map written in one blob. */
  readonly segmentIds: readonly BlobId[] | undefined;
  private readonly reader: BlobReader;
  private readonly whole: ImageChunk[] | undefined;
  private cached: { k: number; entries: ImageChunk[] } | undefined;

  private constructor(
    reader: BlobReader,
    id: BlobId,
    head: { size: number; chunkSize: number; segmentChunks: number },
    segmentIds: BlobId[] | undefined,
    whole: ImageChunk[] | undefined,
  ) {
    this.reader = reader;
    this.id = id;
    this.size = head.size;
    this.chunkSize = head.chunkSize;
    this.chunks = Math.ceil(head.size / head.chunkSize);
    this.segmentChunks = head.segmentChunks;
    this.segmentIds = segmentIds;
    this.whole = whole;
  }

  static async open(reader: BlobReader, id: BlobId, opts: RunOptions = {}): Promise<ImageMapView> {
    const j = parseJson(await reader.loadBlob(id, opts), id) as Partial<MapHead> & { chunks?: unknown };
    if (typeof j !== 'object' || j === null) throw badMap(id, 'not an object');
    const { size, chunkSize } = j;
    if (!Number.isSafeInteger(size) || size! < 0) throw badMap(id, 'bad size');
    if (!Number.isSafeInteger(chunkSize) || chunkSize! <= 0) throw badMap(id, 'bad chunk size');
    const n = Math.ceil(size! / chunkSize!);
    if (Array.isArray(j.chunks)) {
      // Written in one blob (before segments).
      if (j.chunks.length !== n) throw badMap(id, `${j.chunks.length} chunk entries, the size needs ${n}`);
      if (!j.chunks.every(checkChunk)) throw badMap(id, 'bad chunk entry');
      return new ImageMapView(
        reader,
        id,
        { size: size!, chunkSize: chunkSize!, segmentChunks: Math.max(n, 1) },
        undefined,
        j.chunks,
      );
    }
    const { segmentChunks, segments } = j;
    if (!Number.isSafeInteger(segmentChunks) || segmentChunks! <= 0) throw badMap(id, 'bad segment size');
    if (!Array.isArray(segments) || !segments.every((s) => typeof s === 'string' && ID.test(s)))
      throw badMap(id, 'bad segment list');
    if (segments.length !== Math.ceil(n / segmentChunks!))
      throw badMap(id, `${segments.length} segments for ${n} chunks of ${segmentChunks} per segment`);
    return new ImageMapView(
      reader,
      id,
      { size: size!, chunkSize: chunkSize!, segmentChunks: segmentChunks! },
      segments,
      undefined,
    );
  }

  /** Number of segments. */
  get segmentCount(): number {
    return this.segmentIds?.length ?? 1;
  }

  /** Length in bytes of chunk i. */
  chunkLength(i: number): number {
    return Math.min(this.chunkSize, this.size - i * this.chunkSize);
  }

  /** The chunk entries of segment k. */
  async segment(k: number, opts: RunOptions = {}): Promise<ImageChunk[]> {
    if (this.whole) return this.whole;
    if (this.cached?.k === k) return this.cached.entries;
    const sid = this.segmentIds![k];
    if (sid === undefined) throw new RangeError(`segment ${k} of ${this.segmentCount}`);
    const j = parseJson(await this.reader.loadBlob(sid, opts), sid);
    const want = Math.min(this.segmentChunks, this.chunks - k * this.segmentChunks);
    if (!Array.isArray(j) || j.length !== want)
      throw badMap(this.id, `segment ${k} (${sid}) does not hold ${want} chunk entries`);
    if (!j.every(checkChunk)) throw badMap(this.id, `segment ${k} (${sid}) has a bad chunk entry`);
    this.cached = { k, entries: j };
    return j;
  }

  /** The entry of chunk i, loading its segment. */
  async entry(i: number, opts: RunOptions = {}): Promise<ImageChunk> {
    const k = Math.floor(i / this.segmentChunks);
    const c = (await this.segment(k, opts))[i - k * this.segmentChunks];
    if (c === undefined) throw new RangeError(`chunk ${i} of ${this.chunks}`);
    return c;
  }

  /** Entries of chunks [from, to), loading the segments they are in. */
  async entries(from: number, to: number, opts: RunOptions = {}): Promise<ImageChunk[]> {
    const out: ImageChunk[] = [];
    for (let i = from; i < to;) {
      const k = Math.floor(i / this.segmentChunks);
      const seg = await this.segment(k, opts);
      const base = k * this.segmentChunks;
      const end = Math.min(to, base + seg.length);
      for (; i < end; i++) out.push(seg[i - base]!);
    }
    return out;
  }

  /** The map's own blobs: the head and its segments. */
  mapBlobs(): BlobId[] {
    return [this.id, ...(this.segmentIds ?? [])];
  }
}

/** The chunk as extents (a whole blob or a hole is one extent). */
export function chunkExtents(c: ImageChunk, len: number): ImageExtent[] {
  if (c === null || typeof c === 'string') return [[c, 0, len]];
  return c;
}

/** Every blob an image snapshot needs: the map's head and segments and every blob its chunks name. */
export async function imageMapBlobs(
  reader: BlobReader,
  id: BlobId,
  visit: (id: BlobId) => void,
  opts: RunOptions = {},
): Promise<void> {
  const view = await ImageMapView.open(reader, id, opts);
  for (const b of view.mapBlobs()) visit(b);
  for (let k = 0; k < view.segmentCount; k++)
    for (const c of await view.segment(k, opts)) {
      if (typeof c === 'string') visit(c);
      else if (c !== null) for (const [b] of c) if (b !== null) visit(b);
    }
}

/** The whole map in memory (tests, small images); backup and restore go a segment at a time instead. */
export async function loadImageMap(reader: BlobReader, id: BlobId, opts: RunOptions = {}): Promise<ImageMap> {
  const view = await ImageMapView.open(reader, id, opts);
  return { size: view.size, chunkSize: view.chunkSize, chunks: await view.entries(0, view.chunks, opts) };
}

/**
 * Writes a map a segment at a time: `add` the chunk entries in order; each full segment is saved as it
 * completes (or given as the id of an identical stored segment with `addStored`); `finish` saves the head.
 */
export class ImageMapWriter {
  private readonly writer: BlobWriter;
  private readonly size: number;
  private readonly chunkSize: number;
  readonly segmentChunks: number;
  private readonly opts: RunOptions;
  private readonly segments: BlobId[] = [];
  private pending: ImageChunk[] = [];
  /** Bytes the map's blobs added to the repository. */
  bytesAdded = 0;
  /** Chunks written so far. */
  count = 0;

  constructor(
    writer: BlobWriter,
    head: { size: number; chunkSize: number; segmentChunks?: number },
    opts: RunOptions = {},
  ) {
    this.writer = writer;
    this.size = head.size;
    this.chunkSize = head.chunkSize;
    this.segmentChunks = head.segmentChunks ?? SEGMENT_CHUNKS;
    this.opts = opts;
  }

  /** The next chunk's entry. */
  async add(c: ImageChunk): Promise<void> {
    this.pending.push(c);
    this.count++;
    if (this.pending.length === this.segmentChunks) await this.flush();
  }

  /** A whole segment (at a segment boundary) that is already stored under `id` with `chunks` entries. */
  addStored(id: BlobId, chunks: number): void {
    if (this.pending.length !== 0) throw new Error('a stored segment must start at a segment boundary');
    this.segments.push(id);
    this.count += chunks;
  }

  private async flush(): Promise<void> {
    if (this.pending.length === 0) return;
    const entries = this.pending;
    this.pending = [];
    const saved = await this.writer.saveBlob('tree', Buffer.from(JSON.stringify(entries)), this.opts);
    this.segments.push(saved.id);
    this.bytesAdded += saved.storedBytes;
  }

  /** Saves the last segment and the head; the head's id. */
  async finish(): Promise<BlobId> {
    await this.flush();
    const n = Math.ceil(this.size / this.chunkSize);
    if (this.count !== n) throw new Error(`image map has ${this.count} chunk entries, expected ${n}`);
    const head: MapHead = {
      size: this.size,
      chunkSize: this.chunkSize,
      segmentChunks: this.segmentChunks,
      segments: this.segments,
    };
    const saved = await this.writer.saveBlob('tree', Buffer.from(JSON.stringify(head)), this.opts);
    this.bytesAdded += saved.storedBytes;
    return saved.id;
  }
}
