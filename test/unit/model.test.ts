import { test } from 'node:test';
import assert from 'node:assert/strict';
import { InputError } from '../../src/core/errors.ts';
import {
  PolicySchema,
  ProfileSchema,
  assertTransition,
  errorRecord,
  frequencyToCron,
  parseInput,
  redactProfile,
} from '../../src/core/model.ts';

const base = { name: 'nightly', app: 'shop', frequency: '@daily', retention: { daily: 7 } };

test('policy: presets, cron and {every} frequencies parse and map to cron', () => {
  const p = parseInput(PolicySchema, base, 'policy');
  assert.equal(p.paused, false);
  assert.equal(p.retention.latest, 1);
  assert.equal(frequencyToCron(p.frequency), '0 0 * * *');
  const c = parseInput(PolicySchema, { ...base, frequency: '*/15 2-4 * * 1-5' }, 'policy');
  assert.equal(frequencyToCron(c.frequency), '*/15 2-4 * * 1-5');
  const e = parseInput(PolicySchema, { ...base, frequency: { every: 'hour', minute: 15 } }, 'policy');
  assert.equal(frequencyToCron(e.frequency), '15 * * * *');
});

test('policy: bad cron, negative retention and bad export give InputError with field paths', () => {
  assert.throws(
    () => parseInput(PolicySchema, { ...base, frequency: '61 * * * *' }, 'policy'),
    (err: unknown) => err instanceof InputError && /frequency/.test(err.message),
  );
  try {
    parseInput(PolicySchema, { ...base, retention: { daily: -1 }, export: { mode: 'datamover' } }, 'policy');
    assert.fail('expected InputError');
  } catch (err) {
    assert.ok(err instanceof InputError);
    const paths = (err.details.fields as { path: string }[]).map((f) => f.path).sort();
    assert.deepEqual(paths, ['export.locationProfile', 'retention.daily']);
  }
});

test('profiles: secrets redacted to names', () => {
  const p = parseInput(
    ProfileSchema,
    { name: 'blob', kind: 'location', url: 'file:///tmp/x', secrets: { key: 's3cr3t', passphrase: 'pw' } },
    'profile',
  );
  const r = redactProfile(p);
  assert.deepEqual(r.secretNames, ['key', 'passphrase']);
  assert.ok(!JSON.stringify(r).includes('s3cr3t'));
});

test('action state machine and error cause chain', () => {
  assertTransition('Pending', 'Running');
  assertTransition('Running', 'AttemptFailed');
  assertTransition('AttemptFailed', 'Running');
  assert.throws(() => assertTransition('Complete', 'Running'), InputError);
  const rec = errorRecord(new InputError('outer', { cause: new Error('inner') }));
  assert.equal(rec.code, 'INPUT');
  assert.equal(rec.cause?.message, 'inner');
});
