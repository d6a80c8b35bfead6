/**
 * Positional writes into one file for restores, in any order, as blobs arrive (image restores and the large
 * files of tree restores): queued, sorted and merged with their neighbours into one pwritev, few at a time.
 */
import type fs from 'node:fs/promises';
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

/**
 * Buffered, one write at a time: parallel buffered writes to one file contend on its inode lock (the kernel
 * time of a 2 GiB restore more than doubled); with O_DIRECT two (the device takes both). Writes queued
 * meanwhile go out together: neighbours in the file as one pwritev of up to MERGE_BYTES (a run's blobs sit in
 * pack order, which the workers of the backup shuffled; sorted, they mostly continue each other). 1 MiB
 * O_DIRECT writes one at a time ran at ~1.1-1.4 GB/s during a restore here. Every byte is written once, so the
 * order of writes does not matter; an O_DIRECT write must cover whole 4 KiB pages that no buffered write
 * touches (the caller's promise when it gives a `direct` handle).
 */
export class PositionalWriter {
  bytesWritten = 0;
  /** of bytesWritten, those written with O_DIRECT (0 where the filesystem refuses it) */
  bytesDirect = 0;
  /** write calls made */
  writes = 0;
  private readonly h: fs.FileHandle;
  private d: fs.FileHandle | undefined;
  private readonly onWritten: (() => void) | undefined;
  private readonly queue: QueuedWrite[] = [];
  private pumping = false;
  private failed: unknown;

  /**
   * `h`: the file; `direct`: the same file opened with O_DIRECT, for aligned writes of aligned buffers (dropped
   * at the first EINVAL); `onWritten`: called after each group of writes.
   */
  constructor(h: fs.FileHandle, direct?: fs.FileHandle, onWritten?: () => void) {
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

  private goesDirect(w: QueuedWrite): boolean {
    return this.d !== undefined && w.pos % DIRECT_ALIGN === 0 && directWritable(w.buf);
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
      const batch = this.queue.splice(0, this.queue.length).sort((a, b) => a.pos - b.pos);
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

  private async writeQueued(group: QueuedWrite[]): Promise<void> {
    try {
      if (this.failed !== undefined) throw this.failed;
      await this.writeGroup(group);
      for (const w of group) {
        this.bytesWritten += w.buf.length;
        w.done();
      }
      this.onWritten?.();
    } catch (err) {
      this.failed ??= err;
      for (const w of group) w.fail(err);
    }
  }

  /** Neighbours in the file as one pwritev (O_DIRECT or buffered alike); a short write is finished piecewise. */
  private async writeGroup(group: QueuedWrite[]): Promise<void> {
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
