import { test } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import zlib from 'node:zlib';
import { IntegrityError } from '../../src/core/errors.ts';
import { ZstdInto } from '../../src/repo/crypto.ts';

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

test('ZstdInto decompresses frames into the caller buffer, one context across blobs', () => {
  const z = new ZstdInto();
  const out = Buffer.alloc(3 << 20);
  const parts = [text(1 << 20), text(300_001), text(4096), text(1 << 20)];
  let pos = 7;
  for (const p of parts) {
    z.decompressInto(zlib.zstdCompressSync(p), out, pos, p.length, 'pack');
    assert.ok(out.subarray(pos, pos + p.length).equals(p));
    pos += p.length;
  }
});

test('ZstdInto rejects corrupted frames and wrong lengths, and keeps working after', () => {
  const z = new ZstdInto();
  const plain = text(1 << 20);
  const frame = zlib.zstdCompressSync(plain);
  const out = Buffer.alloc(2 << 20);
  const bad = Buffer.from(frame);
  bad[0]! ^= 0xff; // the magic number (frames carry no checksum: the repository's GCM tag guards the bytes)
  assert.throws(() => z.decompressInto(bad, out, 0, plain.length, 'pack-x'), IntegrityError);
  assert.throws(
    () => z.decompressInto(frame, out, 0, plain.length - 1, 'pack-x'),
    (e: Error) => e instanceof IntegrityError && /more than/.test(e.message),
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
