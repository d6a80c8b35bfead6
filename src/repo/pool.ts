/** A small pool of worker threads for blob crypto; ArrayBuffers are transferred, never copied. */
import { Worker } from 'node:worker_threads';
import module from 'node:module';
import os from 'node:os';
import { IntegrityError, StorageError } from '../core/errors.ts';
import type { FileFailure } from './api.ts';
import type { MasterKey } from './crypto.ts';
import type { PackedJobs } from './files.ts';

export type WorkerRequest =
  | { op: 'keys'; seq: number; encKey: Uint8Array; idKey: Uint8Array }
  | {
      op: 'save';
      seq: number;
      type: number;
      buf: ArrayBuffer;
      length: number;
      hashOnly: boolean;
      /** a recycled buffer for the sealed blob (used when large enough; `sealedLength` says how much) */
      out?: ArrayBuffer;
    }
  | {
      op: 'load';
      seq: number;
      id: string;
      type: number;
      comp: number;
      rawLength: number;
      buf: ArrayBuffer;
      length: number;
      what: string;
      verify: boolean;
    }
  | {
      op: 'saveMany';
      seq: number;
      /** the plaintexts; `meta` holds (type, offset, length) per blob */
      buf: ArrayBuffer;
      meta: Uint32Array;
      /** a recycled buffer for the sealed blobs (used when large enough) */
      out?: ArrayBuffer;
    }
  | {
      op: 'saveFiles';
      seq: number;
      type: number;
      /** the files' paths joined with NUL; per file its expected size and the flags to open it with */
      paths: string;
      files: Float64Array;
      /** smaller all-zero files are saved as blobs; from this size on they are reported as zero */
      minZero: number;
      /** a recycled buffer for the sealed blobs (used when large enough) */
      out?: ArrayBuffer;
    }
  | {
      op: 'loadRun';
      seq: number;
      /**
       * sealed blobs of one pack region, from `bufOffset` (transferred when an ArrayBuffer, read in place when
       * shared); `ids` (32 bytes each) and `meta` (RUN_META numbers each) describe them
       */
      buf: ArrayBuffer | SharedArrayBuffer;
      bufOffset?: number;
      ids: Uint8Array;
      meta: Uint32Array;
      /** where to put the plaintexts when it is large enough (returned as `plain`) */
      out?: ArrayBuffer;
      /** or: shared memory to write the plaintexts into, at `sharedOffset` (nothing is returned) */
      shared?: SharedArrayBuffer;
      sharedOffset?: number;
      /** or: files to write from the blobs (Repository.writeFiles); nothing but `failures` is returned */
      files?: PackedJobs;
      what: string;
      verify: boolean;
    };

/**
 * Per blob of a `loadRun`, in `meta`: type, compression, plaintext length, offset and sealed length in the
 * run buffer, offset of its plaintext in the output. Typed arrays, not objects: structured cloning costs ~2 µs
 * per object, a typed array is a copy.
 */
export const RUN_META = 6;

/** saveFiles, per file in `fileMeta`: status (SAVED_*), size found, compression, sealed length. */
export const FILE_META = 4;
export const SAVED_BLOB = 0;
export const SAVED_ZERO = 1;
export const SAVED_EMPTY = 2;
export const SAVED_GREW = 3;
export const SAVED_ERROR = 4;

export type WorkerResponse =
  | {
      seq: number;
      ok: true;
      id?: string;
      buf?: ArrayBuffer;
      sealed?: ArrayBuffer;
      comp?: number;
      rawLength?: number;
      plain?: ArrayBuffer;
      sealedLength?: number;
      /** saveMany: per blob in request order, ids (32 bytes each) and (comp, sealed length) in `meta`;
       * `sealed` holds the sealed blobs back to back. */
      ids?: Uint8Array;
      meta?: Uint32Array;
      /** loadRun with files: per file job, in request order, null when written */
      failures?: (FileFailure | null)[];
      /** saveFiles: FILE_META numbers per file (SAVED_* status, size found, compression, sealed length) */
      fileMeta?: Float64Array;
      /** saveFiles: the errno code of each file whose status is SAVED_ERROR */
      codes?: (string | null)[];
    }
  | { seq: number; ok: false; error: string; integrity: boolean };

export type Ok = Extract<WorkerResponse, { ok: true }>;

interface Slot {
  worker: Worker;
  busy: number;
}

