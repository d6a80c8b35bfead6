/** The action state machine: phases, retries with backoff, cancel at any point, restart recovery. */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { Catalog } from '../../src/catalog/index.ts';
import { InputError, ManualClock, StorageError } from '../../src/core/index.ts';
import type { ActionRun, ActionState } from '../../src/core/model.ts';
import { ActionRunner, type ActionHandler } from '../../src/engine/runner.ts';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-actions-'));
after(() => fs.rmSync(dir, { recursive: true, force: true }));
let n = 0;

function setup(handlers: Record<string, ActionHandler>, maxAttempts = 3) {
  const file = path.join(dir, `c${++n}`, 'c.db');
  const catalog = Catalog.open(file, { env: {} });
  const clock = new ManualClock(Date.UTC(2026, 0, 1));
  const events: ActionRun[] = [];
  const runner = new ActionRunner({
    catalog,
    clock,
    handlers,
    retry: { maxAttempts, baseDelayMs: 1000, maxDelayMs: 60_000 },
    onChange: (a) => events.push(a),
  });
  return { catalog, clock, runner, events, file };
}

async function until(what: string, cond: () => boolean): Promise<void> {
  for (let i = 0; i < 2000; i++) {
    if (cond()) return;
    await new Promise((r) => setTimeout(r, 2));
  }
  assert.fail(`timed out waiting for ${what}`);
}

const state = (c: Catalog, id: string): ActionState => c.getAction(id).state;

test('a successful action records phases, progress and follow-on actions in its queue', async () => {
  const order: string[] = [];
  const { catalog, runner, events } = setup({
    backup: async (ctx) => {
      await ctx.phase('snapshot', async () => {
        ctx.progress({ bytesRead: 100, progress: 0.5 });
      });
      await ctx.phase('finish', async () => {});
      order.push('backup');
      return { next: [{ type: 'export', app: 'a', params: { run: ctx.action.id } }] };
    },
    export: async () => {
      order.push('export');
    },
  });
  const a = runner.create({ type: 'backup', app: 'a' });
  runner.enqueue(a.id);
  await runner.idle();
  const done = catalog.getAction(a.id);
  assert.equal(done.state, 'Complete');
  assert.equal(done.attempt, 1);
  assert.deepEqual(
    done.phases.map((p) => [p.name, typeof p.endedAt]),
    [
      ['snapshot', 'string'],
      ['finish', 'string'],
    ],
  );
  assert.equal(done.progress, 1);
  assert.deepEqual(order, ['backup', 'export']);
  const exp = catalog.listActions({ run: a.id, type: 'export' });
  assert.equal(exp.length, 1);
  assert.equal(exp[0]?.state, 'Complete');
  const seen = events.filter((e) => e.id === a.id).map((e) => e.state);
  assert.deepEqual([...new Set(seen)], ['Pending', 'Running', 'Complete']);
  catalog.close();
});

test('failed attempts retry with exponential backoff on the clock, then complete', async () => {
  let calls = 0;
  const { catalog, clock, runner } = setup({
    backup: async () => {
      calls++;
      if (calls < 3) throw new StorageError(`flaky ${calls}`, { cause: new Error('ECONNRESET') });
    },
  });
  const a = runner.create({ type: 'backup', app: 'a' });
  runner.enqueue(a.id);
  await until('first failure', () => state(catalog, a.id) === 'AttemptFailed');
  assert.deepEqual(catalog.getAction(a.id).error, {
    code: 'STORAGE',
    message: 'flaky 1',
    cause: { code: 'Error', message: 'ECONNRESET' },
  });
  clock.advance(999);
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(calls, 1, 'no retry before the backoff');
  clock.advance(1);
  await until('second failure', () => calls === 2 && state(catalog, a.id) === 'AttemptFailed');
  clock.advance(1999);
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(calls, 2, 'second backoff is doubled');
  clock.advance(1);
  await runner.idle();
  const done = catalog.getAction(a.id);
  assert.equal(done.state, 'Complete');
  assert.equal(done.attempt, 3);
  assert.equal(done.error, undefined);
  catalog.close();
});

