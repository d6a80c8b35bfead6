/**
 * Benchmark data, made on the spot and reproducible from a seed: a random file, a 1% scattered overwrite of it
 * (with the list of changed byte ranges), compressible log-like text, and a tree of small files.
 * Randomness comes from an AES-256-CTR keystream keyed by the seed: several GB/s with AES-NI, and the same
 * bytes on every machine for the same seed.
 */
import { createCipheriv, createHash } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import path from 'node:path';

const BLOCK = 8 * 1024 * 1024;

/** A deterministic byte stream: AES-256-CTR over zeros, key = SHA-256(seed/label). */
export class Keystream {
  private readonly cipher;
  private static zeros = Buffer.alloc(0);
  private pool: Buffer = Buffer.alloc(0);
  private pos = 0;

  constructor(seed: string, label: string) {
    const key = createHash('sha256').update(`${seed}/${label}`).digest();
    this.cipher = createCipheriv('aes-256-ctr', key, Buffer.alloc(16));
  }

  /** `n` fresh bytes (a new buffer the caller owns). */
  bytes(n: number): Buffer {
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    while (filled < n) {
      const chunk = Math.min(n - filled, BLOCK);
      if (Keystream.zeros.length < chunk) Keystream.zeros = Buffer.alloc(BLOCK);
      this.cipher.update(Keystream.zeros.subarray(0, chunk)).copy(out, filled);
      filled += chunk;
    }
    return out;
  }

  /** A uniform integer in [0, bound), bound ≤ 2^48. */
  int(bound: number): number {
    if (this.pos + 6 > this.pool.length) {
      this.pool = this.bytes(64 * 1024);
      this.pos = 0;
    }
    const v = this.pool.readUIntBE(this.pos, 6);
    this.pos += 6;
    return v % bound;
  }
}

/** Writes `size` bytes of incompressible data. */
export async function writeRandomFile(file: string, size: number, seed: string): Promise<void> {
  const ks = new Keystream(seed, 'random-file');
  const fh = await open(file, 'w');
  try {
    for (let done = 0; done < size;) {
      const n = Math.min(BLOCK, size - done);
      const buf = ks.bytes(n);
      await fh.write(buf, 0, n, done);
      done += n;
    }
  } finally {
    await fh.close();
  }
}

export interface ByteRange {
  offset: number;
  length: number;
}

/** Sorted, non-overlapping, adjacent ranges merged. */
export function mergeRanges(ranges: ByteRange[]): ByteRange[] {
  const sorted = [...ranges].sort((a, b) => a.offset - b.offset);
  const out: ByteRange[] = [];
  for (const r of sorted) {
    const last = out[out.length - 1];
    if (last && r.offset <= last.offset + last.length) {
      last.length = Math.max(last.length, r.offset + r.length - last.offset);
    } else {
      out.push({ ...r });
    }
  }
  return out;
}

/**
 * Overwrites `fraction` of the file in `writes` equal pieces at seeded random offsets (in place, so the path
 * and inode stay the same as a changed volume's would). Returns the changed ranges, merged.
 */
export async function scatterOverwrite(
  file: string,
  size: number,
  seed: string,
  fraction = 0.01,
  writes = 200,
): Promise<ByteRange[]> {
  const len = Math.max(1, Math.round((size * fraction) / writes));
  const where = new Keystream(seed, 'overwrite-offsets');
  const what = new Keystream(seed, 'overwrite-data');
  const ranges: ByteRange[] = [];
  const fh = await open(file, 'r+');
  try {
    for (let i = 0; i < writes; i++) {
      const offset = where.int(Math.max(1, size - len + 1));
      await fh.write(what.bytes(len), 0, len, offset);
      ranges.push({ offset, length: len });
    }
    await fh.sync();
  } finally {
    await fh.close();
  }
  return mergeRanges(ranges);
}

const LEVELS = ['INFO', 'INFO', 'INFO', 'INFO', 'DEBUG', 'DEBUG', 'WARN', 'ERROR'];
const COMPONENTS = [
  'http.server',
  'db.pool',
  'auth.session',
  'cache.redis',
  'queue.worker',
  'billing.invoice',
  'search.indexer',
  'storage.blob',
  'scheduler.cron',
  'mail.sender',
  'api.gateway',
  'metrics.exporter',
];
const METHODS = ['GET', 'GET', 'GET', 'POST', 'PUT', 'DELETE', 'PATCH', 'GET'];
const PATHS = [
  '/api/v1/users/',
  '/api/v1/orders/',
  '/api/v1/items/',
  '/api/v2/invoices/',
  '/internal/health/',
  '/api/v1/sessions/',
  '/static/assets/',
  '/api/v2/search/',
];
const STATUS = ['200', '200', '200', '200', '201', '204', '304', '400', '404', '500', '200', '302'];
const WORDS =
  'request completed accepted rejected retry timeout connection pool exhausted user login logout cache miss hit evicted queue drained job started finished failed slow query index rebuilt token refreshed expired upstream latency degraded recovered'.split(
    ' ',
  );
