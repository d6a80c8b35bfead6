import type { RunOptions } from '../core/base.ts';

export interface ObjectInfo {
  key: string;
  size: number;
  /** Last modification time, when the store knows it. */
  modified?: Date;
}

export interface PutOptions extends RunOptions {
  /** Fail with ConflictError if the key already exists (used for locks and keys). Best effort on stores without conditional writes. */
  ifNoneMatch?: boolean;
  /**
   * Called once the store no longer reads `data`, so the caller may reuse it before `put` settles: the local
   * store calls it when the bytes are written, before its fsync; stores that do not call it are done with
   * `data` when `put` settles.
   */
  onDataReleased?: () => void;
}

/** Ranges of one object read through one open handle (ObjectStore.openRanges); `close` when done. */
export interface RangeReader {
  /** `buf.length` bytes at `offset` into `buf`; resolves to the bytes read, fewer only at the end of the object. */
  readInto(offset: number, buf: Buffer, opts?: RunOptions): Promise<number>;
  close(): Promise<void>;
}

/**
 * The one small interface every object store implements (local filesystem, S3, Azure Blob).
 * Keys are '/'-separated relative paths; implementations map them under their own prefix.
 * Errors: NotFoundError for a missing key, StorageError (with cause) after retries, NoSpaceError, AuthError, CancelledError.
 * A `put` is atomic: a reader sees the whole object or nothing (local: write temp + rename; S3/Azure: single PUT or commit of a multipart/block list).
 */
export interface ObjectStore {
  /** Human-readable location with any secret removed. */
  readonly location: string;
  get(key: string, opts?: RunOptions): Promise<Buffer>;
  getRange(key: string, offset: number, length: number, opts?: RunOptions): Promise<Buffer>;
  /**
   * Optional: one object opened for several ranged reads into the caller's buffers (`RangeReader`), for a
   * reader that takes an object's ranges in order and reuses its buffers. Fails like `getRange` (NotFoundError
   * for a missing key). The local store implements it.
   */
  openRanges?(key: string, opts?: RunOptions): Promise<RangeReader>;
  put(key: string, data: Buffer, opts?: PutOptions): Promise<void>;
  head(key: string, opts?: RunOptions): Promise<ObjectInfo | undefined>;
  /** All objects whose key starts with `prefix`, in no particular order. */
  list(prefix: string, opts?: RunOptions): AsyncIterable<ObjectInfo>;
  /** Deleting a missing key is not an error. */
  delete(key: string, opts?: RunOptions): Promise<void>;
  close?(): Promise<void>;
}
