/**
 * The contract between the repository engine (keys, packs, index, snapshots, locks: src/repo/*.ts)
 * and the walkers that turn a source into blobs (block images: src/repo/image/, directory trees: src/repo/tree/).
 * Walkers never see keys, packs or the object store; the repository never walks files (it only writes whole
 * small files a tree restore hands it with `writeFiles`, next to where their blobs are decrypted).
 */
import type { RunOptions } from '../core/base.ts';

/** 'data' = file/volume content chunks; 'tree' = structure (directory listings, image chunk maps). */
export type BlobType = 'data' | 'tree';

/** Hex of HMAC-SHA-256(repository id key, plaintext). 64 hex chars. */
export type BlobId = string;

export interface SaveResult {
  id: BlobId;
  /** false when the blob already existed (dedup) and nothing new was stored. */
  stored: boolean;
  /** Bytes added to packs (after compression + encryption), 0 when deduplicated. */
  storedBytes: number;
}

export interface BlobWriter {
  /**
   * Hash, deduplicate, compress, encrypt and pack one blob. Resolves once the blob is accepted into a pack
   * buffer (not necessarily uploaded). Applies back-pressure: the promise may wait while too much is in flight,
   * so callers can start several saves and await them in order.
   * The buffer must not be modified by the caller after the call.
   */
  saveBlob(type: BlobType, plaintext: Buffer, opts?: RunOptions): Promise<SaveResult>;
  /**
   * Optional: a buffer of `length` bytes to read the next blob into, recycled from blobs already processed
   * (saves page faults and garbage collection on large sequential sources). Its content is undefined.
   */
  allocBlobBuffer?(length: number): Buffer;
  /** Is the blob already in the repository (or pending in this session)? */
  hasBlob(id: BlobId): boolean;
  /**
   * Optional: read the small file at `path` (opened with `flags`) and save it as one data blob, where the
   * blob is hashed and sealed (a crypto worker): the caller's thread makes no system call for it. Expects
   * `expectedSize` bytes (at most FILE_BLOB_MAX) and reports what it found instead.
   */
  saveFile?(path: string, expectedSize: number, flags: number, opts?: RunOptions): Promise<FileSaved>;
}

/** Largest file `saveFile` takes. */
export const FILE_BLOB_MAX = 256 * 1024;
/** Smaller all-zero stretches are stored as data: a hole is not worth it (tree backups, `saveFile`). */
export const MIN_HOLE = 4096;

/** What `saveFile` found: */
export type FileSaved =
  /** the file's `size` bytes (≥ 1, not all zero; fewer than expected when it shrank), saved as `id` */
  | ({ kind: 'blob'; size: number } & SaveResult)
  /** `size` ≥ 4 KiB bytes, all zero: nothing saved, the caller records a hole (smaller ones are saved) */
  | { kind: 'zero'; size: number }
  /** nothing: the file is empty */
  | { kind: 'empty' }
  /** more than `expectedSize` bytes: nothing saved, the caller reads it another way */
  | { kind: 'grew' }
  /** open or read failed with this errno code (ENOENT, EACCES, ...) */
  | { kind: 'error'; code: string };

export interface LoadOptions extends RunOptions {
  /**
   * Recompute the keyed hash of the plaintext and compare it with the id (default true for `loadBlob`,
   * false for `loadMany`). Without it the blob is still authenticated: AES-GCM's tag covers the id
   * (associated data), so only a holder of the key could have sealed these bytes under this id.
   */
  verify?: boolean;
  /**
   * loadMany: ranged reads (runs) in flight, at most 8 (default 3). An image restore, whose memory is small,
   * uses more so its writer finds more neighbouring chunks to merge; a tree restore keeps the default.
   */
  runsInFlight?: number;
  /**
   * loadMany, when the reader lays blobs out in page-aligned memory: the file position the caller will write
   * a blob to. The reader puts the blob where it falls modulo 4 KiB, so its whole pages are aligned in memory
   * and in the file alike (written with O_DIRECT), and a run's blobs in file order, so those that follow each
   * other in the file follow each other in memory (written as one). Undefined for a blob (or no placeAt): a
   * 4 KiB boundary when it is at least 4 KiB long (an image chunk's place), in pack order.
   */
  placeAt?: (id: BlobId) => number | undefined;
}

