/** The shared backoff policy (src/storage/retry.ts) and the secret scrubbing of store errors, without servers. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CancelledError } from '../../src/core/index.ts';
import { mapFailure, scrub } from '../../src/storage/errors.ts';
import {
  backoffDelay,
  DEFAULT_RETRY,
  mapLimit,
  parseRetryAfter,
  withRetry,
} from '../../src/storage/retry.ts';

test('Retry-After: seconds, HTTP date, garbage', () => {
  assert.equal(parseRetryAfter('2'), 2000);
  assert.equal(parseRetryAfter('0.5'), 500);
  const now = Date.parse('2026-01-01T00:00:00Z');
  assert.equal(parseRetryAfter('Thu, 01 Jan 2026 00:00:03 GMT', now), 3000);
  assert.equal(parseRetryAfter('Wed, 31 Dec 2025 23:00:00 GMT', now), 0);
  assert.equal(parseRetryAfter('soon'), undefined);
  assert.equal(parseRetryAfter(undefined), undefined);
});

test('backoff: exponential ceiling with full jitter, capped; Retry-After is a floor with its own cap', () => {
  const p = {
    ...DEFAULT_RETRY,
    baseDelayMs: 100,
    maxDelayMs: 1000,
    maxRetryAfterMs: 5000,
    random: () => 0.999,
  };
  assert.deepEqual(
    [1, 2, 3, 4, 5, 6].map((a) => backoffDelay(a, p)),
    [99, 199, 399, 799, 999, 999],
  );
  assert.equal(backoffDelay(3, { ...p, random: () => 0 }), 0, 'full jitter reaches zero');
  assert.equal(backoffDelay(1, p, 2000), 2000, 'Retry-After wins over a shorter backoff');
  assert.equal(backoffDelay(1, p, 60_000), 5000, 'a huge Retry-After is capped');
});

test('withRetry: retries what classify allows, up to the cap, then throws the last error', async () => {
  let calls = 0;
  const delays: number[] = [];
  await assert.rejects(
    withRetry(
      () => {
        calls++;
        return Promise.reject(new Error(`fail ${calls}`));
      },
      () => ({ retryable: true }),
      { policy: { maxAttempts: 4, baseDelayMs: 1, maxDelayMs: 2 }, onRetry: (i) => delays.push(i.delayMs) },
    ),
    /fail 4/,
  );
  assert.equal(calls, 4);
  assert.equal(delays.length, 3);
  calls = 0;
  await assert.rejects(
    withRetry(
      () => {
        calls++;
        return Promise.reject(new Error('permanent'));
      },
      () => ({ retryable: false }),
    ),
    /permanent/,
  );
  assert.equal(calls, 1);
  assert.equal(
    await withRetry(
      (n) => (n < 3 ? Promise.reject(new Error('x')) : Promise.resolve(n)),
      () => ({ retryable: true }),
      { policy: { baseDelayMs: 1 } },
    ),
    3,
  );
});

test('withRetry: an attempt that outlives timeoutMs is aborted and retried; the caller abort wins', async () => {
  let calls = 0;
  const r = await withRetry(
    (_n, signal) => {
      calls++;
      if (calls > 1) return Promise.resolve('second');
      return new Promise((_res, rej) => signal?.addEventListener('abort', () => rej(new Error('aborted'))));
    },
    () => ({ retryable: false }),
    { timeoutMs: 50, policy: { baseDelayMs: 1 } },
  );
  assert.equal(r, 'second', 'a timed-out attempt is retried even when classify says no');
  const ac = new AbortController();
  setTimeout(() => ac.abort(), 30);
  await assert.rejects(
    withRetry(
      () => Promise.reject(new Error('busy')),
      () => ({ retryable: true, retryAfterMs: 10_000 }),
      {
        signal: ac.signal,
      },
    ),
    CancelledError,
  );
});

test('mapLimit: bounded concurrency, order kept, first real failure reported', async () => {
  let inFlight = 0;
  let peak = 0;
  const out = await mapLimit([1, 2, 3, 4, 5, 6, 7], 3, async (x) => {
    inFlight++;
    peak = Math.max(peak, inFlight);
    await new Promise((r) => setTimeout(r, 5));
    inFlight--;
    return x * 10;
  });
  assert.deepEqual(out, [10, 20, 30, 40, 50, 60, 70]);
  assert.equal(peak, 3);
  await assert.rejects(
    mapLimit([1, 2, 3], 3, async (x, _i, signal) => {
      if (x === 2) throw new Error('part 2 failed');
      await new Promise((_r, rej) => signal.addEventListener('abort', () => rej(new CancelledError())));
    }),
    /part 2 failed/,
  );
});

test('store errors never carry secrets', () => {
  const key = 'c2VjcmV0LWtleS1tYXRlcmlhbC0xMjM0NTY3ODkw';
  const text = `GET https://a.blob.core.windows.net/c/x?sv=2024&sig=abc%2Bdef&se=1 AccountKey=${key}; Authorization: SharedKey a:zzz`;
  const clean = scrub(text, [key]);
  assert.ok(!clean.includes(key) && !clean.includes('abc%2Bdef') && !clean.includes('zzz'), clean);
  const err = mapFailure(
    { status: 403, code: 'AuthenticationFailed', message: `bad key ${key}` },
    { op: 'get', key: 'k', location: 'azblob://a/c/', secrets: [key] },
  );
  assert.equal(err.code, 'AUTH');
  assert.ok(!JSON.stringify({ m: err.message, c: (err.cause as Error).message }).includes(key));
});
