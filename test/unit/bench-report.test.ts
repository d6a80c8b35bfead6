/** The bench's targets table (bench/report.ts): each restore target names its worst restore and its seconds. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { evaluateTargets, type Row } from '../../bench/report.ts';

const row = (tool: 'tern' | 'restic', scenario: string, seconds: number, onDiskSeconds: number): Row => ({
  scenario,
  op: 'restore',
  tool,
  bytes: 1e9,
  seconds,
  onDiskSeconds,
  check: 'ok',
});

test('the restore targets: worst ratio as exits and on disk, each with the restore it comes from', () => {
  const rows = [
    row('tern', 'compressible', 1.8, 1.81),
    row('restic', 'compressible', 2.7, 3.46),
    row('tern', 'tree', 4.2, 4.21),
    row('restic', 'tree', 7.0, 7.9),
  ];
  const byName = new Map(evaluateTargets(rows).map((t) => [t.target, t]));
  const exits = byName.get('every restore ≥ 2× restic (worst case, as each command exits)');
  assert.equal(exits?.value, '1.50× (compressible: Tern 1.80 s, restic 2.70 s)');
  assert.equal(exits?.met, false);
  const onDisk = byName.get('every restore ≥ 2× restic (worst case, until the restored data is on disk)');
  assert.equal(onDisk?.value, '1.88× (tree: Tern 4.21 s, restic 7.90 s)');
  assert.equal(onDisk?.met, false);
});