test('permanent errors fail at once; exhausted attempts fail with the cause chain', async () => {
  const { catalog, clock, runner } = setup(
    {
      backup: () => Promise.reject(new InputError('bad input')),
      export: () => Promise.reject(new StorageError('down', { cause: new Error('refused') })),
    },
    2,
  );
  const a = runner.create({ type: 'backup', app: 'a' });
  runner.enqueue(a.id);
  await runner.idle();
  assert.equal(state(catalog, a.id), 'Failed');
  assert.equal(catalog.getAction(a.id).attempt, 1);
  const b = runner.create({ type: 'export', app: 'b' });
  runner.enqueue(b.id);
  await until('attempt failed', () => state(catalog, b.id) === 'AttemptFailed');
  clock.advance(1000);
  await runner.idle();
  const f = catalog.getAction(b.id);
  assert.equal(f.state, 'Failed');
  assert.equal(f.attempt, 2);
  assert.deepEqual(f.error, {
    code: 'STORAGE',
    message: 'down',
    cause: { code: 'Error', message: 'refused' },
  });
  assert.ok(f.endedAt);
  catalog.close();
});

test('cancel works while running, during backoff and while queued', async () => {
  let started = 0;
  const { catalog, runner } = setup({
    backup: (ctx) =>
      ctx.phase('long', () => {
        started++;
        return new Promise((_r, reject) =>
          ctx.signal.addEventListener('abort', () => reject(ctx.signal.reason as Error)),
        );
      }),
    export: () => Promise.reject(new StorageError('flaky')),
  });
  const running = runner.create({ type: 'backup', app: 'a' });
  const queued = runner.create({ type: 'backup', app: 'a' });
  runner.enqueue(running.id);
  runner.enqueue(queued.id);
  await until('running', () => started === 1);
  runner.cancel(queued.id);
  assert.equal(state(catalog, queued.id), 'Cancelled');
  runner.cancel(running.id);
  await until('cancelled', () => state(catalog, running.id) === 'Cancelled');
  const r = catalog.getAction(running.id);
  assert.equal(r.error?.code, 'CANCELLED');
  assert.ok(r.phases[0]?.endedAt, 'the phase is closed');

  const backoff = runner.create({ type: 'export', app: 'b' });
  runner.enqueue(backoff.id);
  await until('backoff', () => state(catalog, backoff.id) === 'AttemptFailed');
  runner.cancel(backoff.id);
  await runner.idle();
  assert.equal(state(catalog, backoff.id), 'Cancelled');
  assert.equal(started, 1, 'the cancelled queued action never ran');
  catalog.close();
});

test('restart recovery: Running actions resume as a new attempt or fail with a clear reason', async () => {
  const file = path.join(dir, 'recovery', 'c.db');
  const catalog = Catalog.open(file, { env: {} });
  const clock = new ManualClock(Date.UTC(2026, 0, 1));
  let release: () => void = () => {};
  const first = new ActionRunner({
    catalog,
    clock,
    retry: { maxAttempts: 2 },
    handlers: {
      export: (ctx) => ctx.phase('export', () => new Promise<void>((r) => (release = r))),
    },
  });
  const a = first.create({ type: 'export', app: 'a' });
  first.enqueue(a.id);
  await until('running', () => state(catalog, a.id) === 'Running');
  // Simulate a kill: the process is gone, the row says Running.
  const last = { ...catalog.getAction(a.id), id: 'act-last', attempt: 2 };
  catalog.insertAction(last);
  release();
  await first.idle();
  catalog.updateAction({ ...catalog.getAction(a.id), state: 'Running', endedAt: undefined, progress: 0.3 });
  const pending = { ...last, id: 'act-pending', state: 'Pending' as const, attempt: 0 };
  catalog.insertAction(pending);

  let ran = 0;
  const second = new ActionRunner({
    catalog,
    clock,
    retry: { maxAttempts: 2 },
    handlers: { export: () => Promise.resolve(void ran++) },
  });
  const r = second.recover();
  assert.deepEqual(r.failed, ['act-last']);
  assert.deepEqual(r.resumed.sort(), [a.id, 'act-pending'].sort());
  await second.idle();
  const resumed = catalog.getAction(a.id);
  assert.equal(resumed.state, 'Complete');
  assert.equal(resumed.attempt, 2);
  const failed = catalog.getAction('act-last');
  assert.equal(failed.state, 'Failed');
  assert.match(failed.error?.message ?? '', /interrupted by a restart.*no attempt left/);
  assert.equal(state(catalog, 'act-pending'), 'Complete');
  assert.equal(ran, 2);
  assert.equal(catalog.listActions({ states: ['Running', 'Pending', 'AttemptFailed'] }).length, 0);
  catalog.close();
});

