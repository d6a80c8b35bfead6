/**
 * One-off measurement of the local platform on real btrfs and XFS loop filesystems (root):
 * snapshot, first cross-region copy, incremental copy after a 1% scattered change, restore from a copy.
 *   node bench/platform-local.ts [--size 2GiB] [--types btrfs,xfs]
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import { LocalPlatform } from '../src/platforms/index.ts';
import { createLoopFs } from '../test/harness/loopfs.ts';
import type { LoopFsType } from '../test/harness/loopfs.ts';

function arg(name: string, dflt: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? (process.argv[i + 1] ?? dflt) : dflt;
}
function parseSize(s: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([KMG]i?B?)?$/i.exec(s);
  if (!m) throw new Error(`bad size ${s}`);
  const unit = (m[2] ?? '').toUpperCase()[0];
  return Math.round(
    Number(m[1]) * (unit === 'G' ? 2 ** 30 : unit === 'M' ? 2 ** 20 : unit === 'K' ? 1024 : 1),
  );
}

const SIZE = parseSize(arg('size', '2GiB'));
const TYPES = arg('types', 'btrfs,xfs').split(',') as LoopFsType[];
const BLOCK = 4 << 20;

async function timed<T>(fn: () => Promise<T>): Promise<[T, number]> {
  const t0 = performance.now();
  const r = await fn();
  return [r, (performance.now() - t0) / 1000];
}

async function fill(file: string): Promise<void> {
  // Random data with every 8th 4 MiB block left as a hole ("sparse-random").
  const fh = await fs.promises.open(file, 'r+');
  const buf = Buffer.allocUnsafe(BLOCK);
  for (let off = 0, i = 0; off < SIZE; off += BLOCK, i++) {
    if (i % 8 === 7) continue;
    crypto.randomFillSync(buf);
    await fh.write(buf, 0, Math.min(BLOCK, SIZE - off), off);
  }
  await fh.sync();
  await fh.close();
}

async function change(file: string): Promise<number> {
  // 1% of the size in 4 KiB writes at random 4 KiB-aligned offsets.
  const n = Math.round(SIZE / 100 / 4096);
  const fh = await fs.promises.open(file, 'r+');
  for (let i = 0; i < n; i++) {
    const off = crypto.randomInt(0, SIZE / 4096) * 4096;
    await fh.write(crypto.randomBytes(4096), 0, 4096, off);
  }
  await fh.sync();
  await fh.close();
  return n * 4096;
}

const rows: Record<string, string | number>[] = [];
for (const type of TYPES) {
  const a = createLoopFs(type, SIZE * 3 + (1 << 30));
  if ('skip' in a) {
    console.log(`${type}: skipped (${a.skip})`);
    continue;
  }
  const b = createLoopFs(type, SIZE * 3 + (1 << 30));
  if ('skip' in b) {
    a.cleanup();
    console.log(`${type}: skipped (${b.skip})`);
    continue;
  }
  try {
    const p = new LocalPlatform({ regions: { east: a.mountpoint, west: b.mountpoint } });
    const v = await p.createVolume('east', 'vol', { kind: 'block', sizeBytes: SIZE });
    await fill(p.volumeDataPath(v));
    const [s1, tSnap] = await timed(() => p.snapshot(v));
    const [c1, tCopy1] = await timed(() => p.copySnapshot(s1, 'west'));
    const changed = await change(p.volumeDataPath(v));
    const [s2, tSnap2] = await timed(() => p.snapshot(v));
    const [cr, tRanges] = await timed(() => p.changedRanges(s1, s2));
    const [c2, tCopy2] = await timed(() => p.copySnapshot(s2, 'west', { previousCopy: c1.snapshot }));
    const [, tRestore] = await timed(() => p.restoreVolume(c2.snapshot, { name: 'vol' }));
    const row = {
      fs: type,
      sizeGiB: +(SIZE / 2 ** 30).toFixed(2),
      snapshot_s: +tSnap.toFixed(3),
      snapshot2_s: +tSnap2.toFixed(3),
      firstCopy_s: +tCopy1.toFixed(2),
      firstCopy_MiB: Math.round(c1.bytesTransferred / 2 ** 20),
      changed_MiB: +(changed / 2 ** 20).toFixed(1),
      ranges_method: cr.method,
      ranges_MiB: +(cr.ranges.reduce((n, r) => n + r.length, 0) / 2 ** 20).toFixed(1),
      ranges_s: +tRanges.toFixed(3),
      incrCopy_s: +tCopy2.toFixed(3),
      incrCopy_MiB: +(c2.bytesTransferred / 2 ** 20).toFixed(1),
      incr_ratio_pct: +((tCopy2 / tCopy1) * 100).toFixed(1),
      restore_s: +tRestore.toFixed(3),
    };
    rows.push(row);
    console.log(JSON.stringify(row));
  } finally {
    a.cleanup();
    b.cleanup();
  }
}
console.table(rows);
