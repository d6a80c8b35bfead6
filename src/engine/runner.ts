/**
 * Runs action records through their state machine (core/model.ts ACTION_TRANSITIONS):
 *   Pending → Running → (AttemptFailed → Running)* → Complete | Failed | Cancelled
 * Every change is written to the catalog first, then announced to subscribers. Failed attempts are retried with
 * exponential backoff (on the injected clock) unless the error is one a retry cannot cure (bad input, auth).
 * Cancel aborts the handler's AbortSignal at any phase, or the backoff wait, or drops a Pending action.
 * Actions of one application run one at a time, in order (a queue per app); a handler may return follow-on
 * actions, which are inserted in the same transaction that completes it and run next in the same queue.
 */
import { performance } from 'node:perf_hooks';
import { CancelledError, errorCodeOf, NotFoundError, type Clock, type ErrorCode } from '../core/index.ts';
import {
  assertTransition,
  errorRecord,
  isTerminal,
  type ActionRun,
  type ActionState,
  type ActionType,
} from '../core/model.ts';
import type { Catalog } from '../catalog/index.ts';

export interface RetryPolicy {
  maxAttempts: number;
  baseDelayMs: number;
  maxDelayMs: number;
}

export const DEFAULT_RETRY: RetryPolicy = { maxAttempts: 3, baseDelayMs: 10_000, maxDelayMs: 5 * 60_000 };

export interface NewAction {
  type: ActionType;
  app?: string;
  policy?: string;
  restorePoint?: string;
  params?: Record<string, unknown>;
  maxAttempts?: number;
}

export interface ActionContext {
  /** The live record (read only; change it through the methods below). */
  readonly action: ActionRun;
  readonly signal: AbortSignal;
  readonly clock: Clock;
  /** Records a phase with start/end times around `fn`. */
  phase<T>(name: string, fn: () => Promise<T>): Promise<T>;
  /** Counters of the current attempt (absolute values); persisted at most every 250 ms. */
  progress(p: { bytesRead?: number; bytesTransferred?: number; progress?: number }): void;
  /** Sets the restore point and/or merges params; persisted at once (survives a restart). */
  update(patch: { restorePoint?: string; params?: Record<string, unknown> }): void;
}

export type ActionHandler = (ctx: ActionContext) => Promise<{ next?: NewAction[] } | void>;

/** Errors a retry cannot cure. */
const PERMANENT: ReadonlySet<ErrorCode> = new Set(['INPUT', 'AUTH', 'FORBIDDEN', 'NOT_FOUND', 'CONFLICT']);

/** Abort reason used when the engine stops: the action is left resumable, not cancelled. */
export class ShutdownError extends Error {
  constructor() {
    super('interrupted: the engine stopped');
    this.name = 'ShutdownError';
  }
}

function sleep(clock: Clock, ms: number, signal: AbortSignal): Promise<void> {
  if (signal.aborted) return Promise.reject(signal.reason as Error);
  if (ms <= 0) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const onAbort = () => reject(signal.reason as Error);
    signal.addEventListener('abort', onAbort, { once: true });
    clock.sleep(ms, signal).then(
      () => {
        signal.removeEventListener('abort', onAbort);
        resolve();
      },
      (err: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(err as Error);
      },
    );
  });
}

export interface RunnerOptions {
  catalog: Catalog;
  clock: Clock;
  handlers: Partial<Record<ActionType, ActionHandler>>;
  retry?: Partial<RetryPolicy>;
  /** Actions running at once across apps (each app's own actions always run one at a time); default 2. */
  concurrency?: number;
  onChange?: (a: ActionRun) => void;
}

export class ActionRunner {
  private readonly catalog: Catalog;
  private readonly clock: Clock;
  private readonly handlers: Partial<Record<ActionType, ActionHandler>>;
  readonly retry: RetryPolicy;
  private readonly onChange: (a: ActionRun) => void;
  private readonly controllers = new Map<string, AbortController>();
  private readonly queues = new Map<string, Promise<void>>();
  private readonly inflight = new Set<Promise<void>>();
  private stopped = false;
  private readonly concurrency: number;
  private running = 0;
  private readonly waiting: (() => void)[] = [];

