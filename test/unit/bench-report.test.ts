/** The bench's targets table (bench/report.ts): each restore target names its worst restore and its seconds. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { evaluateTargets, kopiaMarkdown, type Row } from '../../bench/report.ts';

const row = (
  tool: 'tern' | 'restic' | 'kopia',
  scenario: string,
  seconds: number,
  onDiskSeconds: number,
): Row => ({
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

test('the kopia table: kopia seconds over Tern seconds per operation both ran, on disk for restores only', () => {
  const label = () => 'x';
  const backup = (tool: 'tern' | 'kopia', seconds: number): Row => ({
    scenario: 'tree',
    op: 'backup',
    tool,
    bytes: 1e9,
    seconds,
    check: 'ok',
  });
  assert.equal(kopiaMarkdown([row('tern', 'tree', 4, 4), row('restic', 'tree', 7, 8)], label), '');
  const lines = kopiaMarkdown(
    [
      backup('tern', 4),
      backup('kopia', 3),
      row('tern', 'tree', 4, 4.1),
      row('kopia', 'tree', 6, 8.2),
      row('tern', 'random', 2, 2),
      { ...row('kopia', 'random', 1, 1), check: 'FAIL' },
      row('tern', 'compressible', 2, 2),
    ],
    label,
  ).split('\n');
  assert.ok(
    lines.includes('| small-file tree (x) | full backup | 4.00 | 3.00 | 0.75 | – | – | – |'),
    lines.join('\n'),
  );
  assert.ok(lines.includes('| small-file tree (x) | restore | 4.00 | 6.00 | 1.50 | 4.10 | 8.20 | 2.00 |'));
  // A failed kopia restore has no time to compare; an operation kopia did not run has no line.
  assert.ok(lines.includes('| random file (x) | restore | 2.00 | – | – | 2.00 | – | – |'));
  assert.ok(!lines.some((l) => l.startsWith('| compressible')));
});
