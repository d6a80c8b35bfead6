/**
 * Worker thread: hash + compress + encrypt (save) and decrypt + decompress (+ verify) of blobs; for tree
 * restores also the writing of whole small files from the blobs just decrypted (files.ts).
 */
import { parentPort } from 'node:worker_threads';
import crypto from 'node:crypto';
import v8 from 'node:v8';
import vm from 'node:vm';
import { IntegrityError } from '../core/errors.ts';
import {
  blobAad,
  blobIdOf,
  COMP_NONE,
  COMP_ZSTD,
  IdHasher,
  maybeCompress,
  NONCE_LEN,
  openBlob,
  openInto,
  seal,
  TAG_LEN,
  ZstdInto,
} from './crypto.ts';
import type { FileFailure } from './api.ts';
import { readWholeSync, tryWriteFileJob, unpackJobs } from './files.ts';
import {
  FILE_META,
  ownArrayBuffer,
  RUN_META,
  SAVED_BLOB,
  SAVED_EMPTY,
  SAVED_ERROR,
  SAVED_GREW,
  SAVED_ZERO,
  type WorkerRequest,
  type WorkerResponse,
} from './pool.ts';
import { isAllZero } from './tree/zero.ts';

let encKey: crypto.KeyObject | undefined;
let idKey: IdHasher | undefined;
const zstd = new ZstdInto();
/** Compressed blobs are opened into this (grown as needed, kept): no new buffer per blob. */
let scratch = Buffer.allocUnsafeSlow(0);
/** Plaintexts of runs whose files this worker writes (grown as needed, kept). */
let fileOut = Buffer.allocUnsafeSlow(0);
/** Small files this worker reads for a backup (saveFiles; grown as needed, kept). */
let fileIn = Buffer.allocUnsafeSlow(0);

