/** Directory trees in the repository: backup (FastCDC chunks + canonical tree blobs), restore, listing, walks. */
export { backupTree } from './backup.ts';
export type { TreeBackupOptions, TreeBackupResult, TreeBackupStats } from './backup.ts';
export { restoreTree } from './restore.ts';
export type { TreeRestoreOptions, TreeRestoreResult } from './restore.ts';
export { listTree, walkTree, loadTree, modeString } from './list.ts';
export type { ListOptions } from './list.ts';
export { FastCdc, cdcChunks, DEFAULT_CHUNKER_PARAMS } from './chunker.ts';
export type { ChunkerParams } from './chunker.ts';
export {
  CONTENT_PART_CHUNKS,
  decodeTree,
  encodeContentParts,
  encodeTree,
  encodeTreeParts,
  ListingEncoder,
  openTree,
  readTree,
  TREE_PART_BYTES,
} from './codec.ts';