  constructor(o: RunnerOptions) {
    this.catalog = o.catalog;
    this.clock = o.clock;
    this.handlers = o.handlers;
    this.retry = { ...DEFAULT_RETRY, ...o.retry };
    this.onChange = o.onChange ?? (() => {});
    this.concurrency = Math.max(1, o.concurrency ?? 2);
  }

  private now(): string {
    return this.clock.now().toISOString();
  }

  private save(a: ActionRun): void {
    this.catalog.updateAction(a);
    this.onChange(structuredClone(a));
  }

  private move(a: ActionRun, to: ActionState): void {
    assertTransition(a.state, to);
    a.state = to;
  }

  /** Inserts a Pending action (not queued; see `enqueue`). */
  create(spec: NewAction): ActionRun {
    const a: ActionRun = {
      id: this.catalog.newId('act'),
      type: spec.type,
      state: 'Pending',
      createdAt: this.now(),
      attempt: 0,
      maxAttempts: spec.maxAttempts ?? this.retry.maxAttempts,
      phases: [],
      bytesRead: 0,
      bytesTransferred: 0,
      params: spec.params ?? {},
    };
    if (spec.app) a.app = spec.app;
    if (spec.policy) a.policy = spec.policy;
    if (spec.restorePoint) a.restorePoint = spec.restorePoint;
    this.catalog.insertAction(a);
    this.onChange(structuredClone(a));
    return a;
  }

  /**
   * Records work done outside the queues as an action (DR imports and restores the server runs for a request
   * or an import policy): Running at once, phases and counters through the context, then Complete, Failed or
   * Cancelled; `cancel` aborts it like a queued one. One attempt, and `recover` never reruns it (params.external):
   * whether to redo it is the caller's decision.
   */
  async track<T>(spec: NewAction, fn: (ctx: ActionContext) => Promise<T>, signal?: AbortSignal): Promise<T> {
    const a = this.create({ ...spec, maxAttempts: 1, params: { ...spec.params, external: true } });
    const ac = new AbortController();
    const onAbort = (): void => ac.abort(signal?.reason);
    if (signal?.aborted) onAbort();
    else signal?.addEventListener('abort', onAbort, { once: true });
    this.controllers.set(a.id, ac);
    try {
      this.move(a, 'Running');
      a.attempt = 1;
      a.startedAt = this.now();
      this.save(a);
      try {
        const out = await fn(this.context(a, ac.signal));
        if (ac.signal.aborted) throw ac.signal.reason;
        this.move(a, 'Complete');
        a.endedAt = this.now();
        a.progress = 1;
        this.save(a);
        return out;
      } catch (err) {
        for (const ph of a.phases) ph.endedAt ??= this.now();
        if (ac.signal.aborted && ac.signal.reason instanceof ShutdownError) {
          // Not resumable (see recover): the engine stopping ends it as failed, interrupted.
          this.move(a, 'Failed');
          a.error = { code: 'INTERRUPTED', message: ac.signal.reason.message };
        } else if (ac.signal.aborted) {
          const reason: unknown = ac.signal.reason;
          this.move(a, 'Cancelled');
          a.error = errorRecord(
            reason instanceof CancelledError ? reason : new CancelledError('cancelled', { cause: reason }),
          );
        } else {
          this.move(a, 'Failed');
          a.error = errorRecord(err);
        }
        a.endedAt = this.now();
        this.save(a);
        throw err;
      }
    } finally {
      signal?.removeEventListener('abort', onAbort);
      this.controllers.delete(a.id);
    }
  }