const HEX = '0123456789abcdef';

/**
 * Log-like text: timestamps, a few levels/components/paths, random ids and numbers. zstd/deflate shrink it to
 * roughly a quarter; every chunk is unique (timestamps move forward), so deduplication does not flatter anyone.
 */
export class TextGenerator {
  private readonly rnd: Keystream;
  private ms = Date.UTC(2026, 0, 1);
  private sec = -1;
  private prefix = '';

  constructor(seed: string, label = 'text') {
    this.rnd = new Keystream(seed, label);
  }

  /** About `approx` bytes of whole lines. */
  chunk(approx: number): Buffer {
    const r = this.rnd.bytes(Math.ceil(approx / 4) + 64);
    let ri = 0;
    const next = () => {
      if (ri >= r.length) ri = 0;
      return r[ri++] ?? 0;
    };
    const lines: string[] = [];
    let bytes = 0;
    while (bytes < approx) {
      this.ms += next() % 40;
      const s = Math.floor(this.ms / 1000);
      if (s !== this.sec) {
        this.sec = s;
        this.prefix = new Date(this.ms).toISOString().slice(0, 20);
      }
      const millis = String(this.ms % 1000).padStart(3, '0');
      let id = '';
      for (let i = 0; i < 4; i++) {
        const b = next();
        id += HEX[b >> 4]! + HEX[b & 15]!;
      }
      const a = next();
      const b = next();
      const c = next();
      const d = next();
      const line =
        `${this.prefix}${millis}Z ${LEVELS[a & 7]} ${COMPONENTS[b % COMPONENTS.length]} request_id=${id} ` +
        `method=${METHODS[a >> 5]} path=${PATHS[c & 7]}${(b << 4) | (c >> 4)} status=${STATUS[d % STATUS.length]} ` +
        `bytes=${(c << 6) | (d & 63)} dur_ms=${d >> 2} msg="${WORDS[a % WORDS.length]} ${WORDS[d % WORDS.length]}"\n`;
      lines.push(line);
      bytes += line.length;
    }
    return Buffer.from(lines.join(''), 'latin1');
  }
}

/** Writes exactly `size` bytes of log-like text. */
export async function writeTextFile(file: string, size: number, seed: string): Promise<void> {
  const gen = new TextGenerator(seed);
  const fh = await open(file, 'w');
  try {
    for (let done = 0; done < size;) {
      const buf = gen.chunk(Math.min(4 * 1024 * 1024, size - done));
      const n = Math.min(buf.length, size - done);
      await fh.write(buf, 0, n, done);
      done += n;
    }
  } finally {
    await fh.close();
  }
}

export interface TreeSummary {
  files: number;
  dirs: number;
  bytes: number;
}

/**
 * `count` files of 0–16 KiB in three levels of directories (about 100 files per leaf directory); half of them
 * random bytes, half log-like text.
 */
export function writeSmallFileTree(root: string, count: number, seed: string): Promise<TreeSummary> {
  const sizes = new Keystream(seed, 'tree-sizes');
  const random = new Keystream(seed, 'tree-random');
  const text = new TextGenerator(seed, 'tree-text');
  let textPool: Buffer = Buffer.alloc(0);
  let textPos = 0;
  const leaves = Math.max(1, Math.ceil(count / 100));
  const dirs = new Set<string>();
  let bytes = 0;
  for (let i = 0; i < count; i++) {
    const leaf = i % leaves;
    const dir = path.join(
      root,
      `d${leaf % 10}`,
      `e${Math.floor(leaf / 10) % 10}`,
      `f${Math.floor(leaf / 100)}`,
    );
    if (!dirs.has(dir)) {
      mkdirSync(dir, { recursive: true });
      dirs.add(dir);
    }
    const size = sizes.int(16 * 1024 + 1);
    let content: Buffer;
    if (i % 2 === 0) {
      content = random.bytes(size);
    } else {
      if (textPos + size > textPool.length) {
        textPool = text.chunk(4 * 1024 * 1024);
        textPos = 0;
      }
      content = textPool.subarray(textPos, textPos + size);
      textPos += size;
    }
    const ext = i % 2 === 0 ? 'bin' : 'log';
    // Synchronous: 100k tiny writes through fs/promises spend most of their time in thread-pool hand-offs.
    writeFileSync(path.join(dir, `file-${String(i).padStart(6, '0')}.${ext}`), content);
    bytes += size;
  }
  return Promise.resolve({ files: count, dirs: dirs.size, bytes });
}
