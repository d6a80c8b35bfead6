/**
 * Retry with capped exponential backoff and full jitter, shared by the cloud object stores.
 * The SDKs' own retries are switched off so that one policy (attempt cap, Retry-After, cancellation) holds for every backend.
 */
import { CancelledError } from '../core/base.ts';

export interface RetryPolicy {
  /** Attempts in all, the first included. */
  maxAttempts: number;
  /** Backoff before retry n (1-based) is random in [0, min(maxDelayMs, baseDelayMs * 2^(n-1))]. */
  baseDelayMs: number;
  maxDelayMs: number;
  /** A server's Retry-After is honoured up to this long; longer asks are capped. */
  maxRetryAfterMs: number;
  /** Injected for tests; defaults to Math.random. */
  random?: () => number;
}

export const DEFAULT_RETRY: RetryPolicy = {
  maxAttempts: 8,
  baseDelayMs: 200,
  maxDelayMs: 20_000,
  maxRetryAfterMs: 60_000,
};

/** What a backend says about one failed attempt. */
export interface RetryVerdict {
  retryable: boolean;
  /** From a Retry-After (or x-ms-retry-after-ms) header. */
  retryAfterMs?: number;
}

export interface RetryContext {
  signal?: AbortSignal;
  /**
   * Time limit of one attempt: its signal fires after this long and the attempt counts as a retryable failure.
   * The SDKs' own timers do not cover this (smithy's only warns by default, Azure's is a server-side limit).
   */
  timeoutMs?: number;
  policy?: Partial<RetryPolicy>;
  /** Called before each backoff sleep (logging, metrics, tests). */
  onRetry?: (info: { attempt: number; delayMs: number; error: unknown }) => void;
}

/** HTTP statuses worth another try: timeouts, throttling and transient server errors. */
export const RETRYABLE_STATUS = new Set([408, 429, 500, 502, 503, 504]);

/** Socket-level failures worth another try. */
export const RETRYABLE_NET_CODES = new Set([
  'ECONNRESET',
  'ECONNREFUSED',
  'ECONNABORTED',
  'EPIPE',
  'ETIMEDOUT',
  'ESOCKETTIMEDOUT',
  'EAI_AGAIN',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'UND_ERR_SOCKET',
  'UND_ERR_CONNECT_TIMEOUT',
]);

/** Network error codes anywhere on the cause chain (SDKs wrap socket errors one or two levels deep). */
export function netErrorCode(err: unknown): string | undefined {
  let cur: unknown = err;
  for (let i = 0; i < 5 && cur !== null && typeof cur === 'object'; i++) {
    const code = (cur as { code?: unknown }).code;
    if (typeof code === 'string' && RETRYABLE_NET_CODES.has(code)) return code;
    cur = (cur as { cause?: unknown }).cause;
  }
  return undefined;
}

/** Retry-After as delta-seconds or an HTTP date, in ms; undefined when absent or unparsable. */
export function parseRetryAfter(value: string | null | undefined, now = Date.now()): number | undefined {
  if (value === null || value === undefined || value.trim() === '') return undefined;
  const v = value.trim();
  if (/^\d+(\.\d+)?$/.test(v)) return Math.round(Number(v) * 1000);
  const t = Date.parse(v);
  return Number.isNaN(t) ? undefined : Math.max(0, t - now);
}

/** The delay before retry number `attempt` (1-based), honouring a server's Retry-After as a floor. */
export function backoffDelay(attempt: number, policy: RetryPolicy, retryAfterMs?: number): number {
  const random = policy.random ?? Math.random;
  const ceiling = Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** (attempt - 1));
  const jittered = Math.floor(random() * ceiling);
  if (retryAfterMs === undefined) return jittered;
  return Math.min(policy.maxRetryAfterMs, Math.max(retryAfterMs, jittered));
}

/** Sleeps `ms`, rejecting with CancelledError as soon as the signal fires. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(new CancelledError('operation cancelled', { cause: signal.reason }));
      return;
    }
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(new CancelledError('operation cancelled', { cause: signal?.reason }));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/**
 * Runs `fn` until it succeeds, `classify` calls its failure permanent, attempts run out or the signal fires.
 * The last error is thrown as is: callers map it to a typed error once.
 */
export async function withRetry<T>(
  fn: (attempt: number, signal: AbortSignal | undefined) => Promise<T>,
  classify: (err: unknown) => RetryVerdict,
  ctx: RetryContext = {},
): Promise<T> {
  const policy: RetryPolicy = { ...DEFAULT_RETRY, ...ctx.policy };
  for (let attempt = 1; ; attempt++) {
    if (ctx.signal?.aborted) throw new CancelledError('operation cancelled', { cause: ctx.signal.reason });
    const timeout = ctx.timeoutMs ? AbortSignal.timeout(ctx.timeoutMs) : undefined;
    const signal = timeout && ctx.signal ? AbortSignal.any([ctx.signal, timeout]) : (timeout ?? ctx.signal);
    try {
      return await fn(attempt, signal);
    } catch (caught) {
      if (ctx.signal?.aborted) throw new CancelledError('operation cancelled', { cause: ctx.signal.reason });
      const timedOut = timeout?.aborted === true;
      const err = timedOut
        ? Object.assign(new Error(`no answer within ${ctx.timeoutMs} ms`, { cause: caught }), {
            code: 'ETIMEDOUT',
          })
        : caught;
      const verdict = timedOut ? { retryable: true } : classify(err);
      if (!verdict.retryable || attempt >= policy.maxAttempts) throw err;
      const delayMs = backoffDelay(attempt, policy, verdict.retryAfterMs);
      ctx.onRetry?.({ attempt, delayMs, error: err });
      await sleep(delayMs, ctx.signal);
    }
  }
}

/** Runs `fn` over `items` with at most `limit` in flight; the first failure aborts the rest. */
export async function mapLimit<I, O>(
  items: readonly I[],
  limit: number,
  fn: (item: I, index: number, signal: AbortSignal) => Promise<O>,
  signal?: AbortSignal,
): Promise<O[]> {
  const ac = new AbortController();
  const onAbort = (): void => ac.abort(signal?.reason);
  signal?.addEventListener('abort', onAbort, { once: true });
  const out = new Array<O>(items.length);
  let next = 0;
  let failed = false;
  const worker = async (): Promise<void> => {
    while (!failed && next < items.length) {
      const i = next++;
      try {
        out[i] = await fn(items[i]!, i, ac.signal);
      } catch (err) {
        failed = true;
        ac.abort(err);
        throw err;
      }
    }
  };
  try {
    const results = await Promise.allSettled(
      Array.from({ length: Math.min(limit, items.length) }, () => worker()),
    );
    // Report the first real failure, not a sibling's cancellation caused by it.
    const rejected = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
    const first = rejected.find((r) => !(r.reason instanceof CancelledError)) ?? rejected[0];
    if (first) throw first.reason;
    return out;
  } finally {
    signal?.removeEventListener('abort', onAbort);
  }
}

/** Time allowed per MiB carried on top of a request's base limit (a floor of 256 KiB/s before an attempt is given up). */
const MS_PER_MIB = 4000;
/** `get` does not know the size: allow for a pack (16 MiB). */
export const GET_BYTES_GUESS = 16 * 1024 * 1024;

/** Whole-request deadline of one attempt carrying `bytes`. */
export function attemptTimeoutMs(baseMs: number, bytes: number): number {
  return baseMs + Math.ceil(bytes / (1024 * 1024)) * MS_PER_MIB;
}
