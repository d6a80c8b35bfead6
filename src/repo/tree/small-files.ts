/**
 * Small files of a tree restore, written by worker threads.
 *
 * Each file is a handful of system calls (create a temporary name, write, size check, owner, mode, times,
 * close, rename into place). Done from the main thread, the create and the rename each took a round trip
 * through libuv's pool and every file cost promises, wake-ups and JavaScript: for 100 000 files the main thread
 * was the bottleneck. Here the whole sequence runs synchronously in a few worker threads, a batch of files per
 * message; the contents of files restored from a repository's shared arena are read in place, not copied.
 */
import fsSync from 'node:fs';
import os from 'node:os';
import { Worker } from 'node:worker_threads';
import { isAllZero } from './zero.ts';

/** Granularity of zero runs that are skipped instead of written. */
export const SPARSE_BLOCK = 64 * 1024;

export interface SmallFileJob {
  /** temporary name in the final directory, renamed to `abs` when complete */
  tmp: string;
  abs: string;
  mode: number;
  /** owner to set, or -1 to leave it (not root) */
  uid: number;
  gid: number;
  /** mtime (and atime) in seconds, as `utimes` takes it */
  time: number;
  size: number;
  data?: Uint8Array;
}

/** Why a job failed: an errno code (ENOSPC, EACCES ...) or 'SIZE' when the written file has the wrong size. */
export interface SmallFileFailure {
  code: string;
  message: string;
}

/** Writes `data` from offset 0, skipping all-zero blocks; returns the end of the last byte written. */
export function writeSparseSync(fd: number, data: Uint8Array): number {
  let runStart = -1;
  let written = 0;
  const flush = (from: number, to: number): void => {
    let done = from;
    while (done < to) done += fsSync.writeSync(fd, data, done, to - done, done);
    written = to;
  };
  for (let o = 0; o < data.length; o += SPARSE_BLOCK) {
    const end = Math.min(o + SPARSE_BLOCK, data.length);
    const zero = end - o === SPARSE_BLOCK && isAllZero(data, o, end);
    if (!zero && runStart < 0) runStart = o;
    else if (zero && runStart >= 0) {
      flush(runStart, o);
      runStart = -1;
    }
  }
  if (runStart >= 0) flush(runStart, data.length);
  return written;
}

/** One small file, synchronously; on failure the temporary file is removed and the error rethrown. */
export function writeSmallFileSync(job: SmallFileJob): void {
  let fd: number | undefined;
  try {
    fd = fsSync.openSync(job.tmp, 'wx', 0o600);
    const end = job.data ? writeSparseSync(fd, job.data) : 0;
    if (end < job.size) fsSync.ftruncateSync(fd, job.size);
    const st = fsSync.fstatSync(fd);
    if (st.size !== job.size)
      throw Object.assign(new Error(`restored ${job.abs} has ${st.size} bytes, expected ${job.size}`), {
        code: 'SIZE',
      });
    if (job.uid >= 0 && (st.uid !== job.uid || st.gid !== job.gid)) fsSync.fchownSync(fd, job.uid, job.gid);
    fsSync.fchmodSync(fd, job.mode);
    fsSync.futimesSync(fd, job.time, job.time);
    fsSync.closeSync(fd);
    fd = undefined;
    fsSync.renameSync(job.tmp, job.abs);
  } catch (err) {
    if (fd !== undefined) fsSync.closeSync(fd);
    fsSync.rmSync(job.tmp, { force: true });
    throw err;
  }
}

interface Pending {
  job: SmallFileJob;
  resolve: () => void;
  reject: (f: SmallFileFailure) => void;
}

/** Jobs per message at most (a batch is what one event-loop turn queued). */
const BATCH = 512;

/**
 * Worker threads that write small files. `write` queues a job; jobs queued in the same turn of the event loop
 * go to one worker as one message. Workers start on first use and are ended by `close`.
 */
export class SmallFileWriter {
  private readonly size: number;
  private workers: { worker: Worker; busy: number }[] = [];
  private queue: Pending[] = [];
  private scheduled = false;
  private seq = 0;
  private readonly inFlight = new Map<number, { batch: Pending[]; slot: { worker: Worker; busy: number } }>();

  constructor(size = Math.max(1, Math.min(2, os.availableParallelism()))) {
    this.size = size;
  }

  write(job: SmallFileJob): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.queue.push({ job, resolve, reject });
      if (!this.scheduled) {
        this.scheduled = true;
        queueMicrotask(() => this.flush());
      }
    });
  }

  private start(): void {
    for (let i = 0; i < this.size; i++) {
      const worker = new Worker(new URL('./small-files-worker.ts', import.meta.url));
      const slot = { worker, busy: 0 };
      worker.on('message', (m: { seq: number; failures: (SmallFileFailure | null)[] }) => {
        const f = this.inFlight.get(m.seq);
        if (!f) return;
        this.inFlight.delete(m.seq);
        f.slot.busy--;
        f.batch.forEach((p, k) => {
          const failure = m.failures[k];
          if (failure) p.reject(failure);
          else p.resolve();
        });
      });
      const failAll = (message: string): void => {
        for (const [seq, f] of this.inFlight)
          if (f.slot === slot) {
            this.inFlight.delete(seq);
            for (const p of f.batch) p.reject({ code: 'EWORKER', message });
          }
      };
      worker.on('error', (err) => failAll(`file writer failed: ${err.message}`));
      worker.on('exit', (code) => failAll(`file writer exited (${code}) with work in flight`));
      this.workers.push(slot);
    }
  }

  private flush(): void {
    this.scheduled = false;
    if (this.workers.length === 0) this.start();
    while (this.queue.length > 0) {
      const batch = this.queue.splice(0, BATCH);
      let slot = this.workers[0]!;
      for (const s of this.workers) if (s.busy < slot.busy) slot = s;
      const seq = ++this.seq;
      this.inFlight.set(seq, { batch, slot });
      slot.busy++;
      // Contents on a shared buffer (the repository's arena) travel as a view of it; others are copied out of
      // their (possibly much larger) buffer, which structured cloning would otherwise copy whole.
      const jobs = batch.map(({ job }) =>
        job.data && !(job.data.buffer instanceof SharedArrayBuffer)
          ? { ...job, data: Uint8Array.prototype.slice.call(job.data) } // a copy (Buffer.slice is a view)
          : job,
      );
      slot.worker.postMessage({ seq, jobs });
    }
  }

  async close(): Promise<void> {
    const ws = this.workers;
    this.workers = [];
    await Promise.all(ws.map((s) => s.worker.terminate()));
  }
}
