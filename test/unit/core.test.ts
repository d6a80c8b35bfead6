import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  InputError,
  IntegrityError,
  ManualClock,
  describeError,
  exitCodeFor,
  formatBytes,
  parseSize,
} from '../../src/core/index.ts';

test('parseSize understands binary and decimal units and rejects junk', () => {
  assert.equal(parseSize('5GiB'), 5 * 1024 ** 3);
  assert.equal(parseSize('1MB'), 1_000_000);
  assert.equal(parseSize('4096'), 4096);
  assert.throws(() => parseSize('five'), InputError);
  assert.throws(() => parseSize('3 parsecs'), InputError);
});

test('formatBytes picks a readable unit', () => {
  assert.equal(formatBytes(512), '512 B');
  assert.equal(formatBytes(3 * 1024 ** 3), '3.0 GiB');
});

test('errors keep their cause chain and map to exit codes', () => {
  const err = new IntegrityError('pack data/ab/abcd is corrupted', { cause: new Error('unsupported state') });
  assert.equal(describeError(err), 'pack data/ab/abcd is corrupted: unsupported state');
  assert.equal(exitCodeFor(err), 5);
  assert.equal(exitCodeFor(new InputError('bad')), 2);
  assert.equal(exitCodeFor(Object.assign(new Error('disk full'), { code: 'ENOSPC' })), 7);
});

test('ManualClock resolves sleeps only when advanced', async () => {
  const clock = new ManualClock(0);
  let woke = false;
  const p = clock.sleep(1000).then(() => (woke = true));
  clock.advance(999);
  await Promise.resolve();
  assert.equal(woke, false);
  clock.advance(1);
  await p;
  assert.equal(woke, true);
  assert.equal(clock.now().getTime(), 1000);
});
