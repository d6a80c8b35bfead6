/**
 * The tools under comparison, each driven through its own CLI the way a user would run it: Tern, restic and
 * (when a binary is available) kopia. Set-up (repository creation) is not timed; backups and restores are.
 */
import { existsSync } from 'node:fs';
import { mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import type { RunSpec } from './measure.ts';
import { untimed } from './measure.ts';

export type ToolName = 'tern' | 'restic' | 'kopia';

export interface BackupOptions {
  /** Snapshot id of the previous backup of the same path. */
  parent?: string;
  /** JSON file of changed byte ranges since the parent (Tern only). */
  rangesFile?: string;
  /** Image chunk size in bytes (Tern only). */
  chunkSize?: number;
}

export interface Tool {
  readonly name: ToolName;
  readonly supportsRanges: boolean;
  version(): Promise<string>;
  /** Creates an empty repository at `repo` (a directory that does not exist yet). Untimed. */
  init(repo: string): Promise<void>;
  backup(repo: string, source: string, opts: BackupOptions): RunSpec;
  /** Snapshot id from the backup command's output. */
  snapshotId(stdout: string): string;
  restore(repo: string, snapshot: string, target: string): RunSpec;
}

const PASSWORD = 'bench-password-not-secret';

/** Last JSON document in a command's stdout (tools may print progress lines before it). */
export function lastJson(stdout: string): unknown {
  const text = stdout.trim();
  try {
    return JSON.parse(text);
  } catch {
    // One JSON object per line (restic, progress streams): take the last line that parses.
    const lines = text.split('\n').reverse();
    for (const line of lines) {
      try {
        return JSON.parse(line);
      } catch {
        continue;
      }
    }
  }
  throw new Error(`no JSON in output: ${text.slice(-300)}`);
}

function field(obj: unknown, ...keys: string[]): unknown {
  let cur = obj;
  for (const k of keys) {
    if (cur === null || typeof cur !== 'object') return undefined;
    cur = (cur as Record<string, unknown>)[k];
  }
  return cur;
}

export class TernTool implements Tool {
  readonly name = 'tern';
  readonly supportsRanges = true;
  private readonly node: string;
  private readonly main: string;
  private readonly env: Record<string, string>;

  constructor(projectRoot: string) {
    this.node = process.execPath;
    // The installed command's entry (what `npx tern` runs), not cli/main.ts: see bin/tern.js.
    this.main = path.join(projectRoot, 'bin', 'tern.js');
    this.env = { TERN_PASSWORD: PASSWORD };
  }

  private spec(args: string[]): RunSpec {
    return { cmd: this.node, args: [this.main, ...args], env: this.env };
  }

  async version(): Promise<string> {
    return (await untimed(this.spec(['--version']))).trim();
  }

  /** True once the CLI has the verbs the benchmark drives. */
  async available(): Promise<boolean> {
    try {
      const help = await untimed(this.spec(['--help']));
      return /\bbackup\b/.test(help) && /\brestore\b/.test(help) && /\brepo\b/.test(help);
    } catch {
      return false;
    }
  }

  async init(repo: string): Promise<void> {
    await untimed(this.spec(['repo', 'init', '--repo', repo, '--json']));
  }

  backup(repo: string, source: string, opts: BackupOptions): RunSpec {
    const args = ['backup', source, '--repo', repo, '--json'];
    if (opts.parent) args.push('--parent', opts.parent);
    if (opts.rangesFile) args.push('--changed-ranges', opts.rangesFile);
    if (opts.chunkSize) args.push('--chunk-size', String(opts.chunkSize));
    return this.spec(args);
  }

  snapshotId(stdout: string): string {
    const doc = lastJson(stdout);
    const id =
      field(doc, 'snapshot', 'id') ??
      field(doc, 'id') ??
      field(doc, 'snapshotId') ??
      field(doc, 'snapshot_id');
    if (typeof id !== 'string')
      throw new Error(`tern backup --json: no snapshot id in ${stdout.slice(-300)}`);
    return id;
  }

  restore(repo: string, snapshot: string, target: string): RunSpec {
    return this.spec(['restore', snapshot, target, '--repo', repo, '--json']);
  }
}

export class ResticTool implements Tool {
  readonly name = 'restic';
  readonly supportsRanges = false;
  private readonly bin: string;
  private readonly cacheDir: string;

  constructor(bin: string, workDir: string) {
    this.bin = bin;
    this.cacheDir = path.join(workDir, 'restic-cache');
  }

  private spec(repo: string, args: string[]): RunSpec {
    return {
      cmd: this.bin,
      args: ['-r', repo, '--cache-dir', this.cacheDir, ...args],
      env: { RESTIC_PASSWORD: PASSWORD },
    };
  }

  async version(): Promise<string> {
    return (await untimed({ cmd: this.bin, args: ['version'] })).trim();
  }

  async init(repo: string): Promise<void> {
    await untimed(this.spec(repo, ['init']));
  }

  backup(repo: string, source: string, opts: BackupOptions): RunSpec {
    const args = ['backup', '--json', source];
    if (opts.parent) args.push('--parent', opts.parent);
    return this.spec(repo, args);
  }

  snapshotId(stdout: string): string {
    for (const line of stdout.trim().split('\n').reverse()) {
      try {
        const doc: unknown = JSON.parse(line);
        const id = field(doc, 'snapshot_id');
        if (field(doc, 'message_type') === 'summary' && typeof id === 'string') return id;
      } catch {
        continue;
      }
    }
    throw new Error(`restic backup --json: no summary in ${stdout.slice(-300)}`);
  }

  restore(repo: string, snapshot: string, target: string): RunSpec {
    return this.spec(repo, ['restore', snapshot, '--target', target]);
  }
}

/**
 * kopia with its own config and cache beside each repository, so the user's kopia setup is never touched.
 * Defaults everywhere (splitter, compression off, AES-256-GCM), as a user would get them. The cache is the
 * repository's own and made anew with it: with one cache for every repository, a repository created again at
 * the same path (the next repetition) was read through the cached format blob of the one before, and
 * `repository create` failed with "unable to decrypt repository blobcfg blob" (2026-12-08, repetition 3).
 */
export class KopiaTool implements Tool {
  readonly name = 'kopia';
  readonly supportsRanges = false;
  private readonly bin: string;
  private readonly workDir: string;

  constructor(bin: string, workDir: string) {
    this.bin = bin;
    this.workDir = workDir;
  }

  private spec(repo: string, args: string[]): RunSpec {
    return {
      cmd: this.bin,
      args: [...args, '--config-file', path.join(repo + '.kopia-config', 'repository.config')],
      env: {
        KOPIA_PASSWORD: PASSWORD,
        KOPIA_CHECK_FOR_UPDATES: 'false',
        KOPIA_CACHE_DIRECTORY: path.join(repo + '.kopia-config', 'cache'),
        KOPIA_LOG_DIR: path.join(this.workDir, 'kopia-logs'),
      },
    };
  }

  async version(): Promise<string> {
    return (await untimed({ cmd: this.bin, args: ['--version'] })).trim().split('\n')[0] ?? '?';
  }

  async init(repo: string): Promise<void> {
    await rm(repo + '.kopia-config', { recursive: true, force: true });
    await mkdir(repo + '.kopia-config', { recursive: true });
    await untimed(this.spec(repo, ['repository', 'create', 'filesystem', '--path', repo]));
  }

  backup(repo: string, source: string, _opts: BackupOptions): RunSpec {
    // kopia finds the previous snapshot of the same source by itself.
    return this.spec(repo, ['snapshot', 'create', source, '--json']);
  }

  snapshotId(stdout: string): string {
    const doc = lastJson(stdout);
    const id = field(doc, 'id');
    if (typeof id !== 'string')
      throw new Error(`kopia snapshot create --json: no id in ${stdout.slice(-300)}`);
    return id;
  }

  restore(repo: string, snapshot: string, target: string): RunSpec {
    return this.spec(repo, ['snapshot', 'restore', snapshot, target]);
  }
}

/** A binary from $TERN_PEERS_DIR/bin (bench/peers.sh puts kopia there) or from PATH. */
export function findBinary(name: string, peersDir: string): string | undefined {
  const candidates = [
    path.join(peersDir, 'bin', name),
    ...(process.env.PATH ?? '').split(':').map((d) => path.join(d, name)),
  ];
  return candidates.find((c) => c && existsSync(c));
}