test('shutdown interrupts running work as AttemptFailed; the next start resumes it', async () => {
  const { catalog, runner, clock } = setup({
    backup: (ctx) =>
      new Promise((_r, reject) =>
        ctx.signal.addEventListener('abort', () => reject(ctx.signal.reason as Error)),
      ),
  });
  const a = runner.create({ type: 'backup', app: 'a' });
  runner.enqueue(a.id);
  await until('running', () => state(catalog, a.id) === 'Running');
  await runner.shutdown();
  assert.equal(state(catalog, a.id), 'AttemptFailed');
  assert.equal(catalog.getAction(a.id).error?.code, 'INTERRUPTED');
  const next = new ActionRunner({ catalog, clock, handlers: { backup: () => Promise.resolve() } });
  next.recover();
  await next.idle();
  assert.equal(state(catalog, a.id), 'Complete');
  catalog.close();
});

test('actions of different apps share a concurrency limit; a backoff frees its slot', async () => {
  const file = path.join(dir, 'conc', 'c.db');
  const catalog = Catalog.open(file, { env: {} });
  const clock = new ManualClock(Date.UTC(2026, 0, 1));
  let active = 0;
  let peak = 0;
  const releases: (() => void)[] = [];
  let flaky = 0;
  const runner = new ActionRunner({
    catalog,
    clock,
    concurrency: 1,
    retry: { maxAttempts: 2, baseDelayMs: 1000 },
    handlers: {
      backup: async () => {
        active++;
        peak = Math.max(peak, active);
        await new Promise<void>((r) => releases.push(r));
        active--;
      },
      export: () => (flaky++ === 0 ? Promise.reject(new StorageError('flaky')) : Promise.resolve()),
    },
  });
  const f = runner.create({ type: 'export', app: 'f' });
  runner.enqueue(f.id);
  await until('backoff', () => state(catalog, f.id) === 'AttemptFailed');
  const a = runner.create({ type: 'backup', app: 'a' });
  const b = runner.create({ type: 'backup', app: 'b' });
  runner.enqueue(a.id);
  runner.enqueue(b.id);
  await until('a running while f waits its backoff', () => releases.length === 1);
  assert.equal(state(catalog, b.id), 'Pending');
  clock.advance(1000);
  releases.shift()!();
  await until('b running', () => releases.length === 1 && state(catalog, a.id) === 'Complete');
  releases.shift()!();
  await runner.idle();
  assert.equal(peak, 1);
  for (const id of [a.id, b.id, f.id]) assert.equal(state(catalog, id), 'Complete');
  catalog.close();
});

