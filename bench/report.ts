/**
 * The results table (Markdown), the targets from issue 3 checked against it, and the machine description that
 * makes a table comparable to another one.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import os from 'node:os';
import { formatBytes } from '../src/core/index.ts';
import type { ToolName } from './tools.ts';

export type Check = 'ok' | 'FAIL' | 'ERROR' | 'skipped';

export interface Row {
  /** Stable keys: scenario and operation. */
  scenario: string;
  op: string;
  tool: ToolName;
  /** Logical bytes the operation covers (the source size), for MB/s. */
  bytes: number;
  seconds?: number;
  peakRssBytes?: number;
  /** Growth of the repository on disk caused by a backup. */
  storedBytes?: number;
  /**
   * Restores: seconds until the restored data is on disk, i.e. the command plus a `sync -f` of the target's
   * filesystem timed right after it. A tool that flushes before it exits (Tern's restores) leaves that
   * sync little to do; one that leaves its writes in the page cache (restic) pays for them here.
   */
  onDiskSeconds?: number;
  /**
   * Tern's restores of a full image backup: seconds the device alone takes to move the same bytes, cold
   * (`deviceFloor`: the repository's packs read while the image's size is written with O_DIRECT).
   */
  floorSeconds?: number;
  check: Check;
  note?: string;
  /** The restic row this one is compared with (defaults to the same scenario and operation). */
  baseline?: { scenario: string; op: string };
}

export interface Machine {
  cpus: number;
  cpuModel: string;
  memory: string;
  kernel: string;
  filesystem: string;
  node: string;
  loadBefore: string;
  loadAfter?: string;
  versions: Partial<Record<ToolName, string>>;
  ternCommit: string;
}

export const SCENARIO_LABELS: Record<string, string> = {
  random: 'random file',
  overwrite: 'random file, 1% scattered overwrite',
  compressible: 'compressible text file',
  files: 'random file in a directory',
  tree: 'small-file tree',
  chunks: 'random image, 4 KiB chunks',
};

export const OP_LABELS: Record<string, string> = {
  backup: 'full backup',
  incremental: 'incremental (--parent, no ranges)',
  'incremental-ranges': 'incremental (--parent + --changed-ranges)',
  restore: 'restore',
  'restore-ranges': 'restore of the ranges snapshot',
};

const MiB = 1024 * 1024;

export function throughput(row: Row): number | undefined {
  return row.seconds !== undefined && row.seconds > 0 && row.check === 'ok'
    ? row.bytes / 1e6 / row.seconds
    : undefined;
}

/** The restic row a row is compared with. */
function resticRow(row: Row, rows: Row[]): Row | undefined {
  const base = row.baseline ?? { scenario: row.scenario, op: row.op };
  return rows.find((r) => r.tool === 'restic' && r.scenario === base.scenario && r.op === base.op);
}

/** Tern (or kopia) throughput divided by restic's for the comparable operation. */
export function ratioToRestic(row: Row, rows: Row[]): number | undefined {
  const restic = resticRow(row, rows);
  const mine = throughput(row);
  const theirs = restic ? throughput(restic) : undefined;
  return mine !== undefined && theirs !== undefined ? mine / theirs : undefined;
}

/** The same ratio for restores, until the restored data is on disk (restic's on-disk seconds ÷ this row's). */
export function onDiskRatioToRestic(row: Row, rows: Row[]): number | undefined {
  const restic = resticRow(row, rows);
  const mine = row.check === 'ok' ? row.onDiskSeconds : undefined;
  const theirs = restic?.check === 'ok' ? restic.onDiskSeconds : undefined;
  return mine !== undefined && theirs !== undefined && mine > 0 ? theirs / mine : undefined;
}

const fmt = (n: number | undefined, digits: number) =>
  n === undefined || !Number.isFinite(n) ? '–' : n.toFixed(digits);

export function markdownTable(rows: Row[], sizeLabel: (scenario: string) => string): string {
  const head =
    '| Scenario | Operation | Tool | Seconds | MB/s | × restic | On disk s | × restic on disk | Peak RSS MiB | Stored MiB | Check |';
  const sep = '| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |';
  const lines = rows.map((r) => {
    const check =
      r.check === 'ok' ? 'ok' : `**${r.check}**${r.note ? ` ${r.note.replaceAll('|', '/')}` : ''}`;
    return `| ${SCENARIO_LABELS[r.scenario] ?? r.scenario} (${sizeLabel(r.scenario)}) | ${OP_LABELS[r.op] ?? r.op} | ${r.tool} | ${fmt(r.seconds, 2)} | ${fmt(throughput(r), 0)} | ${fmt(ratioToRestic(r, rows), 2)} | ${fmt(r.onDiskSeconds, 2)} | ${fmt(onDiskRatioToRestic(r, rows), 2)} | ${fmt(r.peakRssBytes !== undefined ? r.peakRssBytes / MiB : undefined, 0)} | ${fmt(r.storedBytes !== undefined ? r.storedBytes / MiB : undefined, 1)} | ${check} |`;
  });
  return [head, sep, ...lines].join('\n') + '\n';
}

