/** Progress of long work, reported by every layer and rendered by the CLI (TTY) or stored on action runs. */
export interface Progress {
  phase: string;
  /** Bytes looked at (read from the source). */
  bytesRead: number;
  /** Bytes known to be needed in total, when known. */
  bytesTotal?: number;
  /** Bytes actually sent to or received from storage after dedup/compression. */
  bytesTransferred: number;
  items?: number;
  itemsTotal?: number;
}

export type ProgressFn = (p: Progress) => void;

/** Options that every long operation takes. */
export interface RunOptions {
  signal?: AbortSignal;
  onProgress?: ProgressFn;
}
