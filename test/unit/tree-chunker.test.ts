import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { InputError } from '../../src/core/index.ts';
import { DEFAULT_CHUNKER_PARAMS, FastCdc, cdcChunks, modeString } from '../../src/repo/tree/index.ts';

const small = { minSize: 2048, avgSize: 8192, maxSize: 65536 };

function digests(chunks: Uint8Array[]): string[] {
  return chunks.map((c) => createHash('sha256').update(c).digest('hex'));
}

test('chunks cover the input exactly, within min/max, and are deterministic', () => {
  const data = randomBytes(4 * 1024 * 1024);
  const chunks = cdcChunks(data, small);
  assert.deepEqual(Buffer.concat(chunks), data);
  for (const c of chunks.slice(0, -1)) {
    assert.ok(c.length >= small.minSize && c.length <= small.maxSize, `chunk of ${c.length} bytes`);
  }
  const avg = data.length / chunks.length;
  assert.ok(avg > small.avgSize * 0.6 && avg < small.avgSize * 2, `average ${avg}`);
  assert.deepEqual(digests(cdcChunks(data, small)), digests(chunks));
});

test('an insertion in the middle changes only the chunks around it', () => {
  const data = randomBytes(2 * 1024 * 1024);
  const edited = Buffer.concat([
    data.subarray(0, 1_000_000),
    Buffer.from('inserted bytes'),
    data.subarray(1_000_000),
  ]);
  const a = new Set(digests(cdcChunks(data, small)));
  const b = digests(cdcChunks(edited, small));
  const fresh = b.filter((d) => !a.has(d));
  assert.ok(fresh.length >= 1 && fresh.length <= 3, `${fresh.length} new chunks of ${b.length}`);
});

test('the default parameters cut 1 MiB-ish chunks between 512 KiB and 8 MiB; zeros give max-size chunks', () => {
  const data = randomBytes(24 * 1024 * 1024);
  const chunks = cdcChunks(data);
  for (const c of chunks.slice(0, -1)) assert.ok(c.length >= 512 * 1024 && c.length <= 8 * 1024 * 1024);
  const avg = data.length / chunks.length;
  assert.ok(avg > 700 * 1024 && avg < 2 * 1024 * 1024, `average ${avg}`);
  const zeros = cdcChunks(Buffer.alloc(20 * 1024 * 1024));
  assert.deepEqual(
    zeros.map((c) => c.length),
    [8 * 1024 * 1024, 8 * 1024 * 1024, 4 * 1024 * 1024],
  );
  assert.equal(new FastCdc().params.seed, DEFAULT_CHUNKER_PARAMS.seed);
});

test('a different seed gives different cut points; bad parameters are input errors', () => {
  const data = randomBytes(1024 * 1024);
  assert.notDeepEqual(
    cdcChunks(data, small).map((c) => c.length),
    cdcChunks(data, { ...small, seed: 'other' }).map((c) => c.length),
  );
  assert.throws(() => new FastCdc({ minSize: 100, avgSize: 50, maxSize: 200 }), InputError);
});

test('throughput (reported, not asserted)', () => {
  const data = randomBytes(64 * 1024 * 1024);
  const c = new FastCdc();
  let best = 0;
  for (let r = 0; r < 3; r++) {
    const t0 = performance.now();
    let pos = 0;
    while (pos < data.length) pos += c.cut(data, pos, data.length);
    best = Math.max(best, data.length / ((performance.now() - t0) / 1000));
  }
  console.log(`FastCDC default parameters: ${(best / 1e9).toFixed(2)} GB/s on one core`);
});

test('modeString renders ls -l modes', () => {
  const base = { name: 'x', uid: 0, gid: 0, mtimeMs: 0 };
  assert.equal(modeString({ ...base, type: 'file', mode: 0o4755 }), '-rwsr-xr-x');
  assert.equal(modeString({ ...base, type: 'dir', mode: 0o1777 }), 'drwxrwxrwt');
  assert.equal(modeString({ ...base, type: 'file', mode: 0o2640 }), '-rw-r-S---');
  assert.equal(modeString({ ...base, type: 'symlink', mode: 0 }), 'lrwxrwxrwx');
});
