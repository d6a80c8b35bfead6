/**
 * One-off measurement of the Azure platform against the compute emulator + Azurite (in memory), real SDKs:
 * snapshot, full cross-region copy (VHD path), incremental copy after a 1% scattered change (changed pages onto
 * the previous copy), the same with CopyStart, and a restore at DR.
 *   node bench/platform-azure.ts [--size 256MiB] [--change 0.01]
 * Times are the emulator's (a server-side copy inside Azurite is a local metadata copy); bytes are what crosses
 * regions.
 */
import crypto from 'node:crypto';
import { AzurePlatform } from '../src/platforms/azure/index.ts';
import { startAzureSandbox } from '../src/platforms/azure/sandbox.ts';

function arg(name: string, dflt: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? (process.argv[i + 1] ?? dflt) : dflt;
}
const SIZE = Number.parseInt(arg('size', '256'), 10) * 2 ** 20;
const CHANGE = Number(arg('change', '0.01'));

async function timed<T>(fn: () => Promise<T>): Promise<[T, number]> {
  const t0 = performance.now();
  const r = await fn();
  return [r, (performance.now() - t0) / 1000];
}

const sb = await startAzureSandbox({ regions: ['eastus', 'westus'] });
try {
  const rg = sb.resourceGroups['eastus']!;
  const p = new AzurePlatform(sb.config);
  const cs = new AzurePlatform({ ...sb.config, copyMode: 'copystart' });
  await sb.emulator.createDisk(rg, 'db', 'eastus', SIZE);
  for (let off = 0; off < SIZE; off += 8 << 20)
    await sb.emulator.writeDisk(rg, 'db', off, crypto.randomBytes(Math.min(8 << 20, SIZE - off)));
  const vol = (await p.listVolumes('eastus'))[0]!;
  const rows: [string, number, string][] = [];
  const [s1, tSnap] = await timed(() => p.snapshot(vol));
  rows.push(['incremental snapshot (first)', 0, tSnap.toFixed(2)]);
  const [c1, tFull] = await timed(() => p.copySnapshot(s1, 'westus'));
  rows.push(['full copy, VHD path', c1.bytesTransferred, tFull.toFixed(2)]);
  const x0 = sb.emulator.stats.crossRegionBytes;
  const [cs1, tCs1] = await timed(() => cs.copySnapshot(s1, 'westus'));
  rows.push([
    'full copy, CopyStart (emulator count)',
    sb.emulator.stats.crossRegionBytes - x0,
    tCs1.toFixed(2),
  ]);

  const blocks = Math.round((SIZE * CHANGE) / 4096);
  const stride = Math.floor(SIZE / blocks / 4096) * 4096;
  for (let i = 0; i < blocks; i++)
    await sb.emulator.writeDisk(rg, 'db', i * stride, crypto.randomBytes(4096));
  const [s2, tSnap2] = await timed(() => p.snapshot(vol));
  rows.push([`incremental snapshot after ${(CHANGE * 100).toFixed(1)}% change`, 0, tSnap2.toFixed(2)]);
  const [c2, tInc] = await timed(() => p.copySnapshot(s2, 'westus', { previousCopy: c1.snapshot }));
  rows.push(['incremental copy, changed pages onto the previous copy', c2.bytesTransferred, tInc.toFixed(2)]);
  const x1 = sb.emulator.stats.crossRegionBytes;
  const [, tCs2] = await timed(() => cs.copySnapshot(s2, 'westus', { previousCopy: cs1.snapshot }));
  rows.push([
    'incremental copy, CopyStart (emulator count)',
    sb.emulator.stats.crossRegionBytes - x1,
    tCs2.toFixed(2),
  ]);
  const [, tRestore] = await timed(() => p.restoreVolume(c2.snapshot, { name: 'db' }));
  rows.push(['restore disk at DR from the copy', 0, tRestore.toFixed(2)]);
  const same = (await sb.emulator.readDisk(sb.resourceGroups['westus']!, 'db')).equals(
    await sb.emulator.readDisk(rg, 'db'),
  );
  console.log(
    `Azure (emulator), ${SIZE >> 20} MiB random disk, ${blocks} x 4 KiB changed; restored equal: ${same}`,
  );
  console.log('| step | bytes across regions | s |\n| --- | --- | --- |');
  for (const [k, b, t] of rows) console.log(`| ${k} | ${b ? b.toLocaleString('en-US') : '—'} | ${t} |`);
} finally {
  await sb.stop();
}
