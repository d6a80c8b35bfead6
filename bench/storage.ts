/**
 * Object store throughput on this machine: raw 16 MiB puts/gets (1 and 3 in flight) and a repository backup +
 * restore of a random image, against a local directory, S3 on moto and Azure Blob on Azurite (both on loopback,
 * sharing the CPU with the client: these are emulator figures, not cloud ones).
 *
 *   node bench/storage.ts [--mib 64] [--stores local,s3,azblob]
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { backupImage, Repository, restoreImage } from '../src/repo/index.ts';
import { openStore, type ObjectStore, type StoreOptions } from '../src/storage/index.ts';
import { startAzurite } from '../test/harness/azurite.ts';
import { motoServerBin, startMoto } from '../test/harness/moto.ts';

const MiB = 1024 * 1024;
const { values } = parseArgs({
  options: { mib: { type: 'string', default: '64' }, stores: { type: 'string', default: 'local,s3,azblob' } },
});
const imageMiB = Number(values.mib);
const work = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-bench-storage-'));
const image = path.join(work, 'image');
fs.writeFileSync(image, crypto.randomBytes(imageMiB * MiB));

interface Target {
  url: string;
  opts: StoreOptions;
  stop(): Promise<void>;
}

async function start(kind: string): Promise<Target | undefined> {
  if (kind === 'local') return { url: path.join(work, 'local'), opts: {}, stop: () => Promise.resolve() };
  if (kind === 's3') {
    if (!motoServerBin()) return undefined;
    const m = await startMoto();
    return { url: 's3://tern-bench/repo', opts: { env: m.env }, stop: m.stop };
  }
  const az = await startAzurite(['ternbench']);
  const acct = az.accounts[0]!;
  return {
    url: `azblob://${acct.name}/bench/repo`,
    opts: { env: {}, azureEndpoint: az.accountUrl(acct.name), azureKey: acct.key },
    stop: az.stop,
  };
}

async function raw(store: ObjectStore, inFlight: number): Promise<{ put: number; get: number }> {
  const objects = Array.from({ length: 8 }, () => crypto.randomBytes(16 * MiB));
  const run = async (fn: (i: number) => Promise<unknown>): Promise<number> => {
    const t0 = performance.now();
    let next = 0;
    await Promise.all(
      Array.from({ length: inFlight }, async () => {
        while (next < objects.length) await fn(next++);
      }),
    );
    return (objects.length * 16) / ((performance.now() - t0) / 1000);
  };
  const put = await run((i) => store.put(`raw${inFlight}/${i}`, objects[i]!));
  const get = await run((i) => store.get(`raw${inFlight}/${i}`));
  return { put, get };
}

const rows: string[] = [];
for (const kind of values.stores.split(',')) {
  const target = await start(kind);
  if (!target) {
    rows.push(`| ${kind} | skipped (peer not installed) | | | |`);
    continue;
  }
  const store = await openStore(target.url, target.opts);
  try {
    const r1 = await raw(store, 1);
    const r3 = await raw(store, 3);
    const repo = await Repository.init(store, 'bench');
    const session = await repo.startBackup();
    let t0 = performance.now();
    const b = await backupImage(session, image);
    await session.saveSnapshot({
      paths: [image],
      tags: [],
      root: { kind: 'image', map: b.map, size: b.size },
      summary: { bytesRead: b.bytesRead, bytesAdded: b.bytesAdded, durationMs: 0 },
    });
    const backupMs = performance.now() - t0;
    await session.close();
    t0 = performance.now();
    await restoreImage(repo, b.map, path.join(work, `restored-${kind}`));
    const restoreMs = performance.now() - t0;
    await repo.close();
    const rate = (ms: number): string => `${((imageMiB / ms) * 1000).toFixed(1)} MiB/s`;
    rows.push(
      `| ${kind} | ${r1.put.toFixed(0)} / ${r1.get.toFixed(0)} | ${r3.put.toFixed(0)} / ${r3.get.toFixed(0)} | ${(backupMs / 1000).toFixed(2)} s (${rate(backupMs)}) | ${(restoreMs / 1000).toFixed(2)} s (${rate(restoreMs)}) |`,
    );
  } finally {
    await store.close?.();
    await target.stop();
  }
}
fs.rmSync(work, { recursive: true, force: true });
process.stdout.write(
  [
    `load average ${os
      .loadavg()
      .map((l) => l.toFixed(1))
      .join(' ')}, ${os.cpus().length} CPUs`,
    '',
    `| store | 16 MiB put / get MiB/s, 1 in flight | 3 in flight | backup ${imageMiB} MiB image | restore |`,
    '| --- | --- | --- | --- | --- |',
    ...rows,
    '',
  ].join('\n'),
);