  /** Queues an action (and the follow-ons it produces) behind the other work of its app. */
  enqueue(id: string): void {
    if (this.stopped) return;
    const a = this.catalog.getAction(id);
    const key = a.app ?? '(global)';
    const prev = this.queues.get(key) ?? Promise.resolve();
    const p = prev.then(() => this.chain(id));
    this.queues.set(key, p);
    const tracked = p.finally(() => {
      this.inflight.delete(tracked);
      if (this.queues.get(key) === p) this.queues.delete(key);
    });
    this.inflight.add(tracked);
  }

  /** Resolves when every queued action has settled. */
  async idle(): Promise<void> {
    while (this.inflight.size > 0) await Promise.allSettled([...this.inflight]);
  }

  isActive(id: string): boolean {
    return this.controllers.has(id);
  }

  /** A slot among `concurrency` (actions of different apps run in parallel up to this many). */
  private acquire(): Promise<void> {
    if (this.running < this.concurrency) {
      this.running++;
      return Promise.resolve();
    }
    return new Promise((resolve) => this.waiting.push(resolve));
  }

  private release(): void {
    const next = this.waiting.shift();
    if (next) next();
    else this.running--;
  }

  private async chain(first: string): Promise<void> {
    const todo = [first];
    while (todo.length > 0 && !this.stopped) {
      const id = todo.shift()!;
      await this.acquire();
      try {
        if (this.stopped) return;
        todo.push(...(await this.execute(id)));
      } catch (err) {
        // The catalog itself failed; the action stays as recorded and recovery picks it up at the next start.
        process.emitWarning(`tern: action ${id} could not be run: ${(err as Error).message}`);
      } finally {
        this.release();
      }
    }
  }

  /** Requests cancellation. Pending (queued) actions are cancelled at once; running ones when their work stops. */
  cancel(id: string): ActionRun {
    const a = this.catalog.getAction(id);
    if (isTerminal(a.state)) return a;
    const c = this.controllers.get(id);
    if (c) {
      c.abort(new CancelledError('cancelled by request'));
      return a;
    }
    this.move(a, 'Cancelled');
    a.endedAt = this.now();
    a.error = errorRecord(new CancelledError('cancelled by request'));
    this.save(a);
    return a;
  }

  /**
   * At start: actions a killed process left Running (or AttemptFailed, Pending) are resumed as a new attempt,
   * or failed with a clear reason when no attempt is left. Returns the ids queued.
   */
  recover(): { resumed: string[]; failed: string[] } {
    const resumed: string[] = [];
    const failed: string[] = [];
    for (const a of this.catalog.listActions({
      states: ['Pending', 'Running', 'AttemptFailed'],
      ascending: true,
      limit: 100_000,
    })) {
      if (a.params.external === true) {
        // Tracked work of a process that died: nothing here knows how to redo it.
        for (const ph of a.phases) ph.endedAt ??= this.now();
        this.move(a, a.state === 'Pending' ? 'Cancelled' : 'Failed');
        a.endedAt = this.now();
        a.error = { code: 'INTERRUPTED', message: 'interrupted by a restart of the engine while running' };
        this.save(a);
        failed.push(a.id);
        continue;
      }
      if (a.state === 'Running') {
        for (const ph of a.phases) ph.endedAt ??= this.now();
        const reason = new Error('interrupted by a restart of the engine while running');
        if (a.attempt < a.maxAttempts) {
          this.move(a, 'AttemptFailed');
          a.error = { code: 'INTERRUPTED', message: reason.message };
        } else {
          this.move(a, 'Failed');
          a.endedAt = this.now();
          a.error = { code: 'INTERRUPTED', message: `${reason.message}; no attempt left (${a.maxAttempts})` };
          this.save(a);
          failed.push(a.id);
          continue;
        }
        this.save(a);
      }
      resumed.push(a.id);
      this.enqueue(a.id);
    }
    return { resumed, failed };
  }

  /** Interrupts running work (left AttemptFailed, resumable) and waits for the queues to settle. */
  async shutdown(): Promise<void> {
    this.stopped = true;
    for (const c of this.controllers.values()) c.abort(new ShutdownError());
    await this.idle();
  }

