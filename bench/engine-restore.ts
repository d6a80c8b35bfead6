/**
 * One-off measurement of the engine's two restore paths for one volume on a btrfs loop filesystem (plain
 * directory when loops are not allowed): policy run (snapshot + datamover export to a file:// repository on the
 * root filesystem), an incremental run after a 1% scattered change, then restore of the newest restore point from
 * the local snapshot (platform fast path) and from the repository (stream), each into a new app, checked byte for
 * byte. Times are wall clock from the restore request to the action's completion.
 *   node bench/engine-restore.ts [--size 256MiB]
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Engine } from '../src/engine/index.ts';
import { LocalPlatform } from '../src/platforms/index.ts';
import { createLoopFs } from '../test/harness/loopfs.ts';

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

const SIZE = parseSize(arg('size', '256MiB'));
const MiB = 2 ** 20;

function fileHash(file: string): string {
  const h = crypto.createHash('sha256');
  const fd = fs.openSync(file, 'r');
  const buf = Buffer.allocUnsafe(4 * MiB);
  try {
    for (;;) {
      const n = fs.readSync(fd, buf, 0, buf.length, null);
      if (n === 0) break;
      h.update(buf.subarray(0, n));
    }
  } finally {
    fs.closeSync(fd);
  }
  return h.digest('hex');
}

async function main(): Promise<void> {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-bench-engine-'));
  const loop = createLoopFs('btrfs', Math.max(1024 * MiB, SIZE * 4));
  const where = 'skip' in loop ? `plain directory (${loop.skip})` : 'btrfs loop';
  const region = 'skip' in loop ? path.join(tmp, 'east') : path.join(loop.mountpoint, 'east');
  fs.mkdirSync(region, { recursive: true });
  const engine = new Engine({ catalog: path.join(tmp, 'tern.db'), scheduler: false, env: {} });
  try {
    const platform = new LocalPlatform({ regions: { east: region } });
    const v = await platform.createVolume('east', 'data', { kind: 'block', sizeBytes: SIZE });
    const file = platform.volumeDataPath(v);
    const fd = fs.openSync(file, 'r+');
    for (let off = 0; off < SIZE; off += 4 * MiB)
      fs.writeSync(
        fd,
        crypto.randomBytes(Math.min(4 * MiB, SIZE - off)),
        0,
        Math.min(4 * MiB, SIZE - off),
        off,
      );
    fs.closeSync(fd);
    await engine.start();
    await engine.createProfile({
      name: 'infra',
      kind: 'infra',
      platform: 'local',
      settings: { 'regions.east': region },
    });
    await engine.createProfile({ name: 'repo', kind: 'location', url: `file://${path.join(tmp, 'repo')}` });
    await engine.createApp({
      name: 'app',
      infraProfile: 'infra',
      region: 'east',
      volumes: [{ name: 'data', ref: 'data' }],
    });
    await engine.createPolicy({
      name: 'p',
      app: 'app',
      frequency: '@daily',
      retention: { latest: 5 },
      export: { mode: 'datamover', locationProfile: 'repo' },
    });
    const run = async () => {
      const t0 = performance.now();
      const { actionId } = await engine.runPolicy('p');
      await engine.idle();
      const acts = await engine.listActions({ run: actionId });
      for (const a of acts)
        if (a.state !== 'Complete') throw new Error(`${a.type} ${a.state}: ${JSON.stringify(a.error)}`);
      const exp = acts.find((a) => a.type === 'export')!;
      return {
        s: (performance.now() - t0) / 1000,
        sent: exp.bytesTransferred,
        exportMs: Number(exp.params['exportMs']),
      };
    };
    const first = await run();
    // 1% scattered change: 64 KiB writes spread over the volume.
    const fd2 = fs.openSync(file, 'r+');
    const n = Math.max(1, Math.round((SIZE * 0.01) / (64 * 1024)));
    for (let i = 0; i < n; i++)
      fs.writeSync(
        fd2,
        crypto.randomBytes(64 * 1024),
        0,
        64 * 1024,
        Math.floor(((SIZE / n) * i) / 4096) * 4096,
      );
    fs.closeSync(fd2);
    const second = await run();
    const want = fileHash(file);
    const [rp] = await engine.listRestorePoints({ app: 'app' });
    const restore = async (source: 'snapshot' | 'repository', target: string) => {
      const t0 = performance.now();
      const r = await engine.restore({ restorePoint: rp!.id, source, targetApp: target });
      const a = await engine.waitForAction(r.actionId!);
      const s = (performance.now() - t0) / 1000;
      if (a.state !== 'Complete') throw new Error(`restore ${a.state}: ${JSON.stringify(a.error)}`);
      const got = fileHash(path.join(region, 'volumes', `${target}-data`));
      if (got !== want) throw new Error(`${source} restore differs`);
      return s;
    };
    const snapS = await restore('snapshot', 'from-snap');
    const repoS = await restore('repository', 'from-repo');
    const mb = SIZE / MiB;
    console.log(`engine restore bench: ${mb} MiB volume on a ${where}, repository file:// on ${os.tmpdir()}`);
    console.log(
      `  policy run 1 (snapshot + full export):        ${first.s.toFixed(2)} s (export ${(first.exportMs / 1000).toFixed(2)} s, ${(first.sent / MiB).toFixed(1)} MiB stored)`,
    );
    console.log(
      `  policy run 2 (1% scattered change, incr.):    ${second.s.toFixed(2)} s (export ${(second.exportMs / 1000).toFixed(2)} s, ${(second.sent / MiB).toFixed(1)} MiB stored)`,
    );
    console.log(`  restore from local snapshot (new app):        ${snapS.toFixed(2)} s`);
    console.log(
      `  restore from repository, streamed (new app):  ${repoS.toFixed(2)} s (${(mb / repoS).toFixed(0)} MiB/s)`,
    );
  } finally {
    await engine.close();
    if (!('skip' in loop)) loop.cleanup();
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

await main();
