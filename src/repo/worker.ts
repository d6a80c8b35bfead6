/** Worker thread: hash + compress + encrypt (save) and decrypt + decompress + verify (load) of blobs. */
import { parentPort } from 'node:worker_threads';
import crypto from 'node:crypto';
import { IntegrityError } from '../core/index.ts';
import { blobAad, blobIdOf, decompress, maybeCompress, open, seal } from './crypto.ts';
import type { WorkerRequest, WorkerResponse } from './pool.ts';

let encKey: Buffer | undefined;
let idKey: Buffer | undefined;

function handle(req: WorkerRequest): { res: WorkerResponse; transfer: ArrayBuffer[] } {
  if (req.op === 'keys') {
    encKey = Buffer.from(req.encKey);
    idKey = Buffer.from(req.idKey);
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
    const sealed = seal(encKey, data, blobAad(id, req.type, comp));
    const ab = sealed.buffer.slice(sealed.byteOffset, sealed.byteOffset + sealed.length) as ArrayBuffer;
    return {
      res: { seq: req.seq, ok: true, id: id.toString('hex'), sealed: ab, comp, rawLength: req.length },
      transfer: [ab],
    };
  }
  // load
  const what = req.what;
  const idBuf = Buffer.from(req.id, 'hex');
  const sealed = new Uint8Array(req.buf, 0, req.length);
  const plainComp = open(encKey, sealed, blobAad(idBuf, req.type, req.comp), what);
  const plain = decompress(plainComp, req.comp, req.rawLength, what);
  if (plain.length !== req.rawLength)
    throw new IntegrityError(
      `${what}: blob ${req.id.slice(0, 16)} has ${plain.length} bytes, index says ${req.rawLength}`,
    );
  const got = blobIdOf(idKey, plain);
  if (!crypto.timingSafeEqual(got, idBuf))
    throw new IntegrityError(`${what}: blob ${req.id.slice(0, 16)} content does not match its id`);
  const ab =
    plain.byteOffset === 0 && plain.buffer.byteLength === plain.length
      ? (plain.buffer as ArrayBuffer)
      : (plain.buffer.slice(plain.byteOffset, plain.byteOffset + plain.length) as ArrayBuffer);
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
