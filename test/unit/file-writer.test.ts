import { test } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { RunArena } from '../../src/core/aligned.ts';
import { openDirect, PositionalWriter } from '../../src/repo/file-writer.ts';

function tmp(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'tern-writer-'));
}

test('PositionalWriter: writes that continue each other in the file and in memory go as one span, its whole pages with O_DIRECT and its partial ends buffered; every byte lands once', async (t) => {
  const dir = tmp();
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'f');
  const size = 3 * 1024 * 1024;
  const fh = await fsp.open(file, 'wx');
  await fh.truncate(size);
  const direct = await openDirect(file);
  const expected = Buffer.alloc(size);
  if (!direct) t.diagnostic(`${os.tmpdir()} refuses O_DIRECT: the buffered path only`);
  try {
    // Chunks of a file at odd offsets, laid out in page-aligned memory where they fall in the file modulo
    // 4 KiB, back to back (as loadMany lays out a run with placeAt): [12345, 12345 + 900k + 700,001 + 333,333).
    const arena = new RunArena(1, 4 * 1024 * 1024);
    const mem = Buffer.from(arena.buffer);
    const start = 12345;
    const lengths = [900_000, 700_001, 333_333];
    crypto.randomFillSync(
      mem,
      start % 4096,
      lengths.reduce((a, b) => a + b),
    );
    const w = new PositionalWriter(fh, direct);
    const writes: Promise<void>[] = [];
    let at = start % 4096;
    let pos = start;
    for (const len of lengths) {
      writes.push(w.write(mem.subarray(at, at + len), pos));
      mem.copy(expected, pos, at, at + len);
      at += len;
      pos += len;
    }
    const end = pos;
    // A chunk in memory of its own (not aligned), right after them in the file: the same pwritev, buffered.
    const other = crypto.randomBytes(5000);
    writes.push(w.write(other, end));
    other.copy(expected, end);
    await Promise.all(writes);
    assert.equal(w.bytesWritten, end + 5000 - start);
    if (direct) {
      // The span's whole pages: from the first page boundary after its start to the last before its end.
      const whole = Math.floor(end / 4096) * 4096 - Math.ceil(start / 4096) * 4096;
      assert.equal(w.bytesDirect, whole);
      // Its head and the whole pages, then its tail together with the separate chunk: 3 calls, not 4 chunks' worth.
      assert.equal(w.writes, 3);
    } else assert.equal(w.bytesDirect, 0);
  } finally {
    await direct?.close();
    await fh.close();
  }
  const back = fs.readFileSync(file);
  assert.equal(back.length, size);
  assert.ok(back.equals(expected), 'the file holds every write at its place, zeros elsewhere');
});

test('PositionalWriter: a failed write fails every write of its span and every write after it', async (t) => {
  const dir = tmp();
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'f');
  fs.writeFileSync(file, '');
  const fh = await fsp.open(file, 'r'); // writes fail: EBADF
  try {
    const w = new PositionalWriter(fh);
    const mem = crypto.randomBytes(300_000);
    // Two writes continuing each other in the file and in memory: one span, one failed call, both fail.
    const results = await Promise.allSettled([
      w.write(mem.subarray(0, 100_000), 0),
      w.write(mem.subarray(100_000, 300_000), 100_000),
    ]);
    assert.deepEqual(
      results.map((r) => r.status),
      ['rejected', 'rejected'],
    );
    assert.equal(w.writes, 1);
    await assert.rejects(w.write(crypto.randomBytes(10), 1_000_000), { code: 'EBADF' });
    assert.equal(w.bytesWritten, 0);
  } finally {
    await fh.close();
  }
});
