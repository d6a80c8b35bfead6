/**
 * Flushing a restore target's filesystem while a tree restore writes into it, and once more at its end, so that
 * the restore is on disk when it returns (as an image restore is, by O_DIRECT and fsync).
 *
 * One fsync per file would cost more than the restore (100k small files); Node has no syncfs(2) and no
 * sync_file_range(2), so coreutils' `sync -f DIR` (syncfs of DIR's filesystem) does it. Below the kernel's
 * dirty thresholds (10% of memory by default) writeback of a restore's files would only start 30 s after they
 * were written, i.e. at the final sync: a sync every quarter second starts it while the restore still
 * computes (100k-file tree, fresh ext4, alternating, 3 each: on disk 4.42-4.72 s -> 4.12-4.42 s).
 *
 * The syncs run from one small shell started with the restore: a spawn from Node forks the whole process,
 * ~20 ms of the main thread at a restore's ~400 MiB resident, while the shell stays small. It syncs every
 * FLUSH_INTERVAL_MS until told on stdin to finish (one last sync) or stop (none), or its stdin closes (stop).
 * A sync that fails reports a writeback error (EIO, ENOSPC) of that filesystem: the restore fails with it.
 * Without `sh` or `sync` (a minimal container) the data is left to the kernel and the restore says so.
 *
 * The pause's sleep(1) gets no output of the shell: killing the loop leaves it running out its pause, and while
 * it held the shell's stdout, Node's 'close' (and so finish) waited for it: up to FLUSH_INTERVAL_MS, ~125 ms on
 * average, added to every tree restore.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { NoSpaceError, StorageError } from '../../core/base.ts';

/** Pause between one sync's end and the next one's start (ad hoc: 0.1, 0.5 and 1 s were slower). */
export const FLUSH_INTERVAL_MS = 250;

/** $1 directory, $2 pause in seconds. Prints a line per sync; exits with the status of a sync that failed. */
const SCRIPT = `
dir=$1
( while sleep "$2" </dev/null >/dev/null 2>&1; do sync -f -- "$dir" || exit $?; echo synced; done ) &
loop=$!
read -r cmd || cmd=stop
kill "$loop" 2>/dev/null
wait "$loop"
st=$?
[ "$st" = 0 ] || [ "$st" -gt 128 ] || exit "$st"
[ "$cmd" = finish ] || exit 0
sync -f -- "$dir" || exit $?
echo synced
`;

export class BackgroundFlush {
  private readonly dir: string;
  private readonly intervalMs: number;
  private child: ChildProcess | undefined;
  private exited: Promise<{ code: number | null; spawnError?: NodeJS.ErrnoException }> | undefined;
  private stderr = '';
  /** Set when `sh` or `sync` is missing: nothing is flushed, the restore warns. */
  unavailable = false;
  /** Syncs done so far (tests, logs). */
  syncs = 0;

  constructor(dir: string, intervalMs = FLUSH_INTERVAL_MS) {
    this.dir = dir;
    this.intervalMs = intervalMs;
  }

  /** Starts the periodic syncs. */
  start(): void {
    const child = spawn('sh', ['-c', SCRIPT, 'tern-flush', this.dir, String(this.intervalMs / 1000)], {
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    this.child = child;
    child.stdout.setEncoding('utf8').on('data', (s: string) => {
      this.syncs += s.split('\n').length - 1;
    });
    child.stderr.setEncoding('utf8').on('data', (s: string) => {
      if (this.stderr.length < 4096) this.stderr += s;
    });
    // A write after the shell ended (it failed early) is reported through its exit status, not here.
    child.stdin.on('error', () => undefined);
    this.exited = new Promise((resolve) => {
      child.once('error', (err: NodeJS.ErrnoException) => resolve({ code: null, spawnError: err }));
      child.once('close', (code) => resolve({ code }));
    });
  }

  /** Stops the periodic syncs and syncs once more; throws a writeback error from any of them. */
  async finish(): Promise<void> {
    const { code, spawnError } = await this.end('finish');
    if (spawnError?.code === 'ENOENT' || code === 127) {
      this.unavailable = true;
      return;
    }
    if (spawnError || code !== 0) {
      const detail = this.stderr.trim() || spawnError?.message || `exit status ${code}`;
      const message = `flushing the restored data to disk (${this.dir}): ${detail}`;
      throw /No space left/i.test(detail) ? new NoSpaceError(message) : new StorageError(message);
    }
  }

  /** Stops the periodic syncs (a failed or cancelled restore): no final sync, errors ignored. */
  async stop(): Promise<void> {
    await this.end('stop');
  }

  private async end(
    cmd: 'finish' | 'stop',
  ): Promise<{ code: number | null; spawnError?: NodeJS.ErrnoException }> {
    if (!this.child || !this.exited) return { code: 0 };
    if (this.child.stdin?.writable) this.child.stdin.end(`${cmd}\n`);
    return this.exited;
  }
}