/** An ArrayBuffer holding exactly `buf`'s bytes: the buffer's own when it owns all of it, else a copy. */
export function ownArrayBuffer(buf: Uint8Array): ArrayBuffer {
  if (buf.byteOffset === 0 && buf.buffer.byteLength === buf.length && buf.buffer instanceof ArrayBuffer)
    return buf.buffer;
  return buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.length) as ArrayBuffer;
}

export class CryptoPool {
  private readonly slots: Slot[] = [];
  private seq = 0;
  /** set by close(): workers stay referenced until they have exited */
  private closing = false;
  private readonly pending = new Map<
    number,
    { resolve: (r: Ok) => void; reject: (e: Error) => void; slot: Slot }
  >();

  /**
   * Workers start at once; `key` may come later (`setKey`): a repository being opened starts them while scrypt
   * derives the key, so their start-up (~50 ms) is off the critical path. Work sent before the key would fail.
   */
  constructor(key: MasterKey | undefined, size = Math.max(1, Math.min(4, os.availableParallelism()))) {
    for (let i = 0; i < size; i++) {
      const worker = new Worker(new URL('./worker-main.js', import.meta.url), {
        // The process's compile cache, for the worker's own modules (see worker-main.js).
        workerData: { compileCacheDir: module.getCompileCacheDir() },
        // A small young generation: the workers' short-lived output buffers are freed by frequent cheap
        // scavenges instead of piling up as external memory until a full GC (~100 MiB less peak RSS).
        resourceLimits: { maxYoungGenerationSizeMb: 4 },
      });
      const slot: Slot = { worker, busy: 0 };
      worker.on('message', (res: WorkerResponse) => {
        const p = this.pending.get(res.seq);
        if (!p) return;
        this.pending.delete(res.seq);
        p.slot.busy--;
        if (res.ok) p.resolve(res);
        else p.reject(res.integrity ? new IntegrityError(res.error) : new StorageError(res.error));
      });
      worker.on('exit', (code) => {
        for (const [seq, p] of this.pending) {
          if (p.slot === slot) {
            this.pending.delete(seq);
            p.reject(new StorageError(`crypto worker exited (${code}) with work in flight`));
          }
        }
      });
      worker.on('error', (err) => {
        for (const [seq, p] of this.pending) {
          if (p.slot === slot) {
            this.pending.delete(seq);
            p.reject(new StorageError('crypto worker failed', { cause: err }));
          }
        }
      });
      // Idle workers do not keep the process alive. After the listeners: adding a 'message' listener refs
      // the worker's port again.
      worker.unref();
      this.slots.push(slot);
    }
    if (key) this.setKey(key);
  }

  /** Hands the keys to every worker (messages arrive in order: before any work sent after this call). */
  setKey(key: MasterKey): void {
    for (const { worker } of this.slots)
      worker.postMessage({
        op: 'keys',
        seq: -1,
        encKey: new Uint8Array(key.encKey),
        idKey: new Uint8Array(key.idKey),
      });
  }

  get size(): number {
    return this.slots.length;
  }

  run(req: WorkerRequest, transfer: ArrayBuffer[]): Promise<Ok> {
    let best = this.slots[0]!;
    for (const s of this.slots) if (s.busy < best.busy) best = s;
    const seq = ++this.seq;
    const slot = best;
    slot.busy++;
    return new Promise<Ok>((resolve, reject) => {
      this.pending.set(seq, { resolve, reject, slot });
      slot.worker.ref();
      slot.worker.postMessage({ ...req, seq }, transfer);
    }).finally(() => {
      if (slot.busy === 0 && !this.closing) slot.worker.unref();
    });
  }

  async close(): Promise<void> {
    // terminate() resolves on the worker's 'exit' event, which an unreferenced worker does not wait for: a
    // reply arriving after terminate() (work in flight when a restore fails) unreferenced its worker, the
    // process ran out of events before 'exit' and ended with an unsettled top-level await (exit code 13).
    this.closing = true;
    for (const s of this.slots) s.worker.ref();
    await Promise.all(this.slots.map((s) => s.worker.terminate()));
    this.slots.length = 0;
    // Work still waiting on a terminated worker would never settle (and an awaiting caller would leave the
    // process with an unsettled top-level await): fail it instead.
    for (const [seq, p] of this.pending) {
      this.pending.delete(seq);
      p.reject(new StorageError('crypto pool closed while work was in flight'));
    }
  }
}
