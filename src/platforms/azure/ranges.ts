/** Byte range arithmetic for page blobs (512-byte pages). */
export interface Range {
  offset: number;
  length: number;
}

export const PAGE = 512;

/** Sorted, merged copy of `ranges` (touching ranges join). */
export function mergeRanges(ranges: readonly Range[]): Range[] {
  const sorted = ranges.filter((r) => r.length > 0).sort((a, b) => a.offset - b.offset);
  const out: Range[] = [];
  for (const r of sorted) {
    const last = out[out.length - 1];
    if (last && r.offset <= last.offset + last.length) {
      last.length = Math.max(last.length, r.offset + r.length - last.offset);
    } else out.push({ offset: r.offset, length: r.length });
  }
  return out;
}

/** Widen a range to whole pages. */
export function alignToPages(r: Range, page = PAGE): Range {
  const start = Math.floor(r.offset / page) * page;
  const end = Math.ceil((r.offset + r.length) / page) * page;
  return { offset: start, length: end - start };
}

/** Split ranges into pieces of at most `max` bytes (a page-blob write takes at most 4 MiB). */
export function splitRanges(ranges: readonly Range[], max: number): Range[] {
  const out: Range[] = [];
  for (const r of ranges)
    for (let o = r.offset; o < r.offset + r.length; o += max)
      out.push({ offset: o, length: Math.min(max, r.offset + r.length - o) });
  return out;
}

export function totalBytes(ranges: readonly Range[]): number {
  return ranges.reduce((n, r) => n + r.length, 0);
}

/** Ranges clipped to [0, size). */
export function clipRanges(ranges: readonly Range[], size: number): Range[] {
  const out: Range[] = [];
  for (const r of ranges) {
    const end = Math.min(size, r.offset + r.length);
    if (end > r.offset) out.push({ offset: r.offset, length: end - r.offset });
  }
  return out;
}

/**
 * Sorted pieces covering `ranges` for bulk transfer: ranges closer than `gap` bytes are joined (the gap is read
 * and written too: one request instead of two), no piece longer than `max` bytes (a long range is split).
 */
export function coalesceRanges(ranges: readonly Range[], gap: number, max: number): Range[] {
  const out: Range[] = [];
  for (const r of mergeRanges(ranges)) {
    const last = out[out.length - 1];
    const end = r.offset + r.length;
    if (last && r.offset - (last.offset + last.length) < gap && end - last.offset <= max) {
      last.length = end - last.offset;
      continue;
    }
    for (let o = r.offset; o < end; o += max) out.push({ offset: o, length: Math.min(max, end - o) });
  }
  return out;
}