/**
 * Tern beside kopia, operation by operation, where both ran (empty when kopia did not). Kopia restores leave
 * their writes in the page cache as restic's do, so the on-disk column compares the same work.
 */
export function kopiaMarkdown(rows: Row[], sizeLabel: (scenario: string) => string): string {
  const pairs = rows
    .filter((r) => r.tool === 'tern')
    .map((t) => ({
      t,
      k: rows.find((r) => r.tool === 'kopia' && r.scenario === t.scenario && r.op === t.op),
    }))
    .filter((p): p is { t: Row; k: Row } => p.k !== undefined);
  if (!pairs.length) return '';
  const ok = (r: Row, v: number | undefined) => (r.check === 'ok' ? v : undefined);
  /** Tern's seconds, kopia's, and kopia's ÷ Tern's: three cells. */
  const cells = (mine: number | undefined, theirs: number | undefined) =>
    `${fmt(mine, 2)} | ${fmt(theirs, 2)} | ${fmt(mine !== undefined && theirs !== undefined && mine > 0 ? theirs / mine : undefined, 2)}`;
  const lines = pairs.map(({ t, k }) => {
    const exits = cells(ok(t, t.seconds), ok(k, k.seconds));
    const onDisk = t.op.startsWith('restore')
      ? cells(ok(t, t.onDiskSeconds), ok(k, k.onDiskSeconds))
      : '– | – | –';
    return `| ${SCENARIO_LABELS[t.scenario] ?? t.scenario} (${sizeLabel(t.scenario)}) | ${OP_LABELS[t.op] ?? t.op} | ${exits} | ${onDisk} |`;
  });
  return (
    [
      'Tern against kopia (same data, same run; × kopia = kopia seconds ÷ Tern seconds, so above 1 Tern is faster):',
      '',
      '| Scenario | Operation | Tern s | kopia s | × kopia | Tern on disk s | kopia on disk s | × kopia on disk |',
      '| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |',
      ...lines,
    ].join('\n') + '\n'
  );
}

/** One line on the device floors measured (empty when none were). */
export function floorMarkdown(rows: Row[]): string {
  const measured = rows.filter((r) => r.floorSeconds !== undefined);
  if (!measured.length) return '';
  const each = measured.map(
    (r) =>
      `${SCENARIO_LABELS[r.scenario] ?? r.scenario} ${fmt(r.floorSeconds, 2)} s (Tern ${fmt(r.seconds, 2)} s, ${fmt(r.seconds! - r.floorSeconds!, 2)} s over it)`,
  );
  return `The device alone (the restore's bytes moved with nothing computed: the cold repository's packs read with \`cat\` while the image's size is written with \`dd oflag=direct conv=fsync\`): ${each.join('; ')}.`;
}

export interface TargetResult {
  target: string;
  value: string;
  met: boolean | undefined;
}

/**
 * A restore row's seconds beside restic's and, where measured, the device's own time for its bytes: with the
 * floor, how far the restore is from what the device allows (and 2× restic from it) can be read off.
 */
function restoreDetail(row: Row, rows: Row[], onDisk = false): string {
  const restic = resticRow(row, rows);
  const secs = (r: Row | undefined) => (onDisk ? r?.onDiskSeconds : r?.seconds);
  const parts = [`${row.scenario}: Tern ${fmt(secs(row), 2)} s, restic ${fmt(secs(restic), 2)} s`];
  if (row.floorSeconds !== undefined) parts.push(`the device alone ${fmt(row.floorSeconds, 2)} s`);
  return parts.join('; ');
}

