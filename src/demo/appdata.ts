/**
 * The demo "application": a volume of random data whose first 4 KiB are a header the application writes
 * with the time of its last write and a checksum of the body, so a restored copy tells by itself how old its
 * data is (for RPO) and whether it is intact (for RTO: restored AND checked).
 *
 * Header: "TERNDEMO" | u32 version | f64 written-at (ms since epoch) | u32 chunk size | 32-byte checksum.
 * Checksum = SHA-256 over the SHA-256 of each body chunk (1 MiB), so a small change rehashes only its chunks.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import { IntegrityError } from '../core/index.ts';

export const HEADER = 4096;
const CHUNK = 1 << 20;
const MAGIC = Buffer.from('TERNDEMO');

export class DemoApp {
  readonly file: string;
  readonly size: number;
  private hashes: Buffer[] = [];
  writtenAt = 0;

  constructor(file: string, size: number) {
    if (size < HEADER + CHUNK) throw new Error('the demo volume must be at least 1 MiB + 4 KiB');
    this.file = file;
    this.size = size;
  }

  private chunkCount(): number {
    return Math.ceil((this.size - HEADER) / CHUNK);
  }

  /** Fill the volume with random data (AES-CTR keystream: fast and incompressible). */
  async writeInitial(seed: Buffer, now: number): Promise<void> {
    const cipher = crypto.createCipheriv(
      'aes-256-ctr',
      crypto.createHash('sha256').update(seed).digest(),
      Buffer.alloc(16),
    );
    const zeros = Buffer.alloc(CHUNK);
    const fh = await fs.promises.open(this.file, 'r+');
    try {
      this.hashes = [];
      for (let i = 0; i < this.chunkCount(); i++) {
        const off = HEADER + i * CHUNK;
        const len = Math.min(CHUNK, this.size - off);
        const data = cipher.update(zeros.subarray(0, len));
        await fh.write(data, 0, len, off);
        this.hashes.push(crypto.createHash('sha256').update(data).digest());
      }
      await this.writeHeader(fh, now);
      await fh.sync();
    } finally {
      await fh.close();
    }
  }

  /**
   * Overwrite `fraction` of the body in scattered pieces of `block` bytes (4 KiB pages by default: the worst
   * case for fixed-size repository chunks), then stamp the header. Returns bytes changed.
   */
  async change(fraction: number, seed: number, now: number, block = 4096): Promise<number> {
    const pages = Math.max(1, Math.floor(((this.size - HEADER) * fraction) / block));
    const bodyPages = Math.floor((this.size - HEADER) / block);
    let x = seed >>> 0 || 1;
    const rnd = () => {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      return (x >>> 0) / 2 ** 32;
    };
    const touched = new Set<number>();
    const fh = await fs.promises.open(this.file, 'r+');
    try {
      for (let i = 0; i < pages; i++) {
        const page = Math.floor(rnd() * bodyPages);
        const off = HEADER + page * block;
        await fh.write(crypto.randomBytes(block), 0, block, off);
        for (
          let c = Math.floor((off - HEADER) / CHUNK);
          c <= Math.floor((off - HEADER + block - 1) / CHUNK);
          c++
        )
          touched.add(c);
      }
      const buf = Buffer.alloc(CHUNK);
      for (const c of touched) {
        const off = HEADER + c * CHUNK;
        const len = Math.min(CHUNK, this.size - off);
        await fh.read(buf, 0, len, off);
        this.hashes[c] = crypto.createHash('sha256').update(buf.subarray(0, len)).digest();
      }
      await this.writeHeader(fh, now);
      await fh.sync();
    } finally {
      await fh.close();
    }
    return pages * block;
  }

  private async writeHeader(fh: fs.promises.FileHandle, now: number): Promise<void> {
    const root = crypto.createHash('sha256');
    for (const h of this.hashes) root.update(h);
    const hdr = Buffer.alloc(HEADER);
    MAGIC.copy(hdr, 0);
    hdr.writeUInt32LE(1, 8);
    hdr.writeDoubleLE(now, 12);
    hdr.writeUInt32LE(CHUNK, 20);
    root.digest().copy(hdr, 24);
    await fh.write(hdr, 0, HEADER, 0);
    this.writtenAt = now;
  }
}

/** Read a restored volume: its header's timestamp, and whether the body matches the header's checksum. */
export async function checkVolume(file: string): Promise<{ writtenAt: number; ok: boolean; size: number }> {
  const fh = await fs.promises.open(file, 'r');
  try {
    const size = (await fh.stat()).size;
    const hdr = Buffer.alloc(HEADER);
    await fh.read(hdr, 0, HEADER, 0);
    if (!hdr.subarray(0, 8).equals(MAGIC)) throw new IntegrityError(`${file} has no demo header`);
    const writtenAt = hdr.readDoubleLE(12);
    const chunk = hdr.readUInt32LE(20);
    const want = hdr.subarray(24, 56);
    // Reads of 8 MiB run ahead (4 in flight) while the previous ones are hashed.
    const root = crypto.createHash('sha256');
    const block = Math.max(chunk, Math.floor((8 << 20) / chunk) * chunk);
    const readAt = async (off: number): Promise<Buffer> => {
      const len = Math.min(block, size - off);
      const buf = Buffer.allocUnsafe(len);
      let got = 0;
      while (got < len) {
        const { bytesRead } = await fh.read(buf, got, len - got, off + got);
        if (bytesRead === 0) break;
        got += bytesRead;
      }
      return buf.subarray(0, got);
    };
    const inflight: Promise<Buffer>[] = [];
    let next = HEADER;
    const fill = () => {
      while (inflight.length < 4 && next < size) {
        inflight.push(readAt(next));
        next += block;
      }
    };
    fill();
    while (inflight.length > 0) {
      const buf = await (inflight.shift() as Promise<Buffer>);
      fill();
      for (let o = 0; o < buf.length; o += chunk)
        root.update(
          crypto
            .createHash('sha256')
            .update(buf.subarray(o, Math.min(o + chunk, buf.length)))
            .digest(),
        );
    }
    return { writtenAt, ok: root.digest().equals(want), size };
  } finally {
    await fh.close();
  }
}