function handle(req: WorkerRequest): { res: WorkerResponse; transfer: ArrayBuffer[] } {
  if (req.op === 'keys') {
    encKey = crypto.createSecretKey(req.encKey);
    idKey = new IdHasher(req.idKey);
    return { res: { seq: req.seq, ok: true }, transfer: [] };
  }
  if (!encKey || !idKey) throw new Error('worker has no keys');
  if (req.op === 'save') {
    const plain = new Uint8Array(req.buf, 0, req.length);
    const id = blobIdOf(idKey, plain);
    if (req.hashOnly) {
      return { res: { seq: req.seq, ok: true, id: id.toString('hex'), buf: req.buf }, transfer: [req.buf] };
    }
    const { data, comp } = maybeCompress(plain);
    const into = req.out ? Buffer.from(req.out) : undefined;
    const sb = seal(encKey, data, blobAad(id, req.type, comp), into);
    const sealed = into && sb.buffer === req.out ? req.out : ownArrayBuffer(sb);
    // The plaintext buffer goes back too, so the caller can reuse it for its next read.
    return {
      res: {
        seq: req.seq,
        ok: true,
        id: id.toString('hex'),
        sealed,
        sealedLength: sb.length,
        comp,
        rawLength: req.length,
        buf: req.buf,
      },
      transfer: req.out && sealed !== req.out ? [sealed, req.buf, req.out] : [sealed, req.buf],
    };
  }
  if (req.op === 'saveMany') {
    const n = req.meta.length / 3;
    const ids = new Uint8Array(32 * n);
    const meta = new Uint32Array(2 * n);
    let need = 0;
    for (let i = 0; i < n; i++) need += req.meta[3 * i + 2]! + NONCE_LEN + TAG_LEN;
    const out = req.out && req.out.byteLength >= need ? Buffer.from(req.out) : Buffer.allocUnsafeSlow(need);
    let pos = 0;
    for (let i = 0; i < n; i++) {
      const plain = new Uint8Array(req.buf, req.meta[3 * i + 1], req.meta[3 * i + 2]);
      const id = blobIdOf(idKey, plain);
      const { data, comp } = maybeCompress(plain);
      const sealed = seal(encKey, data, blobAad(id, req.meta[3 * i]!, comp), out.subarray(pos));
      ids.set(id, 32 * i);
      meta[2 * i] = comp;
      meta[2 * i + 1] = sealed.length;
      pos += sealed.length;
    }
    const sealed = req.out && out.buffer === req.out ? req.out : ownArrayBuffer(out);
    return {
      res: { seq: req.seq, ok: true, ids, meta, sealed, buf: req.buf },
      transfer: [sealed, req.buf],
    };
  }
  if (req.op === 'saveFiles') {
    // Small files of a tree backup, read here instead of on the main thread: one blob each.
    const paths = req.paths.split('\0');
    const n = req.files.length / 2;
    const ids = new Uint8Array(32 * n);
    const meta = new Float64Array(FILE_META * n);
    const codes: (string | null)[] = [];
    let need = 0;
    let largest = 0;
    for (let i = 0; i < n; i++) {
      const size = req.files[2 * i]!;
      need += size + NONCE_LEN + TAG_LEN;
      largest = Math.max(largest, size);
    }
    const out = req.out && req.out.byteLength >= need ? Buffer.from(req.out) : Buffer.allocUnsafeSlow(need);
    // One byte more than expected: a file that grew is noticed.
    if (fileIn.length < largest + 1)
      fileIn = Buffer.allocUnsafeSlow(Math.max(largest + 1, 2 * fileIn.length));
    let pos = 0;
    for (let i = 0; i < n; i++) {
      const expected = req.files[2 * i]!;
      const m = meta.subarray(FILE_META * i, FILE_META * i + FILE_META);
      let got: number;
      try {
        got = readWholeSync(paths[i]!, req.files[2 * i + 1]!, fileIn.subarray(0, expected + 1));
      } catch (err) {
        m[0] = SAVED_ERROR;
        codes[i] = (err as NodeJS.ErrnoException).code ?? String(err);
        continue;
      }
      m[1] = got;
      if (got > expected) m[0] = SAVED_GREW;
      else if (got === 0) m[0] = SAVED_EMPTY;
      else if (got >= req.minZero && isAllZero(fileIn, 0, got)) m[0] = SAVED_ZERO;
      else {
        const plain = fileIn.subarray(0, got);
        const id = blobIdOf(idKey, plain);
        const { data, comp } = maybeCompress(plain);
        const sealed = seal(encKey, data, blobAad(id, req.type, comp), out.subarray(pos));
        ids.set(id, 32 * i);
        m[0] = SAVED_BLOB;
        m[2] = comp;
        m[3] = sealed.length;
        pos += sealed.length;
      }
    }
    const sealed = req.out && out.buffer === req.out ? req.out : ownArrayBuffer(out);
    return {
      res: { seq: req.seq, ok: true, ids, fileMeta: meta, codes, sealed },
      transfer: [sealed],
    };
  }
  if (req.op === 'loadRun') {
    // Adjacent blobs of one pack, read in one go: each plaintext goes to its offset in the output (meta).
    const m = req.meta;
    const n = m.length / RUN_META;
    let total = 0;
    for (let i = 0; i < n; i++) total = Math.max(total, m[i * RUN_META + 5]! + m[i * RUN_META + 2]!);
    // Files to write from these blobs: the plaintexts go to this worker's own buffer and stay here.
    const jobs = req.files ? unpackJobs(req.files) : undefined;
    const failures: (FileFailure | null)[] = [];
    let nextJob = 0;
    if (jobs && fileOut.length < total) fileOut = Buffer.allocUnsafeSlow(Math.max(total, 2 * fileOut.length));
    const out = jobs
      ? fileOut
      : req.shared
        ? Buffer.from(req.shared, req.sharedOffset ?? 0, total)
        : req.out && req.out.byteLength >= total
          ? Buffer.from(req.out)
          : Buffer.allocUnsafeSlow(total);
    for (let i = 0; i < n; i++) {
      const k = i * RUN_META;
      const pos = m[k + 5]!;
      const type = m[k]!;
      const comp = m[k + 1]!;
      const rawLength = m[k + 2]!;
      const length = m[k + 4]!;
      const id = req.ids.subarray(32 * i, 32 * i + 32);
      const sealed = new Uint8Array(req.buf, (req.bufOffset ?? 0) + m[k + 3]!, length);
      if (comp === COMP_NONE && length - NONCE_LEN - TAG_LEN === rawLength) {
        // Uncompressed: decrypt straight into the output.
        openInto(encKey, sealed, blobAad(id, type, comp), req.what, out, pos);
        const plain = out.subarray(pos, pos + rawLength);
        if (req.verify && !crypto.timingSafeEqual(blobIdOf(idKey, plain), id))
          throw new IntegrityError(
            `${req.what}: blob ${Buffer.from(id).toString('hex').slice(0, 16)} content does not match its id`,
          );
      } else if (comp === COMP_ZSTD && length >= NONCE_LEN + TAG_LEN) {
        // Compressed: open into the scratch buffer, decompress straight into the output.
        const body = length - NONCE_LEN - TAG_LEN;
        if (scratch.length < body) scratch = Buffer.allocUnsafeSlow(Math.max(body, 2 * scratch.length));
        openInto(encKey, sealed, blobAad(id, type, comp), req.what, scratch, 0);
        zstd.decompressInto(scratch.subarray(0, body), out, pos, rawLength, req.what);
        if (req.verify && !crypto.timingSafeEqual(blobIdOf(idKey, out.subarray(pos, pos + rawLength)), id))
          throw new IntegrityError(
            `${req.what}: blob ${Buffer.from(id).toString('hex').slice(0, 16)} content does not match its id`,
          );
      } else {
        const plain = openBlob(
          encKey,
          idKey,
          { id, type, comp, rawLength, what: req.what, verify: req.verify },
          sealed,
        );
        plain.copy(out, pos);
      }
      for (; jobs && nextJob < jobs.length && jobs[nextJob]!.blob === i; nextJob++) {
        failures.push(tryWriteFileJob(jobs[nextJob]!.job, out.subarray(pos, pos + rawLength)));
      }
    }
    // A transferred read buffer goes back for reuse; a shared one stays where it is.
    const back = req.buf instanceof ArrayBuffer ? req.buf : undefined;
    const ret = back ? [back] : [];
    if (jobs) return { res: { seq: req.seq, ok: true, buf: back, failures }, transfer: ret };
    if (req.shared) return { res: { seq: req.seq, ok: true, buf: back }, transfer: ret };
    const ab = req.out && out.buffer === req.out ? req.out : ownArrayBuffer(out);
    return { res: { seq: req.seq, ok: true, plain: ab, buf: back }, transfer: [ab, ...ret] };
  }
  // load
  const plain = openBlob(
    encKey,
    idKey,
    { ...req, id: Buffer.from(req.id, 'hex') },
    new Uint8Array(req.buf, 0, req.length),
  );
  const ab = ownArrayBuffer(plain);
  return { res: { seq: req.seq, ok: true, plain: ab }, transfer: [ab] };
}

