/**
 * Running one tool command under measurement (wall time, peak RSS through GNU time), and fingerprinting data
 * so that every restore is checked against its source.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, existsSync, lstatSync, openSync, readdirSync, readFileSync, readSync } from 'node:fs';
import { lstat, mkdtemp, open, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';

export const GNU_TIME = '/usr/bin/time';

export interface RunResult {
  seconds: number;
  /** Largest resident set of the command or any child it waited for (GNU time %M), in bytes. */
  peakRssBytes: number;
  stdout: string;
  stderr: string;
}

export interface RunSpec {
  cmd: string;
  args: string[];
  env?: Record<string, string>;
  cwd?: string;
}

export class CommandFailed extends Error {
  constructor(spec: RunSpec, code: number | null, stderr: string, stdout: string) {
    const tail = (stderr.trim() || stdout.trim()).split('\n').slice(-8).join('\n');
    super(`${path.basename(spec.cmd)} ${spec.args.slice(0, 3).join(' ')} … exited ${code}: ${tail}`);
    this.name = 'CommandFailed';
  }
}

/**
 * Runs a command to completion under GNU time; throws CommandFailed on a non-zero exit. Without GNU time
 * (bench/peers.sh installs it) the command still runs and peak RSS is NaN.
 */
export async function timed(spec: RunSpec): Promise<RunResult> {
  const env = { ...process.env, ...spec.env };
  if (!existsSync(GNU_TIME)) {
    const start = process.hrtime.bigint();
    const { code, stdout, stderr } = await run(spec.cmd, spec.args, { env, cwd: spec.cwd });
    const seconds = Number(process.hrtime.bigint() - start) / 1e9;
    if (code !== 0) throw new CommandFailed(spec, code, stderr, stdout);
    return { seconds, peakRssBytes: NaN, stdout, stderr };
  }
  const dir = await mkdtemp(path.join(os.tmpdir(), 'tern-bench-time-'));
  const timeFile = path.join(dir, 'time');
  try {
    const start = process.hrtime.bigint();
    const { code, stdout, stderr } = await run(
      GNU_TIME,
      ['-f', '%e %M', '-o', timeFile, spec.cmd, ...spec.args],
      {
        env,
        cwd: spec.cwd,
      },
    );
    const seconds = Number(process.hrtime.bigint() - start) / 1e9;
    if (code !== 0) throw new CommandFailed(spec, code, stderr, stdout);
    const fields = (await readFile(timeFile, 'utf8')).trim().split('\n').pop()?.split(' ') ?? [];
    const kib = Number(fields[1]);
    return { seconds, peakRssBytes: Number.isFinite(kib) ? kib * 1024 : NaN, stdout, stderr };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** Runs a command without measuring it (set-up steps). */
export async function untimed(spec: RunSpec): Promise<string> {
  const { code, stdout, stderr } = await run(spec.cmd, spec.args, {
    env: { ...process.env, ...spec.env },
    cwd: spec.cwd,
  });
  if (code !== 0) throw new CommandFailed(spec, code, stderr, stdout);
  return stdout;
}

function run(
  cmd: string,
  args: string[],
  opts: { env: NodeJS.ProcessEnv; cwd: string | undefined },
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env: opts.env, cwd: opts.cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    // Keep only the last few MiB: progress output can be long and only the tail matters.
    const keep = (list: Buffer[], b: Buffer) => {
      list.push(b);
      let total = list.reduce((n, x) => n + x.length, 0);
      while (total > 4 * 1024 * 1024 && list.length > 1) total -= list.shift()!.length;
    };
    child.stdout.on('data', (b: Buffer) => keep(out, b));
    child.stderr.on('data', (b: Buffer) => keep(err, b));
    child.on('error', reject);
    child.on('close', (code) =>
      resolve({ code, stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString() }),
    );
  });
}

/** `sync; echo 3 > /proc/sys/vm/drop_caches` (root only). */
export async function dropCaches(): Promise<void> {
  await untimed({ cmd: 'sync', args: [] });
  await writeFile('/proc/sys/vm/drop_caches', '3\n');
}

/**
 * Drops the page-cache pages of every file below `dir` (after `sync`: dirty pages cannot be dropped), with
 * coreutils' `dd iflag=nocache count=0`, which advises the kernel that the whole file is not needed
 * (POSIX_FADV_DONTNEED). No root needed; the rest of the cache (binaries, sources) stays.
 */
