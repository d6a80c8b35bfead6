/**
 * Changed ranges between two block images.
 * fiemap: two reflink clones share physical extents where nothing was written since; comparing extent
 * maps (filefrag -v -b1) finds the differing ranges without reading data.
 * compare: reads both files in parallel 1 MiB blocks; correct everywhere, costs a full read.
 */
import fs from 'node:fs';
import { throwIfAborted } from '../../core/index.ts';
import type { RunOptions } from '../../core/index.ts';
import type { ByteRangeList } from '../types.ts';
import { run } from './exec.ts';

export interface Extent {
  logical: number;
  physical: number;
  length: number;
  /** False for delalloc/inline/unknown extents whose physical address says nothing about sharing. */
  comparable: boolean;
}

const LINE = /^\s*\d+:\s*(\d+)\.\.\s*(\d+):\s*(\d+)\.\.\s*(\d+):\s*(\d+):(.*)$/;

export async function extentMap(file: string, signal?: AbortSignal): Promise<Extent[]> {
  // -s: sync first so delayed allocation has physical addresses; -b1: offsets in bytes.
  const out = await run('filefrag', ['-s', '-v', '-b1', file], signal);
  const extents: Extent[] = [];
  for (const line of out.split('\n')) {
    const m = LINE.exec(line);
    if (!m) continue;
    const flags = m[6] ?? '';
    extents.push({
      logical: Number(m[1]),
      physical: Number(m[3]),
      length: Number(m[5]),
      comparable: !/unknown_loc|delalloc|inline|not_aligned|data_inline|unwritten/.test(flags),
    });
  }
  extents.sort((a, b) => a.logical - b.logical);
  return extents;
}

type Range = { offset: number; length: number };

function pushRange(out: Range[], offset: number, length: number): void {
  if (length <= 0) return;
  const last = out[out.length - 1];
  if (last && last.offset + last.length >= offset) {
    last.length = Math.max(last.length, offset + length - last.offset);
  } else out.push({ offset, length });
}

/** Differing ranges of `target` vs `base` from their extent maps (clipped to the target size). */
export function diffExtents(base: Extent[], baseSize: number, target: Extent[], targetSize: number): Range[] {
  const cuts = new Set<number>([0, targetSize, Math.min(baseSize, targetSize)]);
  for (const list of [base, target]) {
    for (const e of list) {
      if (e.logical < targetSize) cuts.add(e.logical);
      if (e.logical + e.length < targetSize) cuts.add(e.logical + e.length);
    }
  }
  const points = [...cuts].filter((x) => x <= targetSize).sort((a, b) => a - b);
  const find = (list: Extent[], x: number, limit: number): Extent | null | undefined => {
    // undefined = hole; null = past the end of that file
    if (x >= limit) return null;
    let lo = 0;
    let hi = list.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const e = list[mid]!;
      if (x < e.logical) hi = mid - 1;
      else if (x >= e.logical + e.length) lo = mid + 1;
      else return e;
    }
    return undefined;
  };
  const out: Range[] = [];
  for (let i = 0; i + 1 < points.length; i++) {
    const a = points[i]!;
    const b = points[i + 1]!;
    if (b <= a) continue;
    const eb = find(base, a, baseSize);
    const et = find(target, a, targetSize);
    let same: boolean;
    if (eb === null) same = false;
    else if (eb === undefined && et === undefined) same = true;
    else if (eb && et && eb.comparable && et.comparable)
      same = eb.physical - eb.logical === et.physical - et.logical;
    else same = false;
    if (!same) pushRange(out, a, b - a);
  }
  return out;
}

export async function fiemapRanges(
  basePath: string,
  targetPath: string,
  opts: RunOptions = {},
): Promise<ByteRangeList> {
  const [bs, ts] = await Promise.all([fs.promises.stat(basePath), fs.promises.stat(targetPath)]);
  const [be, te] = await Promise.all([extentMap(basePath, opts.signal), extentMap(targetPath, opts.signal)]);
  return { ranges: diffExtents(be, bs.size, te, ts.size), method: 'fiemap' };
}

const BLOCK = 1 << 20;
const PAGE = 4096;

export async function compareRanges(
  basePath: string,
  targetPath: string,
  opts: RunOptions = {},
): Promise<ByteRangeList> {
  const [bh, th] = await Promise.all([fs.promises.open(basePath, 'r'), fs.promises.open(targetPath, 'r')]);
  try {
    const [bs, ts] = await Promise.all([bh.stat(), th.stat()]);
    const size = ts.size;
    const out: Range[] = [];
    const inFlight = 4;
    const bufs = Array.from({ length: inFlight }, () => [
      Buffer.allocUnsafe(BLOCK),
      Buffer.allocUnsafe(BLOCK),
    ]);
    let bytesRead = 0;
    for (let off = 0; off < size; off += BLOCK * inFlight) {
      throwIfAborted(opts.signal);
      const results = await Promise.all(
        bufs.map(async ([b1, b2], i) => {
          const o = off + i * BLOCK;
          if (o >= size) return null;
          const len = Math.min(BLOCK, size - o);
          const [r1, r2] = await Promise.all([bh.read(b1!, 0, len, o), th.read(b2!, 0, len, o)]);
          if (r1.bytesRead !== len || r2.bytesRead !== len || o + len > bs.size) return [{ o, len }];
          if (b1!.subarray(0, len).equals(b2!.subarray(0, len))) return null;
          // Narrow a differing block down to 4 KiB pages so an incremental copy writes only those.
          const pages: { o: number; len: number }[] = [];
          for (let p = 0; p < len; p += PAGE) {
            const e = Math.min(len, p + PAGE);
            if (!b1!.subarray(p, e).equals(b2!.subarray(p, e))) pages.push({ o: o + p, len: e - p });
          }
          return pages;
        }),
      );
      for (const r of results) if (r) for (const x of r) pushRange(out, x.o, x.len);
      bytesRead += Math.min(size - off, BLOCK * inFlight) * 2;
      opts.onProgress?.({ phase: 'compare', bytesRead, bytesTotal: size * 2, bytesTransferred: 0 });
    }
    return { ranges: out, method: 'compare' };
  } finally {
    await Promise.all([bh.close(), th.close()]);
  }
}
