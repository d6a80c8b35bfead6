/**
 * Whole small files written synchronously, where their bytes are: in a crypto worker right after their blob
 * is decrypted (Repository.writeFiles, worker.ts), or in the main thread for readers without workers.
 *
 * A file is a handful of system calls: create (exclusively), write (skipping all-zero blocks), truncate to its
 * size, owner, mode when creation could not set it, times, close, and a rename into place when it was made
 * under a temporary name. Done from the main thread with promises, each call was a round trip through
 * libuv's pool; 100 000 files made the main thread the bottleneck of a tree restore.
 */
import fsSync from 'node:fs';
import type { FileFailure, FileJob } from './api.ts';
import { isAllZero } from './tree/zero.ts';

/** Granularity of zero runs that are skipped instead of written. */
const SPARSE_BLOCK = 64 * 1024;

/** Permission bits the process's umask takes away from a file's creation mode (read once). */
const UMASK = process.umask();

/**
 * The stretches of `data` to write, as [start, end) pairs: all but whole SPARSE_BLOCKs of zeros, which are
 * left as holes (the file is sized with ftruncate, so they read as zeros).
 */
export function dataRuns(data: Uint8Array): [number, number][] {
  const runs: [number, number][] = [];
  let runStart = -1;
  for (let o = 0; o < data.length; o += SPARSE_BLOCK) {
    const end = Math.min(o + SPARSE_BLOCK, data.length);
    const zero = end - o === SPARSE_BLOCK && isAllZero(data, o, end);
    if (!zero && runStart < 0) runStart = o;
    else if (zero && runStart >= 0) {
      runs.push([runStart, o]);
      runStart = -1;
    }
  }
  if (runStart >= 0) runs.push([runStart, data.length]);
  return runs;
}

/** Writes `data` from offset 0, skipping all-zero blocks; returns the end of the last byte written. */
function writeSparseSync(fd: number, data: Uint8Array): number {
  let written = 0;
  for (const [from, to] of dataRuns(data)) {
    let done = from;
    while (done < to) done += fsSync.writeSync(fd, data, done, to - done, done);
    written = to;
  }
  return written;
}

/**
 * Creates one file with `data` (undefined: all zeros, i.e. a hole of `job.size`). A file made under its final
 * name (inside a directory nobody else can enter yet) is created with its permission bits; a temporary name
 * starts at 0600 and gets them only once complete. On failure the new file is removed and the error rethrown;
 * 'SIZE' when `data` is not `job.size` bytes.
 */
function writeFileJobSync(job: FileJob, data: Uint8Array | undefined): void {
  const shown = job.renameTo ?? job.path;
  if (data && data.length !== job.size)
    throw Object.assign(
      new Error(`chunks of ${shown} do not add up to its recorded size ${job.size} (${data.length} bytes)`),
      { code: 'SIZE' },
    );
  const perm = job.mode & 0o777;
  const createMode = job.renameTo ? 0o600 : perm;
  // chown clears set-id bits, and umask may have taken bits away: then the mode is set explicitly.
  const chmod = createMode !== perm || (perm & UMASK) !== 0 || (job.mode & 0o7000) !== 0;
  let fd: number | undefined;
  try {
    fd = fsSync.openSync(job.path, 'wx', createMode);
    const end = data ? writeSparseSync(fd, data) : 0;
    if (end < job.size) fsSync.ftruncateSync(fd, job.size);
    if (job.uid >= 0) fsSync.fchownSync(fd, job.uid, job.gid);
    if (chmod) fsSync.fchmodSync(fd, job.mode);
    fsSync.futimesSync(fd, job.time, job.time);
    fsSync.closeSync(fd);
    fd = undefined;
    if (job.renameTo) fsSync.renameSync(job.path, job.renameTo);
  } catch (err) {
    if (fd !== undefined) fsSync.closeSync(fd);
    fsSync.rmSync(job.path, { force: true });
    throw err;
  }
}

/** `writeFileJobSync`, its error returned as it crosses threads instead of thrown; null when written. */
export function tryWriteFileJob(job: FileJob, data: Uint8Array | undefined): FileFailure | null {
  try {
    writeFileJobSync(job, data);
    return null;
  } catch (err) {
    const e = err as Error & { code?: unknown };
    return { code: typeof e.code === 'string' ? e.code : 'EIO', message: e.message };
  }
}

/**
 * File jobs of one worker message: numbers in one Float64Array, paths in one string (structured cloning
 * costs ~2 µs per object, a typed array or a string is one copy). `blob` is the index of the file's blob in
 * its run; jobs come in blob order.
 */
export interface PackedJobs {
  nums: Float64Array;
  paths: string;
}
const JOB_NUMS = 6;

export function packJobs(jobs: { blob: number; job: FileJob }[]): PackedJobs {
  const nums = new Float64Array(JOB_NUMS * jobs.length);
  const paths: string[] = [];
  jobs.forEach(({ blob, job }, i) => {
    nums.set([blob, job.mode, job.uid, job.gid, job.time, job.size], JOB_NUMS * i);
    paths.push(job.path, job.renameTo ?? '');
  });
  return { nums, paths: paths.join('\0') };
}

export function unpackJobs(p: PackedJobs): { blob: number; job: FileJob }[] {
  const paths = p.paths.split('\0');
  const out: { blob: number; job: FileJob }[] = [];
  for (let i = 0; i < p.nums.length / JOB_NUMS; i++) {
    const n = p.nums.subarray(JOB_NUMS * i, JOB_NUMS * i + JOB_NUMS);
    const renameTo = paths[2 * i + 1];
    out.push({
      blob: n[0]!,
      job: {
        path: paths[2 * i]!,
        ...(renameTo ? { renameTo } : {}),
        mode: n[1]!,
        uid: n[2]!,
        gid: n[3]!,
        time: n[4]!,
        size: n[5]!,
      },
    });
  }
  return out;
}

/**
 * Reads the file at `path` from its start into `buf` until the end of the file or of `buf`, synchronously
 * (in a crypto worker, for `saveFile`); returns the bytes read. Throws what open or read threw.
 */
export function readWholeSync(path: string, flags: number, buf: Uint8Array): number {
  const fd = fsSync.openSync(path, flags);
  try {
    let total = 0;
    while (total < buf.length) {
      const n = fsSync.readSync(fd, buf, total, buf.length - total, null);
      if (n === 0) break;
      total += n;
    }
    return total;
  } finally {
    fsSync.closeSync(fd);
  }
}
