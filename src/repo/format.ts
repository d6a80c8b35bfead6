/** Binary layouts of pack headers and index objects (docs/repository-format.md). */
import { IntegrityError } from '../core/base.ts';

export interface PackBlob {
  id: Uint8Array;
  type: number;
  comp: number;
  offset: number;
  length: number;
  rawLength: number;
}

const HEADER_ENTRY = 42;
export const INDEX_ENTRY = 46;
export const INDEX_MAGIC = 'TERNIDX1';

/** Plain pack header: per blob, in pack order: type u8, comp u8, id[32], length u32le, rawLength u32le. */
export function encodePackHeader(blobs: PackBlob[]): Buffer {
  const out = Buffer.alloc(blobs.length * HEADER_ENTRY);
  let p = 0;
  for (const b of blobs) {
    out[p] = b.type;
    out[p + 1] = b.comp;
    out.set(b.id, p + 2);
    out.writeUInt32LE(b.length, p + 34);
    out.writeUInt32LE(b.rawLength, p + 38);
    p += HEADER_ENTRY;
  }
  return out;
}

export function decodePackHeader(buf: Buffer, what: string): PackBlob[] {
  if (buf.length % HEADER_ENTRY !== 0) throw new IntegrityError(`${what}: malformed pack header`);
  const out: PackBlob[] = [];
  let offset = 0;
  for (let p = 0; p < buf.length; p += HEADER_ENTRY) {
    const length = buf.readUInt32LE(p + 34);
    out.push({
      type: buf[p]!,
      comp: buf[p + 1]!,
      id: buf.subarray(p + 2, p + 34),
      offset,
      length,
      rawLength: buf.readUInt32LE(p + 38),
    });
    offset += length;
  }
  return out;
}

export interface IndexPack {
  packId: string;
  blobs: PackBlob[];
}

/** Plain index: "TERNIDX1", then per pack: packId[32], count u32le, count × (type, comp, id[32], offset, length, rawLength). */
export function encodeIndex(packs: IndexPack[]): Buffer {
  return encodeIndexWith(
    packs.map((p) => ({ packId: p.packId, count: p.blobs.length })),
    (p, j, out, at) => {
      const b = packs[p]!.blobs[j]!;
      writeIndexEntry(out, at, b.type, b.comp, b.id, 0, b.offset, b.length, b.rawLength);
    },
  );
}

/** A plain index of these packs, each entry written by `entry(pack, j, out, at)` (with writeIndexEntry). */
export function encodeIndexWith(
  packs: { packId: string; count: number }[],
  entry: (pack: number, j: number, out: Buffer, at: number) => void,
): Buffer {
  let size = INDEX_MAGIC.length;
  for (const p of packs) size += 36 + p.count * INDEX_ENTRY;
  const out = Buffer.alloc(size);
  out.write(INDEX_MAGIC, 0, 'latin1');
  let o = INDEX_MAGIC.length;
  packs.forEach((p, k) => {
    out.write(p.packId, o, 32, 'hex');
    out.writeUInt32LE(p.count, o + 32);
    o += 36;
    for (let j = 0; j < p.count; j++, o += INDEX_ENTRY) entry(k, j, out, o);
  });
  return out;
}

/** One index entry of INDEX_ENTRY bytes at `at`: type u8, comp u8, id[32] (from `idAt` of `id`), offset, length, rawLength u32le. */
export function writeIndexEntry(
  out: Buffer,
  at: number,
  type: number,
  comp: number,
  id: Uint8Array,
  idAt: number,
  offset: number,
  length: number,
  rawLength: number,
): void {
  out[at] = type;
  out[at + 1] = comp;
  out.set(id.subarray(idAt, idAt + 32), at + 2);
  out.writeUInt32LE(offset, at + 34);
  out.writeUInt32LE(length, at + 38);
  out.writeUInt32LE(rawLength, at + 42);
}

/**
 * Walks a plain index without an object per blob: `onPack` gets each pack's id and where its `count` entries
 * of INDEX_ENTRY bytes start in `buf` (type u8, comp u8, id[32], offset, length, rawLength u32le).
 */
export function scanIndex(
  buf: Buffer,
  what: string,
  onPack: (packId: string, at: number, count: number) => void,
): void {
  if (buf.length < 8 || buf.toString('latin1', 0, 8) !== INDEX_MAGIC)
    throw new IntegrityError(`${what}: not an index`);
  let o = 8;
  while (o < buf.length) {
    if (o + 36 > buf.length) throw new IntegrityError(`${what}: truncated index`);
    const packId = buf.toString('hex', o, o + 32);
    const n = buf.readUInt32LE(o + 32);
    o += 36;
    if (o + n * INDEX_ENTRY > buf.length) throw new IntegrityError(`${what}: truncated index`);
    onPack(packId, o, n);
    o += n * INDEX_ENTRY;
  }
}

export function packKey(packId: string): string {
  return `data/${packId.slice(0, 2)}/${packId}`;
}
