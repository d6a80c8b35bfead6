/**
 * The dashboard's derivations (src/web/model.js, plain browser JS, loaded here as an ES module): newest
 * restore point per live tier, the DR path choice when paths disagree, and the wording of frequencies.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { test } from 'node:test';
import { pathToFileURL } from 'node:url';

interface PathLike {
  path: string;
  rpoSeconds?: number;
  restoreMs?: number;
}
interface ModelModule {
  newestByTier(
    points: unknown[],
    app: string,
  ): { byTier: Record<string, { id: string }>; newest?: { id: string } };
  drChoice(app: { paths: PathLike[] }): { fastest?: PathLike; leastLoss?: PathLike; verdict: string };
  frequencyText(f: unknown): string;
  lastRun(policy: string, actions: unknown[]): { state: string } | undefined;
}

const modelUrl = pathToFileURL(path.resolve(import.meta.dirname, '../../src/web/model.js')).href;
const model = (await import(modelUrl)) as ModelModule;

test('newest restore point per live tier; retired tiers do not count', () => {
  const points = [
    {
      id: 'b',
      app: 'shop',
      consistentAt: '2026-01-02T00:00:00Z',
      tiers: [{ kind: 'local', expiredAt: '2026-01-03T00:00:00Z' }, { kind: 'repository' }],
    },
    { id: 'a', app: 'shop', consistentAt: '2026-01-01T00:00:00Z', tiers: [{ kind: 'local' }] },
    { id: 'c', app: 'other', consistentAt: '2026-01-05T00:00:00Z', tiers: [{ kind: 'local' }] },
  ];
  const r = model.newestByTier(points, 'shop');
  assert.equal(r.byTier.local?.id, 'a');
  assert.equal(r.byTier.repository?.id, 'b');
  assert.equal(r.byTier['region-copy'], undefined);
  assert.equal(r.newest?.id, 'b');
});

test('DR choice: fastest restore and least loss, named separately when different paths win', () => {
  const repo = { path: 'repository', rpoSeconds: 300, restoreMs: 90_000 };
  const copy = { path: 'snapshot-copy', rpoSeconds: 3600, restoreMs: 4_000 };
  const c = model.drChoice({ paths: [repo, copy] });
  assert.equal(c.fastest, copy);
  assert.equal(c.leastLoss, repo);
  assert.match(c.verdict, /Fastest back: snapshot-copy \(RTO 4\.0 s\); least loss: repository \(RPO 5 min\)/);
  assert.match(model.drChoice({ paths: [copy] }).verdict, /^Use snapshot-copy: fastest back/);
  assert.match(
    model.drChoice({ paths: [{ path: 'repository', rpoSeconds: 10 }] }).verdict,
    /no restore measured yet/,
  );
  assert.match(model.drChoice({ paths: [] }).verdict, /No restore point imported/);
});

test('frequency wording and the last run of a policy (failed when any of its actions failed)', () => {
  assert.equal(model.frequencyText('@daily'), 'daily');
  assert.equal(model.frequencyText('*/5 * * * *'), 'cron */5 * * * *');
  assert.equal(model.frequencyText({ every: 'day', hour: 2, minute: 5 }), 'daily at 02:05 UTC');
  assert.equal(
    model.frequencyText({ every: 'week', weekday: 1, hour: 0, minute: 0 }),
    'Mondays at 00:00 UTC',
  );
  const actions = [
    { id: 'e2', type: 'export', policy: 'p', state: 'Failed', params: { run: 'b2' } },
    { id: 'b2', type: 'backup', policy: 'p', state: 'Complete', params: {} },
    { id: 'b1', type: 'backup', policy: 'p', state: 'Complete', params: {} },
  ];
  assert.equal(model.lastRun('p', actions)?.state, 'Failed');
  assert.equal(model.lastRun('q', actions), undefined);
});
