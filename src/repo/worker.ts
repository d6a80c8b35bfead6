/** Worker thread: hash + compress + encrypt (save) and decrypt + decompress (+ verify) of blobs. */
import { parentPort } from 'node:worker_threads';
import crypto from 'node:crypto';
import { IntegrityError } from '../core/errors.ts';
import {
  blobAad,
  blobIdOf,
  COMP_NONE,
  decompress,
  IdHasher,
  maybeCompress,
  NONCE_LEN,
  open,
  openInto,
  seal,
  TAG_LEN,
} from './crypto.ts';
import { ownArrayBuffer, type RunBlob, type WorkerRequest, type WorkerResponse } from './pool.ts';

let encKey: crypto.KeyObject | undefined;
let idKey: IdHasher | undefined;

/** Decrypt (and decompress) one blob; with `verify`, its keyed hash is recomputed and compared with its id. */
function openOne(
  req: { id: string; type: number; comp: number; rawLength: number; what: string; verify: boolean },
  sealed: Uint8Array,
): Buffer {
  const { what } = req;
  const idBuf = Buffer.from(req.id, 'hex');
  const plainComp = open(encKey!, sealed, blobAad(idBuf, req.type, req.comp), what);
  const plain = decompress(plainComp, req.comp, req.rawLength, what);
  if (plain.length !== req.rawLength)
    throw new IntegrityError(
      `${what}: blob ${req.id.slice(0, 16)} has ${plain.length} bytes, index says ${req.rawLength}`,
    );
  if (req.verify && !crypto.timingSafeEqual(blobIdOf(idKey!, plain), idBuf))
    throw new IntegrityError(`${what}: blob ${req.id.slice(0, 16)} content does not match its id`);
  return plain;
}

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
    const sealed = ownArrayBuffer(seal(encKey, data, blobAad(id, req.type, comp)));
    // The plaintext buffer goes back too, so the caller can reuse it for its next read.
    return {
      res: {
        seq: req.seq,
        ok: true,
        id: id.toString('hex'),
        sealed,
        comp,
        rawLength: req.length,
        buf: req.buf,
      },
      transfer: [sealed, req.buf],
    };
  }
  if (req.op === 'saveMany') {
    const ids: string[] = [];
    const comps: number[] = [];
    const lens: number[] = [];
    const parts: Buffer[] = [];
    for (const b of req.blobs) {
      const plain = new Uint8Array(req.buf, b.offset, b.length);
      const id = blobIdOf(idKey, plain);
      const { data, comp } = maybeCompress(plain);
      const sealed = seal(encKey, data, blobAad(id, b.type, comp));
      ids.push(id.toString('hex'));
      comps.push(comp);
      lens.push(sealed.length);
      parts.push(sealed);
    }
    const sealed = ownArrayBuffer(Buffer.concat(parts));
    return { res: { seq: req.seq, ok: true, ids, comps, lens, sealed }, transfer: [sealed] };
  }
  if (req.op === 'loadRun') {
    // Adjacent blobs of one pack, read in one go: plaintexts are concatenated in request order.
    let total = 0;
    for (const b of req.blobs) total += b.rawLength;
    const out = Buffer.allocUnsafeSlow(total);
    let pos = 0;
    for (const b of req.blobs as RunBlob[]) {
      const sealed = new Uint8Array(req.buf, b.offset, b.length);
      if (b.comp === COMP_NONE && b.length - NONCE_LEN - TAG_LEN === b.rawLength) {
        // Uncompressed: decrypt straight into the output.
        const idBuf = Buffer.from(b.id, 'hex');
        openInto(encKey, sealed, blobAad(idBuf, b.type, b.comp), req.what, out, pos);
        const plain = out.subarray(pos, pos + b.rawLength);
        if (req.verify && !crypto.timingSafeEqual(blobIdOf(idKey, plain), idBuf))
          throw new IntegrityError(`${req.what}: blob ${b.id.slice(0, 16)} content does not match its id`);
      } else {
        const plain = openOne({ ...b, what: req.what, verify: req.verify }, sealed);
        plain.copy(out, pos);
      }
      pos += b.rawLength;
    }
    const ab = ownArrayBuffer(out);
    return { res: { seq: req.seq, ok: true, plain: ab, buf: req.buf }, transfer: [ab, req.buf] };
  }
  // load
  const plain = openOne(req, new Uint8Array(req.buf, 0, req.length));
  const ab = ownArrayBuffer(plain);
  return { res: { seq: req.seq, ok: true, plain: ab }, transfer: [ab] };
}

parentPort?.on('message', (req: WorkerRequest) => {
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