/** The performance targets of issue 3, evaluated on Tern's rows. */
export function evaluateTargets(rows: Row[]): TargetResult[] {
  const tern = rows.filter((r) => r.tool === 'tern');
  const ratio = (scenario: string, op: string) => {
    const r = tern.find((x) => x.scenario === scenario && x.op === op);
    return r ? ratioToRestic(r, rows) : undefined;
  };
  const out: TargetResult[] = [];
  const atLeast = (target: string, v: number | undefined, min: number) =>
    out.push({
      target,
      value: v === undefined ? 'not measured' : `${v.toFixed(2)}×`,
      met: v === undefined ? undefined : v >= min,
    });
  atLeast('full backup of the random file ≥ 2.5× restic throughput', ratio('random', 'backup'), 2.5);
  const restores = tern.filter((r) => r.op === 'restore').map((r) => ratioToRestic(r, rows));
  const worstRestore =
    restores.every((v) => v !== undefined) && restores.length
      ? Math.min(...(restores as number[]))
      : undefined;
  atLeast('every restore ≥ 2× restic (worst case, as each command exits)', worstRestore, 2);
  const worstRow = tern.find((r) => r.op === 'restore' && ratioToRestic(r, rows) === worstRestore);
  if (worstRow && worstRestore !== undefined)
    out[out.length - 1]!.value += ` (${restoreDetail(worstRow, rows)})`;
  const onDisk = tern.filter((r) => r.op === 'restore').map((r) => onDiskRatioToRestic(r, rows));
  const worstOnDisk =
    onDisk.every((v) => v !== undefined) && onDisk.length ? Math.min(...(onDisk as number[])) : undefined;
  atLeast('every restore ≥ 2× restic (worst case, until the restored data is on disk)', worstOnDisk, 2);
  const worstOnDiskRow = tern.find((r) => r.op === 'restore' && onDiskRatioToRestic(r, rows) === worstOnDisk);
  if (worstOnDiskRow && worstOnDisk !== undefined)
    out[out.length - 1]!.value += ` (${restoreDetail(worstOnDiskRow, rows, true)})`;
  atLeast(
    'incremental with changed ranges ≥ 10× restic incremental',
    ratio('overwrite', 'incremental-ranges'),
    10,
  );
  const all = tern.map((r) => ratioToRestic(r, rows)).filter((v): v is number => v !== undefined);
  atLeast('never slower than restic (worst ratio)', all.length ? Math.min(...all) : undefined, 1);
  const rss = tern
    .map((r) => r.peakRssBytes)
    .filter((v): v is number => v !== undefined && Number.isFinite(v));
  const maxRss = rss.length ? Math.max(...rss) : undefined;
  out.push({
    target: 'peak RSS ≤ 512 MiB',
    value: maxRss === undefined ? 'not measured' : `${(maxRss / MiB).toFixed(0)} MiB`,
    met: maxRss === undefined ? undefined : maxRss <= 512 * MiB,
  });
  const bad = tern.filter((r) => r.check !== 'ok' && r.check !== 'skipped');
  out.push({
    target: 'every Tern backup and restore succeeded and restored data equals the source',
    value: bad.length
      ? bad.map((r) => `${r.scenario}/${r.op}: ${r.check}`).join(', ')
      : tern.length
        ? 'all ok'
        : 'not measured',
    met: tern.length ? bad.length === 0 : undefined,
  });
  return out;
}

export function targetsMarkdown(targets: TargetResult[]): string {
  return (
    '| Target | Measured | Met |\n| --- | --- | --- |\n' +
    targets
      .map((t) => `| ${t.target} | ${t.value} | ${t.met === undefined ? '–' : t.met ? 'yes' : '**no**'} |`)
      .join('\n') +
    '\n'
  );
}

function sh(cmd: string, args: string[]): string {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    return '?';
  }
}

export function describeMachine(workDir: string, projectRoot: string): Machine {
  let cpuModel = '?';
  try {
    cpuModel = /model name\s*:\s*(.*)/.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1]?.trim() ?? '?';
  } catch {
    // not Linux
  }
  const dirty = sh('git', ['-C', projectRoot, 'status', '--porcelain', '--', 'src']) ? '+uncommitted' : '';
  return {
    cpus: os.availableParallelism(),
    cpuModel,
    memory: formatBytes(os.totalmem()),
    kernel: `${os.type()} ${os.release()}`,
    filesystem: sh('findmnt', ['-n', '-o', 'FSTYPE,SOURCE', '-T', workDir]).replace(/\s+/g, ' on '),
    node: process.version,
    loadBefore: os
      .loadavg()
      .map((l) => l.toFixed(2))
      .join(' '),
    versions: {},
    ternCommit: sh('git', ['-C', projectRoot, 'rev-parse', '--short', 'HEAD']) + dirty,
  };
}

export function machineMarkdown(m: Machine): string {
  const v = Object.entries(m.versions)
    .map(([k, ver]) => `${k} ${ver}`)
    .join('; ');
  return [
    `- CPU: ${m.cpus} × ${m.cpuModel}; memory ${m.memory}; ${m.kernel}`,
    `- Work directory filesystem: ${m.filesystem}`,
    `- Node ${m.node}; Tern commit ${m.ternCommit}; ${v}`,
    `- Load average (1/5/15 min) before: ${m.loadBefore}; after: ${m.loadAfter ?? '?'}`,
  ].join('\n');
}
