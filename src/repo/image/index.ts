/** Block images: a regular file or block device as fixed aligned chunks; zero chunks recorded as null. */
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import crypto from 'node:crypto';
import type { RunOptions } from '../../core/index.ts';
import {
  InputError,
  IntegrityError,
  NoSpaceError,
  throwIfAborted,
  CancelledError,
} from '../../core/index.ts';
import type { BlobId, BlobReader, BlobWriter, ByteRange, ImageMap } from '../api.ts';

export const DEFAULT_CHUNK_SIZE = 1024 * 1024;
const READS_AHEAD = 6;
const LOADS_AHEAD = 8;

export interface ImageBackupOptions extends RunOptions {
  chunkSize?: number;
  /** Map of the parent snapshot's image (needs `reader`). */
  parentMap?: BlobId;
  reader?: BlobReader;
  /** With a parent: only chunks overlapping these ranges are read; the rest keep the parent's ids. */
  changedRanges?: ByteRange[];
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

export async function loadImageMap(reader: BlobReader, id: BlobId, opts: RunOptions = {}): Promise<ImageMap> {
  const raw = await reader.loadBlob(id, opts);
  try {
    const m = JSON.parse(raw.toString('utf8')) as ImageMap;
    if (typeof m.size !== 'number' || typeof m.chunkSize !== 'number' || !Array.isArray(m.chunks))
      throw new Error('bad shape');
    return m;
  } catch (err) {
    throw new IntegrityError(`image map ${id} is malformed`, { cause: err });
  }
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

export async function backupImage(
  writer: BlobWriter,
  file: string,
  opts: ImageBackupOptions = {},
): Promise<ImageBackupResult> {
  const fh = await fsp.open(file, 'r');
  try {
    const { size } = await deviceSize(fh, file);
    let parent: ImageMap | undefined;
    if (opts.parentMap) {
      if (!opts.reader) throw new InputError('a parent map needs a reader');
      parent = await loadImageMap(opts.reader, opts.parentMap, opts);
    }
    const chunkSize = opts.chunkSize ?? parent?.chunkSize ?? DEFAULT_CHUNK_SIZE;
    if (chunkSize < 4096 || chunkSize > 64 * 1024 * 1024 || chunkSize % 4096 !== 0)
      throw new InputError('chunk size must be a multiple of 4 KiB between 4 KiB and 64 MiB');
    const n = Math.ceil(size / chunkSize);
    const chunks: (BlobId | null)[] = new Array<BlobId | null>(n).fill(null);
    let toRead: boolean[] | undefined;
    if (opts.changedRanges) {
      if (!parent) throw new InputError('--changed-ranges needs --parent');
      if (parent.chunkSize !== chunkSize)
        throw new InputError("--changed-ranges needs the parent's chunk size");
      toRead = new Array<boolean>(n).fill(false);
      for (let i = 0; i < n; i++) {
        // chunks the parent did not have (size grew) or whose last partial chunk changed length are read.
        if (i >= parent.chunks.length || (i === parent.chunks.length - 1 && parent.size !== size))
          toRead[i] = true;
        else chunks[i] = parent.chunks[i] ?? null;
      }
      for (const r of opts.changedRanges) {
        if (r.length === 0) continue;
        const first = Math.floor(r.offset / chunkSize);
        const last = Math.min(n - 1, Math.floor((r.offset + r.length - 1) / chunkSize));
        for (let i = first; i <= last; i++) toRead[i] = true;
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
    let bytesTotal = 0;
    for (let i = 0; i < n; i++)
      if (!toRead || toRead[i]) bytesTotal += Math.min(chunkSize, size - i * chunkSize);
    const indexes: number[] = [];
    for (let i = 0; i < n; i++) if (!toRead || toRead[i]) indexes.push(i);

    // Reads run READS_AHEAD ahead; saves are started in order and awaited in order (the writer applies back-pressure).
    const read = async (i: number): Promise<Buffer> => {
      const len = Math.min(chunkSize, size - i * chunkSize);
      const buf = Buffer.allocUnsafeSlow(len);
      let got = 0;
      while (got < len) {
        const { bytesRead } = await fh.read(buf, got, len - got, i * chunkSize + got);
        if (bytesRead === 0) throw new InputError(`${file} shrank while being read`);
        got += bytesRead;
      }
      return buf;
    };
    const reads: Promise<Buffer>[] = [];
    const saves: { i: number; p: Promise<{ id: string; storedBytes: number }> }[] = [];
    let next = 0;
    const fill = (): void => {
      while (next < indexes.length && reads.length < READS_AHEAD) reads.push(read(indexes[next++]!));
    };
    fill();
    let k = 0;
    const drainSave = async (): Promise<void> => {
      const s = saves.shift()!;
      const r = await s.p;
      chunks[s.i] = r.id;
      res.bytesAdded += r.storedBytes;
    };
    while (k < indexes.length) {
      throwIfAborted(opts.signal);
      const i = indexes[k++]!;
      const buf = await reads.shift()!;
      fill();
      res.chunksRead++;
      res.bytesRead += buf.length;
      if (isZero(buf, zero)) {
        chunks[i] = null;
        res.zeroChunks++;
      } else {
        saves.push({ i, p: writer.saveBlob('data', buf, { signal: opts.signal }) });
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
    if (!toRead) res.zeroChunks = chunks.filter((c) => c === null).length;
    const map: ImageMap = { size, chunkSize, chunks };
    const saved = await writer.saveBlob('tree', Buffer.from(JSON.stringify(map)), { signal: opts.signal });
    res.map = saved.id;
    res.bytesAdded += saved.storedBytes;
    return res;
  } finally {
    await fh.close();
  }
}

export interface ImageRestoreResult {
  size: number;
  bytesWritten: number;
  chunks: number;
}

function mapFsError(err: unknown, target: string): unknown {
  const code = (err as { code?: string }).code;
  if (code === 'ENOSPC' || code === 'EDQUOT')
    return new NoSpaceError(`no space left writing ${target}`, { cause: err });
  return err;
}

/** Restore to a regular file (sparse, via a temp name renamed when complete) or onto an existing block device. */
export async function restoreImage(
  reader: BlobReader,
  mapId: BlobId,
  target: string,
  opts: RunOptions & { overwrite?: boolean } = {},
): Promise<ImageRestoreResult> {
  const map = await loadImageMap(reader, mapId, opts);
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
  const res: ImageRestoreResult = { size: map.size, bytesWritten: 0, chunks: map.chunks.length };
  try {
    fh = await fsp.open(tmp, isDevice ? 'r+' : 'wx', 0o600);
    if (isDevice) {
      const { size } = await deviceSize(fh, target);
      if (size < map.size) throw new InputError(`${target} has ${size} bytes, the image needs ${map.size}`);
    } else await fh.truncate(map.size);
    const zero = Buffer.alloc(map.chunkSize);
    const work = map.chunks.map((c, i) => ({ c, i })).filter((w) => w.c !== null || isDevice);
    let next = 0;
    const h = fh;
    const worker = async (): Promise<void> => {
      while (next < work.length) {
        throwIfAborted(opts.signal);
        const { c, i } = work[next++]!;
        const len = Math.min(map.chunkSize, map.size - i * map.chunkSize);
        const buf = c === null ? zero.subarray(0, len) : await reader.loadBlob(c, opts);
        if (buf.length !== len)
          throw new IntegrityError(`chunk ${i} of image ${mapId} has ${buf.length} bytes, expected ${len}`);
        let off = 0;
        while (off < len) {
          const { bytesWritten } = await h.write(buf, off, len - off, i * map.chunkSize + off);
          off += bytesWritten;
        }
        res.bytesWritten += len;
        opts.onProgress?.({
          phase: 'restore',
          bytesRead: res.bytesWritten,
          bytesTotal: map.size,
          bytesTransferred: res.bytesWritten,
        });
      }
    };
    await Promise.all(Array.from({ length: LOADS_AHEAD }, worker));
    await fh.sync();
    await fh.close();
    fh = undefined;
    if (!isDevice) await fsp.rename(tmp, target);
    return res;
  } catch (err) {
    await fh?.close().catch(() => undefined);
    if (!isDevice) await fsp.rm(tmp, { force: true }).catch(() => undefined);
    if (err instanceof Error && err.name === 'AbortError')
      throw new CancelledError('restore cancelled', { cause: err });
    throw mapFsError(err, target);
  }
}
