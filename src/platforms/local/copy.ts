/** Data movement for block images: sparse-aware full copy and ranged copy, large blocks, several in flight. */
import fs from 'node:fs';
import { throwIfAborted } from '../../core/index.ts';
import type { RunOptions } from '../../core/index.ts';

const BLOCK = 4 << 20;
const IN_FLIGHT = 4;
const PIECE = 64 << 10;

function isZero(b: Buffer): boolean {
  // Compare 8-byte words through a BigUint64Array view when aligned; fall back to bytes.
  if (b.byteOffset % 8 === 0 && b.length % 8 === 0) {
    const w = new BigUint64Array(b.buffer, b.byteOffset, b.length / 8);
    for (let i = 0; i < w.length; i++) if (w[i] !== 0n) return false;
    return true;
  }
  for (let i = 0; i < b.length; i++) if (b[i] !== 0) return false;
  return true;
}

/**
 * Copies the given ranges of `src` into `dst` (which must exist), then sets dst's size to src's.
 * With `skipZero`, all-zero blocks are not written (dst must be holes there: a fresh file).
 * Returns bytes written.
 */
export async function copyRanges(
  src: string,
  dst: string,
  ranges: { offset: number; length: number }[] | 'all',
  opts: RunOptions & { skipZero?: boolean; phase?: string } = {},
): Promise<number> {
  const sh = await fs.promises.open(src, 'r');
  const dh = await fs.promises.open(dst, 'r+');
  try {
    const size = (await sh.stat()).size;
    await dh.truncate(size);
    const list = ranges === 'all' ? [{ offset: 0, length: size }] : ranges;
    const blocks: { o: number; len: number }[] = [];
    let total = 0;
    for (const r of list) {
      const end = Math.min(r.offset + r.length, size);
      for (let o = r.offset; o < end; o += BLOCK) blocks.push({ o, len: Math.min(BLOCK, end - o) });
      total += Math.max(0, end - r.offset);
    }
    let written = 0;
    let read = 0;
    let next = 0;
    const worker = async (): Promise<void> => {
      const buf = Buffer.allocUnsafe(BLOCK);
      while (next < blocks.length) {
        throwIfAborted(opts.signal);
        const b = blocks[next++]!;
        const { bytesRead } = await sh.read(buf, 0, b.len, b.o);
        const data = buf.subarray(0, bytesRead);
        read += bytesRead;
        if (!opts.skipZero) {
          await dh.write(data, 0, bytesRead, b.o);
          written += bytesRead;
        } else {
          // Write runs of non-zero 64 KiB pieces; zero pieces stay holes in the fresh file.
          let p = 0;
          while (p < bytesRead) {
            while (p < bytesRead && isZero(data.subarray(p, Math.min(bytesRead, p + PIECE)))) p += PIECE;
            let e = p;
            while (e < bytesRead && !isZero(data.subarray(e, Math.min(bytesRead, e + PIECE)))) e += PIECE;
            e = Math.min(e, bytesRead);
            if (e > p) {
              await dh.write(data, p, e - p, b.o + p);
              written += e - p;
            }
            p = e;
          }
        }
        opts.onProgress?.({
          phase: opts.phase ?? 'copy',
          bytesRead: read,
          bytesTotal: total,
          bytesTransferred: written,
        });
      }
    };
    await Promise.all(Array.from({ length: IN_FLIGHT }, worker));
    await dh.sync();
    return written;
  } finally {
    await Promise.all([sh.close(), dh.close()]);
  }
}

/** Full sparse-aware copy of a block image into a new file. */
export async function sparseCopy(
  src: string,
  dst: string,
  opts: RunOptions & { phase?: string } = {},
): Promise<number> {
  await fs.promises.writeFile(dst, '');
  return copyRanges(src, dst, 'all', { ...opts, skipZero: true });
}