export interface BlobReader {
  /** Load, authenticate, decrypt, decompress and verify the hash of one blob. IntegrityError names the pack. */
  loadBlob(id: BlobId, opts?: LoadOptions): Promise<Buffer>;
  /**
   * Optional bulk load for restores: every id once, in storage order (adjacent blobs of a pack read in one
   * ranged read, several reads in flight), `onBlob` called as each blob is ready and awaited before its
   * memory is released. `plain` is only valid during the call.
   */
  loadMany?(
    ids: BlobId[],
    onBlob: (id: BlobId, plain: Buffer) => Promise<void>,
    opts?: LoadOptions,
  ): Promise<void>;
  /**
   * Optional, for tree restores: writes files whose whole content is one blob, each file right after its blob
   * is decrypted, in the reader's worker threads (so the plaintext never comes back to the caller). Blobs are
   * read in storage order like `loadMany`. Resolves with one entry per file, in order: null when written,
   * else why not (an IntegrityError of a blob rejects the whole call instead).
   */
  writeFiles?(files: BlobFile[], opts?: LoadOptions): Promise<(FileFailure | null)[]>;
  /** Plaintext length of a blob without loading it. */
  blobSize(id: BlobId): number | undefined;
}

/** A regular file to create from one blob (`writeFiles`) or from bytes at hand. */
export interface FileJob {
  /** where to create it (exclusively: it must not exist) */
  path: string;
  /** when set, `path` is a temporary name renamed to this once the file is complete */
  renameTo?: string;
  mode: number;
  /** owner to set, or -1 to leave it (not root) */
  uid: number;
  gid: number;
  /** mtime (and atime) in seconds, as `utimes` takes it */
  time: number;
  /** its size, which its blob must have */
  size: number;
}

export interface BlobFile {
  id: BlobId;
  job: FileJob;
}

/**
 * Why a file could not be written: an errno code (ENOSPC, EACCES ...), 'SIZE' when its blob does not have the
 * file's size, 'EWORKER' when the writing thread died.
 */
export interface FileFailure {
  code: string;
  message: string;
}

/** Common JSON shape of one node in a directory tree blob (type 'tree'). */
export interface TreeNode {
  name: string;
  type: 'file' | 'dir' | 'symlink' | 'fifo' | 'chardev' | 'blockdev' | 'socket';
  mode: number;
  uid: number;
  gid: number;
  /** Milliseconds since epoch, with fraction allowed. */
  mtimeMs: number;
  atimeMs?: number;
  size?: number;
  /** file: ordered chunk list; a null entry is a hole (sparse) of `holeSizes[i]` bytes. */
  content?: (BlobId | null)[];
  holeSizes?: number[];
  /**
   * file with a chunk list too long for its listing (tree/FORMAT.md): the blobs that hold `content` and
   * `holeSizes` in runs. Readers load them into `content`/`holeSizes` and keep this for the blob walk.
   */
  contentParts?: BlobId[];
  /** dir: id of the subtree blob. */
  subtree?: BlobId;
  linkTarget?: string;
  /** Hard links: nodes sharing the same linkGroup are restored as links of the first one. */
  linkGroup?: string;
  rdev?: number;
  /** Nanosecond-precise times as decimal strings (bigint stat); mtimeMs stays for readers that need less. */
  mtimeNs?: string;
  /** Change time and inode number at backup time: an incremental backup reuses `content` when they match. */
  ctimeNs?: string;
  inode?: string;
}

export interface TreeBlob {
  nodes: TreeNode[];
  /** Root tree only: how the tree's files were chunked (informational; readers need none of it). */
  chunker?: {
    algorithm: string;
    minSize: number;
    avgSize: number;
    maxSize: number;
    normalization: number;
    seed: string;
  };
  /** Root tree only: metadata of the backed-up directory itself (name ''). */
  self?: TreeNode;
  /**
   * A directory listing too long for one blob is stored in parts (tree/FORMAT.md): their blob ids, in order.
   * Set on what a reader loaded (the parts' nodes are then in `nodes`), for the walk that keeps blobs alive.
   */
  parts?: BlobId[];
}

/** Chunk map of a block image (stored as a 'tree' blob). */
export interface ImageMap {
  size: number;
  chunkSize: number;
  /**
   * One entry per chunk index: a blob id (the whole chunk), null (an all-zero chunk, not stored, restored as
   * a hole), or a list of extents that together cover the chunk in order (written by an incremental backup
   * with changed ranges: unchanged parts point into the parent's blobs, changed parts are new small blobs).
   */
  chunks: ImageChunk[];
}

/** A piece of a chunk: `length` bytes taken at `from` of blob `blob` (null blob = zeros). */
export type ImageExtent = [blob: BlobId | null, from: number, length: number];

export type ImageChunk = BlobId | null | ImageExtent[];

/** What a snapshot manifest points at. */
export type SnapshotRoot = { kind: 'tree'; tree: BlobId } | { kind: 'image'; map: BlobId; size: number };

export interface SnapshotManifest {
  id: string;
  time: string;
  hostname: string;
  paths: string[];
  tags: string[];
  parent?: string;
  root: SnapshotRoot;
  summary: {
    bytesRead: number;
    bytesAdded: number;
    filesNew?: number;
    filesChanged?: number;
    filesUnmodified?: number;
    durationMs: number;
  };
}

/** Byte range [offset, offset+length) that changed since the parent, as a platform reports it. */
export interface ByteRange {
  offset: number;
  length: number;
}
