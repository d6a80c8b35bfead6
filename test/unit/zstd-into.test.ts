import { test } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import zlib from 'node:zlib';
import { IntegrityError } from '../../src/core/errors.ts';
import {
  COMP_NONE,
  COMP_ZSTD,
  maybeCompress,
  sampleEntropy,
  ZstdCompressor,
  ZstdInto,
} from '../../src/repo/crypto.ts';

function text(n: number): Buffer {
  const lines: string[] = [];
  let len = 0;
  for (let i = 0; len < n; i++) {
    const l = `2026-11-25T17:${String(i % 60).padStart(2, '0')} INFO req=${crypto.randomInt(1e6)} path=/a/b/${i}\n`;
    lines.push(l);
    len += l.length;
  }
  return Buffer.from(lines.join('')).subarray(0, n);
}

for (const direct of [true, false])
  test(`ZstdInto (${direct ? 'native handle' : 'fallback'}) decompresses frames into the caller buffer, one context across blobs`, () => {
    const z = new ZstdInto({ direct });
    const out = Buffer.alloc(3 << 20);
    const parts = [text(1 << 20), text(300_001), text(4096), text(1 << 20)];
    let pos = 7;
    for (const p of parts) {
      z.decompressInto(zlib.zstdCompressSync(p), out, pos, p.length, 'pack');
      assert.ok(out.subarray(pos, pos + p.length).equals(p));
      pos += p.length;
    }
  });

for (const direct of [true, false])
  test(`ZstdInto (${direct ? 'native handle' : 'fallback'}) rejects corrupted frames and wrong lengths, and keeps working after`, () => {
    const z = new ZstdInto({ direct });
    const plain = text(1 << 20);
    const frame = zlib.zstdCompressSync(plain);
    const out = Buffer.alloc(2 << 20);
    const bad = Buffer.from(frame);
    bad[0]! ^= 0xff; // the magic number (frames carry no checksum: the repository's GCM tag guards the bytes)
    assert.throws(() => z.decompressInto(bad, out, 0, plain.length, 'pack-x'), IntegrityError);
    assert.throws(
      () => z.decompressInto(frame, out, 0, plain.length - 1, 'pack-x'),
      (e: Error) => e instanceof IntegrityError && (direct ? /more than/ : /pack-x/).test(e.message),
    );
    assert.throws(
      () => z.decompressInto(frame, out, 0, plain.length + 1, 'pack-x'),
      (e: Error) => e instanceof IntegrityError && /pack-x/.test(e.message),
    );
    assert.throws(
      () => z.decompressInto(frame.subarray(0, 100), out, 0, plain.length, 'pack-x'),
      IntegrityError,
    );
    assert.throws(
      () => z.decompressInto(Buffer.from('not a zstd frame'), out, 0, 10, 'pack-x'),
      IntegrityError,
    );
    out.fill(0);
    z.decompressInto(frame, out, 5, plain.length, 'pack');
    assert.ok(out.subarray(5, 5 + plain.length).equals(plain));
  });

for (const direct of [true, false])
  test(`ZstdCompressor (${direct ? 'native handle' : 'fallback'}): one context across blobs; a frame that does not fit is dropped and the next is whole`, () => {
    const c = new ZstdCompressor({ direct });
    const d = new ZstdInto({ direct });
    const out = Buffer.alloc(1 << 20);
    const blobs = [text(600_000), crypto.randomBytes(50_000), text(5000), text(1 << 20), text(700)];
    for (const b of blobs) {
      const n = c.compressInto(b, out.subarray(0, Math.floor(b.length * 0.95)));
      if (n < 0) {
        // Only incompressible input fails to fit in 95% of its size.
        assert.ok(zlib.zstdCompressSync(b).length > b.length * 0.9, 'a compressible blob was refused');
        continue;
      }
      assert.ok(n < b.length / 2, `text compressed to ${n} of ${b.length}`);
      // Frames are standard zstd: node's decoder and ZstdInto read them back.
      assert.ok(zlib.zstdDecompressSync(out.subarray(0, n)).equals(b));
      const back = Buffer.alloc(b.length);
      d.decompressInto(out.subarray(0, n), back, 0, b.length, 'pack');
      assert.ok(back.equals(b));
    }
    // Output room of zero bytes: refused, and the context still works after.
    assert.equal(c.compressInto(text(10_000), Buffer.alloc(0)), -1);
    const t = text(10_000);
    const n = c.compressInto(t, out);
    assert.ok(zlib.zstdDecompressSync(out.subarray(0, n)).equals(t));
  });

test('maybeCompress: text is compressed, random data and tiny blobs are not', () => {
  const t = text(200_000);
  const r = maybeCompress(t);
  assert.equal(r.comp, COMP_ZSTD);
  assert.ok(zlib.zstdDecompressSync(r.data).equals(t));
  for (const b of [crypto.randomBytes(200_000), crypto.randomBytes(3000), text(100)]) {
    const m = maybeCompress(b);
    assert.equal(m.comp, COMP_NONE);
    assert.equal(m.data, b);
  }
});

test('sampleEntropy: the Shannon entropy of the first n bytes, as the per-value formula gives it', () => {
  const direct = (b: Uint8Array, n: number): number => {
    const m = Math.min(b.length, n);
    const h = new Map<number, number>();
    for (const v of b.subarray(0, m)) h.set(v, (h.get(v) ?? 0) + 1);
    let e = 0;
    for (const c of h.values()) e -= (c / m) * Math.log2(c / m);
    return e;
  };
  const uniform = Buffer.from(Array.from({ length: 2048 }, (_, i) => i % 256));
  assert.ok(Math.abs(sampleEntropy(uniform, 2048) - 8) < 1e-9);
  assert.equal(sampleEntropy(Buffer.alloc(2048, 7), 2048), 0);
  assert.equal(sampleEntropy(Buffer.alloc(0), 2048), 0);
  for (const b of [crypto.randomBytes(5000), text(5000), crypto.randomBytes(300), text(700)])
    for (const n of [2048, 100, 1]) {
      const got = sampleEntropy(b, n);
      assert.ok(Math.abs(got - direct(b, n)) < 1e-9, `${got} vs ${direct(b, n)} (n ${n}, ${b.length} bytes)`);
    }
  // Calls do not leak counts into each other (the histogram is reused).
  assert.equal(sampleEntropy(Buffer.alloc(2048, 1), 2048), 0);
});
