/**
 * `npm run bench`: builds the data, runs Tern, restic and kopia (when built) on the same data in the same run,
 * checks every restore against its source, and prints a Markdown table (also written to bench/out/).
 *
 *   node bench/run.ts [--quick] [--size 2GiB] [--files 100000] [--dir DIR] [--tools tern,restic,kopia]
 *                     [--scenarios random,compressible,files,tree,chunks] [--seed S] [--repeat N] [--drop-caches] [--keep]
 *                     [--update-docs] [--out DIR]
 */
import { accessSync, constants, existsSync, readdirSync } from 'node:fs';
import { cp, mkdir, mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { formatBytes, parseSize } from '../src/core/index.ts';
import {
  scatterOverwrite,
  writeRandomFile,
  writeSmallFileTree,
  writeTextFile,
  type ByteRange,
} from './data.ts';
import {
  deviceFloor,
  dropCaches,
  du,
  evictFromCache,
  findRestored,
  GNU_TIME,
  hashFile,
  hashTree,
  timed,
  untimed,
} from './measure.ts';
import type { Machine, Row } from './report.ts';
import {
  describeMachine,
  evaluateTargets,
  floorMarkdown,
  kopiaMarkdown,
  machineMarkdown,
  markdownTable,
  targetsMarkdown,
} from './report.ts';
import type { BackupOptions, Tool, ToolName } from './tools.ts';
import { findBinary, KopiaTool, ResticTool, TernTool } from './tools.ts';

const PROJECT_ROOT = path.resolve(import.meta.dirname, '..');
const ALL_SCENARIOS = ['random', 'compressible', 'files', 'tree', 'chunks'] as const;
type Scenario = (typeof ALL_SCENARIOS)[number];
/**
 * The chunks scenario's image: twice --size in 4 KiB chunks, so by default 2^20 chunks (4 GiB), as many as
 * 1 TiB has at the default 1 MiB.
 */
const SMALL_CHUNK = 4096;
const chunksImageSize = (size: number): number =>
  Math.max(1, Math.floor((2 * size) / SMALL_CHUNK)) * SMALL_CHUNK;

export interface BenchConfig {
  size: number;
  files: number;
  baseDir: string;
  tools: ToolName[] | undefined;
  scenarios: Scenario[];
  seed: string;
  repeat: number;
  dropCaches: boolean;
  keep: boolean;
  updateDocs: boolean;
  outDir: string;
  command: string;
}

function parseConfig(argv: string[]): BenchConfig {
  const { values } = parseArgs({
    args: argv,
    options: {
      quick: { type: 'boolean', default: false },
      size: { type: 'string' },
      files: { type: 'string' },
      dir: { type: 'string' },
      tools: { type: 'string' },
      scenarios: { type: 'string' },
      seed: { type: 'string', default: 'tern-bench-1' },
      repeat: { type: 'string', default: '1' },
      'drop-caches': { type: 'boolean', default: false },
      keep: { type: 'boolean', default: false },
      'update-docs': { type: 'boolean', default: false },
      out: { type: 'string' },
      help: { type: 'boolean', default: false },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(readHelp());
    process.exit(0);
  }
  const size = parseSize(values.size ?? (values.quick ? '256MiB' : '2GiB'));
  const files = Number(values.files ?? (values.quick ? 20000 : 100000));
  if (!Number.isInteger(files) || files < 1) throw new Error(`--files must be a positive integer`);
  const tools = values.tools?.split(',').map((t) => t.trim()) as ToolName[] | undefined;
  for (const t of tools ?? [])
    if (!['tern', 'restic', 'kopia'].includes(t))
      throw new Error(`unknown tool "${t}" (tern, restic, kopia)`);
  const scenarios = (values.scenarios?.split(',').map((s) => s.trim()) ?? [...ALL_SCENARIOS]) as Scenario[];
  for (const s of scenarios)
    if (!ALL_SCENARIOS.includes(s)) throw new Error(`unknown scenario "${s}" (${ALL_SCENARIOS.join(', ')})`);
  if (values['drop-caches']) {
    try {
      accessSync('/proc/sys/vm/drop_caches', constants.W_OK);
    } catch {
      throw new Error('--drop-caches needs root (writes /proc/sys/vm/drop_caches)');
    }
  }
  const repeat = Number(values.repeat);
  if (!Number.isInteger(repeat) || repeat < 1) throw new Error(`--repeat must be a positive integer`);
  const viaNpm = process.env.npm_lifecycle_event === 'bench';
  return {
    size,
    files,
    baseDir: path.resolve(values.dir ?? os.tmpdir()),
    tools,
    scenarios,
    seed: values.seed,
    repeat,
    dropCaches: values['drop-caches'],
    keep: values.keep,
    updateDocs: values['update-docs'],
    outDir: path.resolve(values.out ?? path.join(PROJECT_ROOT, 'bench', 'out')),
    command: `${viaNpm ? 'npm run bench --' : 'node bench/run.ts'}${argv.length ? ' ' + argv.join(' ') : ''}`,
  };
}

function readHelp(): string {
  return `Usage: npm run bench -- [options]   (or: node bench/run.ts [options])

  --quick                256 MiB files and 20k small files instead of 2 GiB and 100k
  --size SIZE            size of the random and compressible files (default 2GiB)
  --files N              number of files in the small-file tree (default 100000)
  --dir DIR              where to create the work directory (default ${os.tmpdir()}); pick the filesystem to test
  --tools LIST           tern,restic,kopia (default: every one available)
  --scenarios LIST       random,compressible,files,tree,chunks (default: all); files is a directory holding a
                         random file of SIZE (content-defined chunks for every tool, Tern's path for the files
                         of a volume); chunks is Tern alone on an image of twice SIZE in 4 KiB chunks (by
                         default 2^20, as many as 1 TiB has at 1 MiB chunks)
  --seed S               data seed (same seed, same bytes)
  --repeat N             run every scenario N times (tool order rotated) and report median seconds
  --drop-caches          sync and drop the page cache before every timed command (root)
  --keep                 keep the work directory
  --update-docs          write the table into docs/benchmarks.md
  --out DIR              where results-*.md/json go (default bench/out)
`;
}

const log = (msg: string) =>
  process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);

async function pickTools(
  cfg: BenchConfig,
  work: string,
  peersDir: string,
): Promise<{ tools: Tool[]; notes: string[] }> {
  const wanted = cfg.tools ?? ['tern', 'restic', 'kopia'];
  const explicit = cfg.tools !== undefined;
  const tools: Tool[] = [];
  const notes: string[] = [];
  for (const name of wanted) {
    if (name === 'tern') {
      const tern = new TernTool(PROJECT_ROOT);
      if (await tern.available()) tools.push(tern);
      else if (explicit) throw new Error('tern CLI has no backup/restore/repo verbs yet');
      else notes.push('tern: CLI has no backup/restore verbs yet, skipped');
    } else {
      const bin = findBinary(name, peersDir);
      if (!bin) {
        const refused =
          existsSync(peersDir) &&
          readdirSync(peersDir).some((f) => f.startsWith(`${name}-`) && f.endsWith('.unavailable'));
        const msg = refused
          ? `${name}: the Go module proxy does not serve it here (bench/peers.sh could not build it)`
          : `${name}: binary not found (run bench/peers.sh; looked in ${peersDir}/bin and PATH)`;
        if (explicit) throw new Error(msg);
        notes.push(msg + ', skipped');
        continue;
      }
      tools.push(name === 'restic' ? new ResticTool(bin, work) : new KopiaTool(bin, work));
    }
  }
  if (tools.length === 0) throw new Error(`no tool to benchmark (${notes.join('; ')})`);
  return { tools, notes };
}

interface Verify {
  kind: 'file' | 'dir';
  source: string;
  hash: string;
}

/** The small-file tree of a work directory, made by the first repetition: its size and hash. */
const treeCache = new Map<string, { bytes: number; hash: string }>();

class Bench {
  readonly rows: Row[] = [];
  private readonly cfg: BenchConfig;
  private readonly work: string;
  private readonly tools: Tool[];

  constructor(cfg: BenchConfig, work: string, tools: Tool[]) {
    this.cfg = cfg;
    this.work = work;
    this.tools = tools;
  }

  private repo(tool: Tool, scenario: string): string {
    return path.join(this.work, 'repos', `${tool.name}-${scenario}`);
  }

  /**
   * Before every timed command (not timed): `sync`, so the dirty pages one command left behind (a restore that
   * does not flush, a repository's packs) are not written back during the next tool's turn; with
   * --drop-caches also the page cache dropped.
   */
  private async prepare(): Promise<void> {
    if (this.cfg.dropCaches) await dropCaches();
    else await untimed({ cmd: 'sync', args: [] });
  }

  /**
   * Before a restore, also the repository is dropped from the page cache, for every tool: a restore at the
   * DR site reads a repository written long before (or elsewhere), not one still in memory. Without this the
   * comparison depended on how each tool wrote its packs (Tern writes them with O_DIRECT, which leaves
   * nothing cached; restic's buffered writes stay in memory).
   */
  private async prepareRestore(repo: string): Promise<void> {
    await this.prepare();
    if (!this.cfg.dropCaches) await evictFromCache(repo);
  }

  /** Repositories whose creation failed, with why: their backups are ERROR rows, the run goes on. */
  private readonly initFailed = new Map<string, string>();

  /** Creates a tool's repository (not timed); a failure is logged and turns its backups into ERROR rows. */
  private async init(tool: Tool, repo: string): Promise<void> {
    this.initFailed.delete(repo);
    try {
      await tool.init(repo);
    } catch (err) {
      this.initFailed.set(repo, message(err));
      log(`${tool.name} repository ${path.basename(repo)}: ERROR ${message(err)}`);
    }
  }

  /** One timed backup; returns the snapshot id, or undefined after recording an ERROR row. */
  async backup(
    tool: Tool,
    repo: string,
    base: Omit<Row, 'tool' | 'check'>,
    source: string,
    opts: BackupOptions = {},
  ): Promise<string | undefined> {
    const notCreated = this.initFailed.get(repo);
    if (notCreated !== undefined) {
      this.rows.push({
        ...base,
        tool: tool.name,
        check: 'ERROR',
        note: `repository not created: ${notCreated}`,
      });
      return undefined;
    }
    const before = await du(repo);
    await this.prepare();
    try {
      const res = await timed(tool.backup(repo, source, opts));
      const id = tool.snapshotId(res.stdout);
      this.rows.push({
        ...base,
        tool: tool.name,
        seconds: res.seconds,
        peakRssBytes: res.peakRssBytes,
        storedBytes: (await du(repo)) - before,
        check: 'ok',
      });
      log(
        `${base.scenario} ${base.op} ${tool.name}: ${res.seconds.toFixed(2)} s, snapshot ${id.slice(0, 12)}`,
      );
      return id;
    } catch (err) {
      this.rows.push({ ...base, tool: tool.name, check: 'ERROR', note: message(err) });
      log(`${base.scenario} ${base.op} ${tool.name}: ERROR ${message(err)}`);
      return undefined;
    }
  }

  /** One timed restore into a fresh directory, then the restored data is compared with the source. */
  async restore(
    tool: Tool,
    repo: string,
    base: Omit<Row, 'tool' | 'check'>,
    snapshot: string | undefined,
    verify: Verify,
    opts: { floor?: boolean } = {},
  ): Promise<void> {
    if (snapshot === undefined) {
      this.rows.push({ ...base, tool: tool.name, check: 'ERROR', note: 'no snapshot (backup failed)' });
      return;
    }
    const target = path.join(this.work, 'restore', `${tool.name}-${base.scenario}-${base.op}`);
    await rm(target, { recursive: true, force: true });
    await mkdir(path.dirname(target), { recursive: true });
    await this.prepareRestore(repo);
    try {
      const res = await timed(tool.restore(repo, snapshot, target));
      // Then what the tool left in the page cache written out (syncfs of the target's filesystem).
      const flush = await timed({ cmd: 'sync', args: ['-f', target] });
      let check: Row['check'] = 'ok';
      let note: string | undefined;
      try {
        const restored = await findRestored(target, verify.source, verify.kind);
        const hash = verify.kind === 'file' ? await hashFile(restored) : await hashTree(restored);
        if (hash !== verify.hash) {
          check = 'FAIL';
          note = 'restored data differs from the source';
        }
      } catch (err) {
        check = 'FAIL';
        note = message(err);
      }
      // For Tern's restore of a full image backup, also what the device alone takes for the same bytes.
      const floor =
        opts.floor && tool.name === 'tern' && check === 'ok'
          ? await deviceFloor(path.join(repo, 'data'), `${target}-floor`, base.bytes)
          : undefined;
      this.rows.push({
        ...base,
        tool: tool.name,
        seconds: res.seconds,
        onDiskSeconds: res.seconds + flush.seconds,
        ...(floor !== undefined ? { floorSeconds: floor } : {}),
        peakRssBytes: res.peakRssBytes,
        check,
        ...(note ? { note } : {}),
      });
      log(
        `${base.scenario} ${base.op} ${tool.name}: ${res.seconds.toFixed(2)} s (on disk ${(res.seconds + flush.seconds).toFixed(2)} s${floor !== undefined ? `, device alone ${floor.toFixed(2)} s` : ''}), ${check}${note ? ' ' + note : ''}`,
      );
    } catch (err) {
      this.rows.push({ ...base, tool: tool.name, check: 'ERROR', note: message(err) });
      log(`${base.scenario} ${base.op} ${tool.name}: ERROR ${message(err)}`);
    } finally {
      // A restored tree of many files is moved aside, not deleted: ext4 skips inodes freed in the last minutes
      // when it allocates new ones, so deleting 100k files made the next tool's tree restore measurably slower
      // (the trash goes with the work directory at the end). A directory of one large file is deleted: kept,
      // the 2 GiB files of the files scenario filled the disk (18 GB by the third repetition) and slowed
      // everything written after them.
      if (base.scenario === 'tree' && existsSync(target)) {
        const trash = path.join(this.work, 'trash');
        await mkdir(trash, { recursive: true });
        await rename(target, path.join(trash, `${Date.now()}-${tool.name}-${base.scenario}`));
      } else await rm(target, { recursive: true, force: true });
    }
  }

  async random(): Promise<void> {
    const size = this.cfg.size;
    const data = path.join(this.work, 'data');
    await mkdir(data, { recursive: true });
    const file = path.join(data, 'random.bin');
    log(`writing ${formatBytes(size)} random file`);
    await writeRandomFile(file, size, this.cfg.seed);
    const v1: Verify = { kind: 'file', source: file, hash: await hashFile(file) };

    const full = new Map<ToolName, string | undefined>();
    for (const tool of this.tools) {
      const repo = this.repo(tool, 'random');
      await this.init(tool, repo);
      const id = await this.backup(tool, repo, { scenario: 'random', op: 'backup', bytes: size }, file);
      full.set(tool.name, id);
      await this.restore(tool, repo, { scenario: 'random', op: 'restore', bytes: size }, id, v1, {
        floor: true,
      });
    }
    // The ranges run gets its own copy of the repository as it was after the full backup, so that it does not
    // find the blobs the no-ranges incremental stored already.
    const tern = this.tools.find((t) => t.supportsRanges);
    const rangesRepo = tern ? this.repo(tern, 'random-ranges') : undefined;
    if (tern && rangesRepo) await cp(this.repo(tern, 'random'), rangesRepo, { recursive: true });

    log(`overwriting 1% of the file in 200 places`);
    const ranges: ByteRange[] = await scatterOverwrite(file, size, this.cfg.seed);
    const rangesFile = path.join(this.work, 'changed-ranges.json');
    await writeFile(rangesFile, JSON.stringify(ranges));
    const v2: Verify = { kind: 'file', source: file, hash: await hashFile(file) };
    for (const tool of this.tools) {
      const repo = this.repo(tool, 'random');
      const parent = full.get(tool.name);
      const base = { scenario: 'overwrite', op: 'incremental', bytes: size };
      const id = parent
        ? await this.backup(tool, repo, base, file, { parent })
        : (this.rows.push({
            ...base,
            tool: tool.name,
            check: 'ERROR',
            note: 'no parent (full backup failed)',
          }),
          undefined);
      await this.restore(tool, repo, { scenario: 'overwrite', op: 'restore', bytes: size }, id, v2);
    }
    if (tern && rangesRepo) {
      const parent = full.get(tern.name);
      const base = {
        scenario: 'overwrite',
        op: 'incremental-ranges',
        bytes: size,
        baseline: { scenario: 'overwrite', op: 'incremental' },
      };
      const id = parent ? await this.backup(tern, rangesRepo, base, file, { parent, rangesFile }) : undefined;
      if (!parent)
        this.rows.push({ ...base, tool: tern.name, check: 'ERROR', note: 'no parent (full backup failed)' });
      await this.restore(
        tern,
        rangesRepo,
        {
          scenario: 'overwrite',
          op: 'restore-ranges',
          bytes: size,
          baseline: { scenario: 'overwrite', op: 'restore' },
        },
        id,
        v2,
      );
      await rm(rangesRepo, { recursive: true, force: true });
    }
    for (const tool of this.tools) await rm(this.repo(tool, 'random'), { recursive: true, force: true });
    await rm(file, { force: true });
  }

  /**
   * Tern alone: a random image of twice --size in 4 KiB chunks, by default 4 GiB, i.e. 2^20 chunks, as many as
   * a 1 TiB volume has at the default 1 MiB. What grows with the number of chunks (the map, the index, a
   * restore's plan) is what a 1 TiB volume costs in memory; the bytes are 256 times fewer, so it takes about a
   * minute. Full backup, then an incremental with changed ranges (1% in 200 places) and its restore, checked
   * against the source. (restic and kopia have no fixed-size chunks to compare.)
   */
  async chunks(): Promise<void> {
    const tern = this.tools.find((t) => t.name === 'tern');
    if (!tern) return;
    const size = chunksImageSize(this.cfg.size);
    const data = path.join(this.work, 'data');
    await mkdir(data, { recursive: true });
    const file = path.join(data, 'chunks.img');
    log(
      `writing ${formatBytes(size)} random image: ${size / SMALL_CHUNK} chunks of ${formatBytes(SMALL_CHUNK)}`,
    );
    await writeRandomFile(file, size, this.cfg.seed);
    const repo = this.repo(tern, 'chunks');
    await this.init(tern, repo);
    const parent = await this.backup(tern, repo, { scenario: 'chunks', op: 'backup', bytes: size }, file, {
      chunkSize: SMALL_CHUNK,
    });
    const ranges: ByteRange[] = await scatterOverwrite(file, size, this.cfg.seed);
    const rangesFile = path.join(this.work, 'chunks-ranges.json');
    await writeFile(rangesFile, JSON.stringify(ranges));
    const v: Verify = { kind: 'file', source: file, hash: await hashFile(file) };
    const base = { scenario: 'chunks', op: 'incremental-ranges', bytes: size };
    const id = parent ? await this.backup(tern, repo, base, file, { parent, rangesFile }) : undefined;
    if (!parent)
      this.rows.push({ ...base, tool: tern.name, check: 'ERROR', note: 'no parent (full backup failed)' });
    await this.restore(tern, repo, { scenario: 'chunks', op: 'restore-ranges', bytes: size }, id, v);
    await rm(repo, { recursive: true, force: true });
    await rm(file, { force: true });
  }

  async compressible(): Promise<void> {
    const size = this.cfg.size;
    const data = path.join(this.work, 'data');
    await mkdir(data, { recursive: true });
    const file = path.join(data, 'text.log');
    log(`writing ${formatBytes(size)} compressible text`);
    await writeTextFile(file, size, this.cfg.seed);
    const v: Verify = { kind: 'file', source: file, hash: await hashFile(file) };
    for (const tool of this.tools) {
      const repo = this.repo(tool, 'compressible');
      await this.init(tool, repo);
      const id = await this.backup(tool, repo, { scenario: 'compressible', op: 'backup', bytes: size }, file);
      await this.restore(tool, repo, { scenario: 'compressible', op: 'restore', bytes: size }, id, v, {
        floor: true,
      });
      await rm(repo, { recursive: true, force: true });
    }
    await rm(file, { force: true });
  }

  /**
   * A directory holding one random file of --size: every tool cuts it into content-defined chunks (Tern backs
   * a directory up as a tree, as it does the files of a volume). Before this scenario existed, such a backup
   * kept every chunk's buffer (2527 MiB RSS for 2 GiB) and its restore ran at restic's speed; the image scenarios
   * did not show either.
   */
  async files(): Promise<void> {
    const size = this.cfg.size;
    const dir = path.join(this.work, 'data', 'files');
    await mkdir(dir, { recursive: true });
    log(`writing ${formatBytes(size)} random file in a directory`);
    await writeRandomFile(path.join(dir, 'random.bin'), size, `${this.cfg.seed}-files`);
    const v: Verify = { kind: 'dir', source: dir, hash: await hashTree(dir) };
    for (const tool of this.tools) {
      const repo = this.repo(tool, 'files');
      await this.init(tool, repo);
      const id = await this.backup(tool, repo, { scenario: 'files', op: 'backup', bytes: size }, dir);
      await this.restore(tool, repo, { scenario: 'files', op: 'restore', bytes: size }, id, v);
      await rm(repo, { recursive: true, force: true });
    }
    await rm(dir, { recursive: true, force: true });
  }

  async tree(): Promise<number> {
    const root = path.join(this.work, 'data', 'tree');
    // Written once per run and kept for the repetitions (deleting it would slow the next creations, see restore).
    let made = treeCache.get(root);
    if (!made) {
      log(`writing ${this.cfg.files} small files`);
      const summary = await writeSmallFileTree(root, this.cfg.files, this.cfg.seed);
      made = { bytes: summary.bytes, hash: await hashTree(root) };
      treeCache.set(root, made);
    }
    const summary = { bytes: made.bytes };
    const v: Verify = { kind: 'dir', source: root, hash: made.hash };
    for (const tool of this.tools) {
      const repo = this.repo(tool, 'tree');
      await this.init(tool, repo);
      const id = await this.backup(
        tool,
        repo,
        { scenario: 'tree', op: 'backup', bytes: summary.bytes },
        root,
      );
      await this.restore(tool, repo, { scenario: 'tree', op: 'restore', bytes: summary.bytes }, id, v);
      await rm(repo, { recursive: true, force: true });
    }
    return summary.bytes;
  }
}

/**
 * One row per (scenario, operation, tool) in the order of the first run: median seconds of the repetitions,
 * largest peak RSS, worst check.
 */
export function mergeRuns(runs: Row[][], tools: Tool[]): Row[] {
  const key = (r: Row) => `${r.scenario}/${r.op}/${r.tool}`;
  const groups: string[] = [];
  for (const r of runs.flat())
    if (!groups.includes(`${r.scenario}/${r.op}`)) groups.push(`${r.scenario}/${r.op}`);
  const ordered: Row[] = [];
  for (const g of groups) {
    for (const t of tools) {
      const r = runs.flat().find((x) => `${x.scenario}/${x.op}` === g && x.tool === t.name);
      if (r) ordered.push(r);
    }
  }
  const severity: Record<Row['check'], number> = { ok: 0, skipped: 1, ERROR: 2, FAIL: 3 };
  return ordered.map((row) => {
    const all = runs
      .map((rs) => rs.find((r) => key(r) === key(row)))
      .filter((r): r is Row => r !== undefined);
    const median = (pick: (r: Row) => number | undefined): number | undefined => {
      const v = all
        .map(pick)
        .filter((x): x is number => x !== undefined)
        .sort((a, b) => a - b);
      return v.length ? v[Math.floor((v.length - 1) / 2)] : undefined;
    };
    const rss = all
      .map((r) => r.peakRssBytes)
      .filter((v): v is number => v !== undefined && Number.isFinite(v));
    const worst = all.reduce((w, r) => (severity[r.check] > severity[w.check] ? r : w), row);
    const merged: Row = { ...row, check: worst.check };
    if (worst.note) merged.note = worst.note;
    else delete merged.note;
    const seconds = median((r) => r.seconds);
    if (seconds !== undefined) merged.seconds = seconds;
    const onDisk = median((r) => r.onDiskSeconds);
    if (onDisk !== undefined) merged.onDiskSeconds = onDisk;
    const floor = median((r) => r.floorSeconds);
    if (floor !== undefined) merged.floorSeconds = floor;
    if (rss.length) merged.peakRssBytes = Math.max(...rss);
    return merged;
  });
}

function message(err: unknown): string {
  return (err instanceof Error ? err.message : String(err)).replace(/\s+/g, ' ').slice(0, 300);
}

export interface BenchResult {
  rows: Row[];
  machine: Machine;
  markdown: string;
  files: { markdown: string; json: string };
}

export async function runBench(cfg: BenchConfig): Promise<BenchResult> {
  if (!existsSync(GNU_TIME)) log(`${GNU_TIME} missing (bash bench/peers.sh installs it): no peak RSS column`);
  await mkdir(cfg.baseDir, { recursive: true });
  const work = await mkdtemp(path.join(cfg.baseDir, 'tern-bench-'));
  const peersDir = process.env.TERN_PEERS_DIR ?? path.join(os.homedir(), '.cache', 'tern-peers');
  const machine = describeMachine(work, PROJECT_ROOT);
  const started = new Date();
  try {
    const { tools, notes } = await pickTools(cfg, work, peersDir);
    for (const n of notes) log(n);
    for (const t of tools)
      machine.versions[t.name] = (await t.version()).replace(new RegExp(`^${t.name}\\s+`), '');
    log(`work dir ${work} (${machine.filesystem}); tools: ${tools.map((t) => t.name).join(', ')}`);
    let treeBytes = 0;
    const runs: Row[][] = [];
    for (let i = 0; i < cfg.repeat; i++) {
      // Rotate the order on each repetition so no tool always runs first (or right after data generation).
      const order = tools.map((_, k) => tools[(k + i) % tools.length]!);
      if (cfg.repeat > 1)
        log(`repetition ${i + 1}/${cfg.repeat}, order ${order.map((t) => t.name).join(', ')}`);
      const bench = new Bench(cfg, work, order);
      for (const s of cfg.scenarios) {
        if (s === 'random') await bench.random();
        else if (s === 'compressible') await bench.compressible();
        else if (s === 'chunks') await bench.chunks();
        else if (s === 'files') await bench.files();
        else treeBytes = await bench.tree();
      }
      runs.push(bench.rows);
    }
    const rows = mergeRuns(runs, tools);
    machine.loadAfter = os
      .loadavg()
      .map((l) => l.toFixed(2))
      .join(' ');
    const sizeLabel = (scenario: string) =>
      scenario === 'tree'
        ? `${cfg.files} files, ${formatBytes(treeBytes)}`
        : scenario === 'chunks'
          ? `${formatBytes(chunksImageSize(cfg.size))} in ${chunksImageSize(cfg.size) / SMALL_CHUNK} chunks`
          : formatBytes(cfg.size);
    const targets = evaluateTargets(rows);
    const floors = floorMarkdown(rows);
    const kopia = kopiaMarkdown(rows, sizeLabel);
    const markdown = [
      `Taken ${started.toISOString().slice(0, 16).replace('T', ' ')} UTC with \`${cfg.command}\`; local filesystem repositories.`,
      '',
      machineMarkdown(machine),
      ...(notes.length ? ['', ...notes.map((n) => `- Not run: ${n}`)] : []),
      '',
      markdownTable(rows, sizeLabel),
      "MB/s = source bytes (10^6) / wall seconds of the whole command (incrementals: the full file size over the incremental time). × restic = throughput ÷ restic throughput for the same operation (ranges rows: ÷ restic incremental; restore of the ranges snapshot: ÷ restic restore of its incremental). On disk s (restores) = the command plus a `sync -f` of the target filesystem timed right after it: Tern's restores are on disk when they exit (image restores write with O_DIRECT and fsync, tree restores sync their filesystem), restic's restores leave their writes in the page cache; × restic on disk = restic's on-disk seconds ÷ Tern's. Peak RSS = largest resident set of the process (GNU time). Stored = repository growth on disk. Check = restored data hashed and compared with the source.",
      ...(floors ? ['', floors] : []),
      ...(kopia ? ['', kopia] : []),
      '',
      'Targets (issue 3):',
      '',
      targetsMarkdown(targets),
    ].join('\n');
    await mkdir(cfg.outDir, { recursive: true });
    const stamp = started.toISOString().slice(0, 16).replace(':', '');
    const files = {
      markdown: path.join(cfg.outDir, `results-${stamp}.md`),
      json: path.join(cfg.outDir, `results-${stamp}.json`),
    };
    await writeFile(files.markdown, `# Tern benchmark results\n\n${markdown}`);
    await writeFile(
      files.json,
      JSON.stringify({ config: cfg, machine, rows: rows, targets }, null, 2) + '\n',
    );
    if (cfg.updateDocs) await updateDocs(markdown);
    return { rows: rows, machine, markdown, files };
  } finally {
    if (cfg.keep) log(`kept ${work}`);
    else await rm(work, { recursive: true, force: true });
  }
}

const BEGIN = '<!-- bench:begin (written by `npm run bench -- --update-docs`) -->';
const END = '<!-- bench:end -->';

/** Replaces the generated block of docs/benchmarks.md, keeping the hand-written text around it. */
async function updateDocs(markdown: string): Promise<void> {
  const file = path.join(PROJECT_ROOT, 'docs', 'benchmarks.md');
  const block = `${BEGIN}\n\n${markdown}\n${END}`;
  let text = existsSync(file) ? await readFile(file, 'utf8') : `# Benchmarks\n\n${BEGIN}\n${END}\n`;
  const a = text.indexOf(BEGIN);
  const b = text.indexOf(END);
  text =
    a >= 0 && b > a
      ? text.slice(0, a) + block + text.slice(b + END.length)
      : `${text.trimEnd()}\n\n${block}\n`;
  await writeFile(file, text);
  // npm test runs prettier --check over the tree: leave the file formatted.
  const prettier = path.join(PROJECT_ROOT, 'node_modules', '.bin', 'prettier');
  if (existsSync(prettier)) await untimed({ cmd: prettier, args: ['--write', file] }).catch(() => undefined);
  log(`updated ${path.relative(PROJECT_ROOT, file)}`);
}

if (import.meta.main) {
  try {
    const cfg = parseConfig(process.argv.slice(2));
    const result = await runBench(cfg);
    process.stdout.write(
      `\n${result.markdown}\nWritten to ${path.relative(process.cwd(), result.files.markdown)}\n`,
    );
    const bad = result.rows.filter((r) => r.check === 'FAIL' || r.check === 'ERROR');
    process.exitCode = bad.length ? 1 : 0;
  } catch (err) {
    process.stderr.write(`bench: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exitCode = 2;
  }
}