test('track: work run outside the queues is an action (phases, counters, errors, cancel); recovery never reruns it', async () => {
  let handlerRuns = 0;
  const { catalog, runner, events, file } = setup({
    restore: () => Promise.resolve(void handlerRuns++),
  });
  const out = await runner.track({ type: 'import', app: 'shop', params: { stream: 's1' } }, async (ctx) => {
    await ctx.phase('import', async () => ctx.progress({ bytesRead: 10, bytesTransferred: 5 }));
    ctx.update({ restorePoint: 'rp-2', params: { imported: 2 } });
    return 'ok';
  });
  assert.equal(out, 'ok');
  const [done] = catalog.listActions({ type: 'import' });
  assert.ok(done);
  assert.equal(done.state, 'Complete');
  assert.equal(done.restorePoint, 'rp-2');
  assert.deepEqual(done.params, { stream: 's1', external: true, imported: 2 });
  assert.deepEqual(
    done.phases.map((p) => [p.name, typeof p.endedAt]),
    [['import', 'string']],
  );
  assert.equal(done.bytesTransferred, 5);
  assert.deepEqual(
    [...new Set(events.filter((e) => e.id === done.id).map((e) => e.state))],
    ['Pending', 'Running', 'Complete'],
  );

  // An error reaches the caller and is recorded: one attempt, no retry.
  await assert.rejects(
    runner.track({ type: 'import', app: 'shop' }, () => Promise.reject(new StorageError('vault gone'))),
    /vault gone/,
  );
  const failed = catalog.listActions({ type: 'import', state: 'Failed' })[0];
  assert.equal(failed?.attempt, 1);
  assert.equal(failed?.error?.message, 'vault gone');

  // `tern actions cancel` aborts it like a queued action; so does the caller's signal.
  const started = runner.track({ type: 'restore', app: 'shop' }, (ctx) =>
    ctx.phase(
      'restore',
      () =>
        new Promise((_r, reject) =>
          ctx.signal.addEventListener('abort', () => reject(ctx.signal.reason as Error)),
        ),
    ),
  );
  const running = catalog.listActions({ type: 'restore', state: 'Running' })[0];
  assert.ok(running);
  runner.cancel(running.id);
  await assert.rejects(started);
  assert.equal(state(catalog, running.id), 'Cancelled');
  const ac = new AbortController();
  const aborted = runner.track(
    { type: 'restore', app: 'shop' },
    (ctx) =>
      new Promise((_r, reject) =>
        ctx.signal.addEventListener('abort', () => reject(ctx.signal.reason as Error)),
      ),
    ac.signal,
  );
  ac.abort(new Error('client went away'));
  await assert.rejects(aborted);
  assert.equal(catalog.listActions({ type: 'restore', state: 'Cancelled' }).length, 2);

  // A killed process leaves one Running: the next start fails it, and no handler runs it.
  void runner.track({ type: 'restore', app: 'shop' }, () => new Promise(() => {}));
  const left = catalog.listActions({ type: 'restore', state: 'Running' })[0];
  assert.ok(left);
  catalog.close();
  const catalog2 = Catalog.open(file, { env: {} });
  const second = new ActionRunner({
    catalog: catalog2,
    clock: new ManualClock(Date.UTC(2026, 0, 2)),
    handlers: { restore: () => Promise.resolve(void handlerRuns++) },
  });
  const r = second.recover();
  assert.deepEqual(r, { resumed: [], failed: [left.id] });
  await second.idle();
  const after = catalog2.getAction(left.id);
  assert.equal(after.state, 'Failed');
  assert.equal(after.error?.code, 'INTERRUPTED');
  assert.equal(handlerRuns, 0);
  catalog2.close();
});

test('track: the engine stopping ends tracked work as Failed (INTERRUPTED), not resumable', async () => {
  const { catalog, runner } = setup({});
  const work = runner.track({ type: 'import', app: 'shop' }, (ctx) =>
    ctx.phase(
      'import',
      () =>
        new Promise((_r, reject) =>
          ctx.signal.addEventListener('abort', () => reject(ctx.signal.reason as Error)),
        ),
    ),
  );
  await runner.shutdown();
  await assert.rejects(work, /engine stopped/);
  const [a] = catalog.listActions({ type: 'import' });
  assert.equal(a?.state, 'Failed');
  assert.equal(a?.error?.code, 'INTERRUPTED');
  assert.equal(typeof a?.phases[0]?.endedAt, 'string');
  catalog.close();
});