export async function evictFromCache(dir: string): Promise<void> {
  await untimed({ cmd: 'sync', args: [] });
  await untimed({
    cmd: 'find',
    args: [dir, '-type', 'f', '-exec', 'dd', 'iflag=nocache', 'count=0', 'status=none', 'if={}', ';'],
  });
}

/**
 * What the device alone takes to move an image restore's bytes from a cold repository: every file under `dir`
 * (a repository's packs) read with `cat` while `bytes` of zeros are written to the new file `target` with
 * O_DIRECT and fsynced (`dd`). No start-up, decryption or decompression: a floor no restore of that
 * repository onto this filesystem can go below. `target` is removed afterwards.
 */
export async function deviceFloor(dir: string, target: string, bytes: number): Promise<number> {
  await evictFromCache(dir);
  const blocks = Math.ceil(bytes / (4 * 1024 * 1024));
  const script =
    'find "$1" -type f -print0 | xargs -0 cat > /dev/null & reader=$!; ' +
    'dd if=/dev/zero of="$2" bs=4M count="$3" oflag=direct conv=fsync status=none && wait "$reader"';
  try {
    return (await timed({ cmd: 'bash', args: ['-c', script, 'floor', dir, target, String(blocks)] })).seconds;
  } finally {
    await rm(target, { force: true });
  }
}

export async function hashFile(file: string): Promise<string> {
  const h = createHash('sha256');
  const fh = await open(file, 'r');
  try {
    const buf = Buffer.allocUnsafe(4 * 1024 * 1024);
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, null);
      if (bytesRead === 0) break;
      h.update(buf.subarray(0, bytesRead));
    }
  } finally {
    await fh.close();
  }
  return h.digest('hex');
}

/**
 * A fingerprint of a directory tree: names, types, permission bits, sizes and content hashes of every entry,
 * in sorted order. Timestamps are left out (tools differ on directory mtimes). Synchronous calls: for 100k small
 * files they are several times faster than the thread-pool round trips of fs/promises.
 */
export function hashTree(root: string): Promise<string> {
  const h = createHash('sha256');
  const walk = (rel: string): void => {
    const entries = readdirSync(path.join(root, rel)).sort();
    for (const name of entries) {
      const r = rel ? `${rel}/${name}` : name;
      const full = path.join(root, r);
      const st = lstatSync(full);
      const mode = (st.mode & 0o7777).toString(8);
      if (st.isDirectory()) {
        h.update(`d ${r} ${mode}\n`);
        walk(r);
      } else if (st.isFile()) {
        const content =
          st.size <= 1024 * 1024 ? createHash('sha256').update(readFileSync(full)).digest('hex') : '';
        h.update(`f ${r} ${mode} ${st.size} ${content || hashFileSync(full)}\n`);
      } else {
        h.update(`o ${r} ${mode}\n`);
      }
    }
  };
  try {
    walk('');
    return Promise.resolve(h.digest('hex'));
  } catch (err) {
    return Promise.reject(err instanceof Error ? err : new Error(String(err)));
  }
}

function hashFileSync(file: string): string {
  const h = createHash('sha256');
  const fd = openSync(file, 'r');
  try {
    const buf = Buffer.allocUnsafe(4 * 1024 * 1024);
    for (;;) {
      const n = readSync(fd, buf, 0, buf.length, null);
      if (n === 0) break;
      h.update(buf.subarray(0, n));
    }
  } finally {
    closeSync(fd);
  }
  return h.digest('hex');
}

/** Sum of file sizes under a path (repository size on disk, as the tools store it). */
export async function du(p: string): Promise<number> {
  const st = await lstat(p).catch(() => undefined);
  if (!st) return 0;
  if (!st.isDirectory()) return st.size;
  let total = 0;
  for (const name of await readdir(p)) total += await du(path.join(p, name));
  return total;
}

/**
 * Where a tool put the restored copy of `source` under `target`: tools differ (the target itself, target/name,
 * or target/<absolute source path>). Returns the first candidate of the right kind.
 */
export async function findRestored(target: string, source: string, kind: 'file' | 'dir'): Promise<string> {
  const candidates = [path.join(target, source), path.join(target, path.basename(source)), target];
  for (const c of candidates) {
    const st = await stat(c).catch(() => undefined);
    if (!st) continue;
    if (kind === 'file' && st.isFile()) return c;
    if (kind === 'dir' && st.isDirectory() && c !== target) return c;
  }
  if (kind === 'dir') return target;
  throw new Error(`restored copy of ${source} not found under ${target}`);
}