/**
 * A young-generation collection after every GC_EVERY bytes of blobs: sealing allocates a new buffer per 128 KiB
 * slice (node:crypto has no update-into), which V8 collects only when a worker's external memory has grown by
 * ~64 MB or more. Each worker held 60-110 MiB of such garbage during a 2 GiB backup. A minor collection of a
 * worker's small heap takes well under a millisecond.
 */
const GC_EVERY = 32 * 1024 * 1024;
let sinceGc = 0;
const collect = ((): ((opts: { type: 'minor' }) => void) | undefined => {
  try {
    v8.setFlagsFromString('--expose-gc');
    return vm.runInNewContext('gc') as (opts: { type: 'minor' }) => void;
  } catch {
    return undefined;
  }
})();

parentPort?.on('message', (req: WorkerRequest) => {
  if ('buf' in req && req.buf) sinceGc += req.buf.byteLength;
  if (sinceGc >= GC_EVERY) {
    sinceGc = 0;
    collect?.({ type: 'minor' });
  }
  try {
    const { res, transfer } = handle(req);
    parentPort?.postMessage(res, transfer);
  } catch (err) {
    const e = err as Error & { code?: string };
    parentPort?.postMessage({
      seq: req.seq,
      ok: false,
      error: e.message,
      integrity: e instanceof IntegrityError,
    } satisfies WorkerResponse);
  }
});