  private async execute(id: string): Promise<string[]> {
    const a = this.catalog.getAction(id);
    if (isTerminal(a.state)) return [];
    const handler = this.handlers[a.type];
    if (!handler) throw new NotFoundError(`no handler for action type "${a.type}"`);
    const ac = new AbortController();
    this.controllers.set(id, ac);
    try {
      for (;;) {
        this.move(a, 'Running');
        a.attempt++;
        a.startedAt ??= this.now();
        a.bytesRead = 0;
        a.bytesTransferred = 0;
        delete a.progress;
        this.save(a);
        const ctx = this.context(a, ac.signal);
        try {
          const out = await handler(ctx);
          if (ac.signal.aborted) throw ac.signal.reason;
          const next: string[] = [];
          this.catalog.tx(() => {
            this.move(a, 'Complete');
            a.endedAt = this.now();
            a.progress = 1;
            delete a.error;
            this.catalog.updateAction(a);
            for (const spec of out?.next ?? []) next.push(this.create(spec).id);
          });
          this.onChange(structuredClone(a));
          return next;
        } catch (err) {
          for (const ph of a.phases) ph.endedAt ??= this.now();
          if (ac.signal.aborted) return this.aborted(a, ac.signal.reason);
          a.error = errorRecord(err);
          if (a.attempt < a.maxAttempts && !PERMANENT.has(errorCodeOf(err))) {
            this.move(a, 'AttemptFailed');
            this.save(a);
            const delay = Math.min(this.retry.maxDelayMs, this.retry.baseDelayMs * 2 ** (a.attempt - 1));
            // The slot is free while waiting: a backoff of minutes must not hold up other apps.
            this.release();
            try {
              await sleep(this.clock, delay, ac.signal);
            } catch {
              return this.aborted(a, ac.signal.reason);
            } finally {
              await this.acquire();
            }
            continue;
          }
          this.move(a, 'Failed');
          a.endedAt = this.now();
          this.save(a);
          return [];
        }
      }
    } finally {
      this.controllers.delete(id);
    }
  }

  private aborted(a: ActionRun, reason: unknown): string[] {
    if (reason instanceof ShutdownError) {
      if (a.state === 'Running') this.move(a, 'AttemptFailed');
      a.error = { code: 'INTERRUPTED', message: reason.message };
      this.save(a);
      return [];
    }
    this.move(a, 'Cancelled');
    a.endedAt = this.now();
    a.error = errorRecord(
      reason instanceof CancelledError ? reason : new CancelledError('cancelled', { cause: reason }),
    );
    this.save(a);
    return [];
  }

  private context(a: ActionRun, signal: AbortSignal): ActionContext {
    let lastSave = 0;
    const attempt = a.attempt;
    return {
      action: a,
      signal,
      clock: this.clock,
      phase: async (name, fn) => {
        const ph: ActionRun['phases'][number] = { name, startedAt: this.now() };
        a.phases.push(ph);
        this.save(a);
        try {
          return await fn();
        } finally {
          ph.endedAt = this.now();
          if (a.attempt === attempt && a.state === 'Running') this.save(a);
        }
      },
      progress: (p) => {
        if (a.state !== 'Running' || a.attempt !== attempt) return;
        if (p.bytesRead !== undefined) a.bytesRead = Math.round(p.bytesRead);
        if (p.bytesTransferred !== undefined) a.bytesTransferred = Math.round(p.bytesTransferred);
        if (p.progress !== undefined) a.progress = Math.max(0, Math.min(1, p.progress));
        const t = performance.now();
        if (t - lastSave >= 250) {
          lastSave = t;
          this.save(a);
        }
      },
      update: (patch) => {
        if (patch.restorePoint) a.restorePoint = patch.restorePoint;
        if (patch.params) a.params = { ...a.params, ...patch.params };
        this.save(a);
      },
    };
  }
}
