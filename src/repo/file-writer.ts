/**
 * Positional writes into one file for restores, in any order, as blobs arrive (image restores and the large
 * files of tree restores): queued, sorted and merged with their neighbours into one pwritev, few at a time.
 */
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import { DIRECT_ALIGN, directWritable } from '../core/aligned.ts';

/** Largest write queued neighbouring writes are merged into. */
const MERGE_BYTES = 8 * 1024 * 1024;
/** ... and at most this many buffers in one pwritev (IOV_MAX is 1024). */
const MERGE_PARTS = 256;
/** Writes in flight with O_DIRECT (buffered writes go one at a time: they contend on the inode lock). */
const DIRECT_WRITERS = 2;

interface QueuedWrite {
  buf: Buffer;
  pos: number;
  done: () => void;
  fail: (err: unknown) => void;
}

/** Queued writes that continue each other in the file and in memory, as one span (`buf`). */
interface Span {
  buf: Buffer;
  pos: number;
  parts: QueuedWrite[];
  /** pieces of the span not written yet */
  left: number;
  failed: boolean;
}

/** A piece of a span written in one call: its partial page at either end, or the whole pages between. */
interface Piece {
  buf: Buffer;
  pos: number;
  span: Span;
}

/**
 * Buffered, one write at a time: parallel buffered writes to one file contend on its inode lock (the kernel
 * time of a 2 GiB restore more than doubled); with O_DIRECT two (the device takes both). Writes queued
 * meanwhile go out together, in file order: writes that continue each other in the file and in memory (the
 * blobs of one run, laid out in file order) as one span, and neighbouring spans as one pwritev of up to
 * MERGE_BYTES (a run's blobs sit in pack order, which the workers of the backup shuffled; sorted, they mostly
 * continue each other). With an O_DIRECT handle, a span whose memory sits at its file position modulo 4 KiB
 * in an aligned arena has its whole pages written with O_DIRECT, its partial pages at either end buffered.
 * 1 MiB O_DIRECT writes one at a time ran at ~1.1-1.4 GB/s during a restore here. Every byte is written once
 * (the caller's promise), so no buffered write touches a page written with O_DIRECT, and the order of writes
 * does not matter.
 */
export class PositionalWriter {
  bytesWritten = 0;
  /** of bytesWritten, those written with O_DIRECT (0 where the filesystem refuses it) */
  bytesDirect = 0;
  /** write calls made */
  writes = 0;
  private readonly h: fsp.FileHandle;
  private d: fsp.FileHandle | undefined;
  private readonly onWritten: (() => void) | undefined;
  private readonly queue: QueuedWrite[] = [];
  private pumping = false;
  private failed: unknown;

  /**
   * `h`: the file; `direct`: the same file opened with O_DIRECT, for the whole pages of aligned buffers
   * (dropped at the first EINVAL); `onWritten`: called after each group of writes.
   */
  constructor(h: fsp.FileHandle, direct?: fsp.FileHandle, onWritten?: () => void) {
    this.h = h;
    this.d = direct;
    this.onWritten = onWritten;
  }

  /**
   * Queues `buf` to be written at `pos`; resolves once written (the buffer must stay as it is until then).
   * Not async, and progress once per group written: a restore of small chunks queues ~100k writes a second,
   * and what each allocates (promises, frames, progress objects) became old-space garbage that grew the heap.
   * After a failure every write fails with it: the restore is unwinding and the buffers go back.
   */
  write(buf: Buffer, pos: number): Promise<void> {
    return new Promise<void>((done, fail) => {
      this.queue.push({ buf, pos, done, fail });
      // Started from a microtask: the other blobs of the run are queued in the same tick and get merged.
      if (!this.pumping) {
        this.pumping = true;
        queueMicrotask(() => void this.pump());
      }
    });
  }

  /** Whether writes still go with O_DIRECT where they can (not after the filesystem refused one). */
  get direct(): boolean {
    return this.d !== undefined;
  }

  private goesDirect(p: Piece): boolean {
    return this.d !== undefined && p.pos % DIRECT_ALIGN === 0 && directWritable(p.buf);
  }

  /** The queued writes (sorted by position) as spans, each cut into the pieces it is written in. */
  private pieces(batch: QueuedWrite[]): Piece[] {
    const pieces: Piece[] = [];
    for (let i = 0; i < batch.length;) {
      const first = batch[i]!;
      let end = first.pos + first.buf.length;
      let memEnd = first.buf.byteOffset + first.buf.length;
      let j = i + 1;
      for (; j < batch.length; j++) {
        const w = batch[j]!;
        if (w.pos !== end || w.buf.buffer !== first.buf.buffer || w.buf.byteOffset !== memEnd) break;
        end += w.buf.length;
        memEnd += w.buf.length;
      }
      const parts = batch.slice(i, j);
      const buf =
        parts.length === 1 ? first.buf : Buffer.from(first.buf.buffer, first.buf.byteOffset, end - first.pos);
      const span: Span = { buf, pos: first.pos, parts, left: 0, failed: false };
      // Whole pages apart from the partial ones at the ends, where memory and file agree modulo 4 KiB.
      const head = Math.min(end, Math.ceil(first.pos / DIRECT_ALIGN) * DIRECT_ALIGN);
      const tail = Math.max(head, Math.floor(end / DIRECT_ALIGN) * DIRECT_ALIGN);
      const cut =
        this.d !== undefined &&
        tail > head &&
        (buf.byteOffset + head - first.pos) % DIRECT_ALIGN === 0 &&
        directWritable(buf.subarray(head - first.pos, tail - first.pos));
      const bounds = cut ? [first.pos, head, tail, end] : [first.pos, end];
      for (let k = 0; k + 1 < bounds.length; k++) {
        const a = bounds[k]!;
        const b = bounds[k + 1]!;
        if (b > a) {
          pieces.push({ buf: buf.subarray(a - first.pos, b - first.pos), pos: a, span });
          span.left++;
        }
      }
      i = j;
    }
    return pieces;
  }

