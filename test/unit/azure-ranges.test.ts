import assert from 'node:assert/strict';
import { test } from 'node:test';
import { coalesceRanges, totalBytes } from '../../src/platforms/azure/ranges.ts';

const KiB = 1024;
const MiB = 1024 * KiB;

test('coalesceRanges joins ranges closer than the gap, keeps far ones apart, sorts and merges overlaps', () => {
  const out = coalesceRanges(
    [
      { offset: 200 * KiB, length: 4 * KiB },
      { offset: 0, length: 4 * KiB },
      { offset: 2 * KiB, length: 4 * KiB }, // overlaps the first
      { offset: 60 * KiB, length: 4 * KiB }, // 54 KiB after: joined
      { offset: 128 * KiB, length: 4 * KiB }, // exactly 64 KiB after 60+4: not joined
    ],
    64 * KiB,
    4 * MiB,
  );
  assert.deepEqual(out, [
    { offset: 0, length: 64 * KiB },
    { offset: 128 * KiB, length: 4 * KiB },
    { offset: 200 * KiB, length: 4 * KiB },
  ]);
});

test('coalesceRanges caps pieces at max: long ranges split, joining stops at the cap', () => {
  const long = coalesceRanges([{ offset: 512, length: 9 * MiB }], 64 * KiB, 4 * MiB);
  assert.deepEqual(long, [
    { offset: 512, length: 4 * MiB },
    { offset: 512 + 4 * MiB, length: 4 * MiB },
    { offset: 512 + 8 * MiB, length: 1 * MiB },
  ]);
  // 100 ranges of 4 KiB every 48 KiB: joined into pieces of at most 1 MiB, every changed byte covered once.
  const scattered = Array.from({ length: 100 }, (_, i) => ({ offset: i * 48 * KiB, length: 4 * KiB }));
  const pieces = coalesceRanges(scattered, 64 * KiB, 1 * MiB);
  assert.ok(pieces.every((p) => p.length <= 1 * MiB));
  assert.ok(pieces.length < 10, `${pieces.length} pieces`);
  for (let i = 1; i < pieces.length; i++)
    assert.ok(pieces[i]!.offset >= pieces[i - 1]!.offset + pieces[i - 1]!.length, 'no overlap');
  for (const r of scattered)
    assert.ok(pieces.some((p) => p.offset <= r.offset && r.offset + r.length <= p.offset + p.length));
  // 22 ranges fit in 1 MiB (21 x 48 KiB + 4 KiB): 4 such pieces + one of the last 12; gaps between pieces not read.
  assert.equal(pieces.length, 5);
  assert.equal(totalBytes(pieces), 4 * (21 * 48 + 4) * KiB + (11 * 48 + 4) * KiB);
  assert.deepEqual(coalesceRanges([], 64 * KiB, 4 * MiB), []);
});