  private async pump(): Promise<void> {
    const inflight = new Set<Promise<void>>();
    while (this.queue.length > 0 || inflight.size > 0) {
      if (this.queue.length === 0) {
        await Promise.race(inflight);
        continue;
      }
      // Everything queued, in file order, cut into groups that continue each other in the file and agree on
      // O_DIRECT.
      const batch = this.pieces(this.queue.splice(0, this.queue.length).sort((a, b) => a.pos - b.pos));
      for (let i = 0; i < batch.length;) {
        const group = [batch[i]!];
        let len = group[0]!.buf.length;
        const isDirect = this.goesDirect(group[0]!);
        for (i++; i < batch.length; i++) {
          const next = batch[i]!;
          const last = group[group.length - 1]!;
          if (
            next.pos !== last.pos + last.buf.length ||
            len + next.buf.length > MERGE_BYTES ||
            group.length >= MERGE_PARTS ||
            this.goesDirect(next) !== isDirect
          )
            break;
          group.push(next);
          len += next.buf.length;
        }
        while (inflight.size >= (this.d !== undefined ? DIRECT_WRITERS : 1)) await Promise.race(inflight);
        const p: Promise<void> = this.writeQueued(group).finally(() => inflight.delete(p));
        inflight.add(p);
      }
    }
    this.pumping = false;
  }

  private async writeQueued(group: Piece[]): Promise<void> {
    try {
      if (this.failed !== undefined) throw this.failed;
      await this.writeGroup(group);
      for (const p of group) {
        this.bytesWritten += p.buf.length;
        if (--p.span.left === 0 && !p.span.failed) for (const w of p.span.parts) w.done();
      }
      this.onWritten?.();
    } catch (err) {
      this.failed ??= err;
      for (const { span } of group) {
        if (span.failed) continue;
        span.failed = true;
        for (const w of span.parts) w.fail(err);
      }
    }
  }

  /** Neighbours in the file as one pwritev (O_DIRECT or buffered alike); a short write is finished piecewise. */
  private async writeGroup(group: Piece[]): Promise<void> {
    const first = group[0]!;
    if (group.length === 1) return this.writeOut(first.buf, first.pos);
    const out = this.d !== undefined && this.goesDirect(first) ? this.d : this.h;
    let written = 0;
    try {
      this.writes++;
      ({ bytesWritten: written } = await out.writev(
        group.map((w) => w.buf),
        first.pos,
      ));
    } catch (err) {
      if (out === this.h || (err as { code?: string }).code !== 'EINVAL') throw err;
      this.d = undefined;
    }
    if (out !== this.h) this.bytesDirect += written;
    for (const w of group) {
      const done = Math.min(w.buf.length, Math.max(0, written - (w.pos - first.pos)));
      if (done < w.buf.length) await this.writeOut(w.buf.subarray(done), w.pos + done);
    }
  }

  private async writeOut(buf: Buffer, pos: number): Promise<void> {
    let out = this.d && pos % DIRECT_ALIGN === 0 && directWritable(buf) ? this.d : this.h;
    let off = 0;
    while (off < buf.length) {
      let bytesWritten: number;
      try {
        this.writes++;
        ({ bytesWritten } = await out.write(buf, off, buf.length - off, pos + off));
      } catch (err) {
        // A filesystem may take O_DIRECT at open and refuse the I/O (alignment): buffered from then on.
        if (out === this.h || (err as { code?: string }).code !== 'EINVAL') throw err;
        this.d = undefined;
        out = this.h;
        continue;
      }
      if (bytesWritten === 0)
        throw new Error(`write of ${buf.length - off} bytes at ${pos + off} wrote nothing`);
      off += bytesWritten;
      if (out !== this.h) this.bytesDirect += bytesWritten;
    }
  }
}

/** `file` opened for writing with O_DIRECT, or undefined when the filesystem (or platform) does not allow it. */
export async function openDirect(file: string): Promise<fsp.FileHandle | undefined> {
  const flag = fs.constants.O_DIRECT;
  if (flag === undefined || process.env.TERN_NO_DIRECT_IO === '1') return undefined;
  try {
    return await fsp.open(file, fs.constants.O_WRONLY | flag);
  } catch {
    return undefined;
  }
}
