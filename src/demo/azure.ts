/**
 * `tern demo --platform azure`: the same experiment on the Azure platform (src/platforms/azure) against the
 * local Azure sandbox (Azurite page blobs + the compute emulator, real Azure SDK clients). The application
 * volume is a managed disk in eastus; the datamover reads its incremental snapshots (changed page ranges) into
 * a repository, and the snapshot copy takes the VHD path into westus (a full first copy, then only the
 * changed pages onto the previous copy). After the disaster (east's snapshots deleted, east's state gone),
 * westus imports both streams from the export details and restores: a disk from the copied snapshot, and the
 * repository stream into a file. The data check reads the restored data back.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  DatamoverExporter,
  DrStateStore,
  SnapshotCopyExporter,
  SourceStateStore,
  drReport,
  importRestorePoints,
  restoreAtDr,
  runExport,
} from '../engine/dr/index.ts';
import type { Exporter, ExportRunResult, RestorePath } from '../engine/dr/index.ts';
import { openPlatform } from '../platforms/index.ts';
import type { Platform, SnapshotReader, SnapshotRef } from '../platforms/index.ts';
import { startAzureSandbox } from '../platforms/azure/sandbox.ts';
import { checkVolume, DemoApp } from './appdata.ts';
import type { DemoOptions, DemoPathResult, DemoResult } from './experiment.ts';
import { pathResult } from './experiment.ts';

const APP = 'shop';
const VOLUME = 'data';
const EAST = 'eastus';
const WEST = 'westus';
const PAGE = 4096;
const PIECE = 4 << 20;

/** Blocks of `cur` that differ from `prev`, merged into runs: what the application wrote to its disk. */
function* changedRuns(
  prev: string,
  cur: string,
  size: number,
): Generator<{ offset: number; length: number }> {
  const a = fs.openSync(prev, 'r');
  const b = fs.openSync(cur, 'r');
  const ba = Buffer.alloc(PIECE);
  const bb = Buffer.alloc(PIECE);
  let run: { offset: number; length: number } | undefined;
  try {
    for (let off = 0; off < size; off += PIECE) {
      const len = Math.min(PIECE, size - off);
      fs.readSync(a, ba, 0, len, off);
      fs.readSync(b, bb, 0, len, off);
      for (let p = 0; p < len; p += PAGE) {
        const n = Math.min(PAGE, len - p);
        if (ba.compare(bb, p, p + n, p, p + n) === 0) continue;
        if (run && run.offset + run.length === off + p) run.length += n;
        else {
          if (run) yield run;
          run = { offset: off + p, length: n };
        }
      }
    }
    if (run) yield run;
  } finally {
    fs.closeSync(a);
    fs.closeSync(b);
  }
}

/**
 * The repository reads block images from a local path. For a cloud platform the demo stages each snapshot in a
 * local file per volume: the first one in full, later ones by writing only the platform's changed page ranges
 * since the previously staged snapshot over the file. (The datamover reading remote snapshots directly is not
 * built yet.)
 */
function stagedPlatform(platform: Platform, dir: string): Platform {
  const staged = new Map<string, SnapshotRef>();
  const open = async (
    snapshot: SnapshotRef,
    opts: { signal?: AbortSignal } = {},
  ): Promise<SnapshotReader> => {
    if (!platform.openSnapshot) throw new Error(`platform ${platform.provider} cannot open snapshots`);
    const file = path.join(
      dir,
      crypto.createHash('sha256').update(snapshot.volumeId).digest('hex').slice(0, 16),
    );
    const prev = staged.get(snapshot.volumeId);
    const rd = await platform.openSnapshot(snapshot, opts);
    try {
      const ranges =
        prev && fs.existsSync(file) && platform.changedRanges
          ? (await platform.changedRanges(prev, snapshot, opts)).ranges
          : [{ offset: 0, length: rd.size }];
      if (!prev || !fs.existsSync(file)) {
        fs.writeFileSync(file, '');
        fs.truncateSync(file, rd.size);
      }
      const fd = fs.openSync(file, 'r+');
      try {
        for (const r of ranges)
          for (let off = r.offset; off < r.offset + r.length; off += PIECE) {
            const len = Math.min(PIECE, r.offset + r.length - off);
            fs.writeSync(fd, await rd.read(off, len), 0, len, off);
          }
      } finally {
        fs.closeSync(fd);
      }
    } finally {
      await rd.close();
    }
    staged.set(snapshot.volumeId, snapshot);
    const fd = fs.openSync(file, 'r');
    const size = fs.fstatSync(fd).size;
    return {
      size,
      path: file,
      read: (offset, length) => {
        const buf = Buffer.alloc(length);
        fs.readSync(fd, buf, 0, length, offset);
        return Promise.resolve(buf);
      },
      close: () => Promise.resolve(fs.closeSync(fd)),
    };
  };
  return new Proxy(platform, {
    get(target, key) {
      if (key === 'openSnapshot') return open;
      const v = Reflect.get(target, key, target) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
}

function readRange(file: string, offset: number, length: number): Buffer {
  const fd = fs.openSync(file, 'r');
  try {
    const buf = Buffer.alloc(length);
    fs.readSync(fd, buf, 0, length, offset);
    return buf;
  } finally {
    fs.closeSync(fd);
  }
}

export async function runAzureDemo(o: DemoOptions): Promise<DemoResult> {
  const log = o.log ?? (() => {});
  const size = Math.ceil(o.size / (1 << 20)) * (1 << 20); // managed disks come in whole MiB
  const work = fs.mkdtempSync(path.join(o.workDir ?? os.tmpdir(), 'tern-demo-azure-'));
  const notices = [
    "Azure runs locally: Azurite (page blobs, in memory) + the compute emulator, real Azure SDK clients; times are the emulator's, not Azure's",
    'repository path: each eastus snapshot is staged in a local file (first in full, then only the changed page ranges) for the datamover to read',
  ];
  log('starting the Azure sandbox (Azurite + compute emulator)…');
  const sb = await startAzureSandbox({ regions: [EAST, WEST] });
  try {
    const eastRg = sb.resourceGroups[EAST] ?? '';
    const westRg = sb.resourceGroups[WEST] ?? '';
    const platform = await openPlatform('azure', { ...sb.config });
    const importSecret = crypto.randomBytes(18).toString('base64url');
    const repoPassword = crypto.randomBytes(18).toString('base64url');
    const eastState = path.join(work, 'east');
    const westDir = path.join(work, 'west');
    const vaultDir = path.join(work, 'vault');
    const tokensDir = path.join(work, 'tokens-offsite');
    const stageDir = path.join(work, 'east-stage');
    for (const d of [eastState, westDir, vaultDir, tokensDir, stageDir]) fs.mkdirSync(d, { recursive: true });

    // ---- east: the application's disk (its writes mirrored from a working image) ----
    await sb.emulator.createDisk(eastRg, VOLUME, EAST, size);
    const image = path.join(work, 'app-image');
    fs.writeFileSync(image, '');
    fs.truncateSync(image, size);
    const app = new DemoApp(image, size);
    log(`writing ${(size / 2 ** 20).toFixed(0)} MiB of application data to the eastus disk…`);
    await app.writeInitial(crypto.randomBytes(32), Date.now());
    for (let off = 0; off < size; off += PIECE)
      await sb.emulator.writeDisk(eastRg, VOLUME, off, readRange(image, off, Math.min(PIECE, size - off)));
    const vol = (await platform.listVolumes(EAST)).find((v) => v.name === VOLUME);
    if (!vol) throw new Error('the demo disk is not listed by the azure platform');

    const source = new SourceStateStore(eastState, 'east');
    const policies: { name: string; path: RestorePath; exporter: Exporter }[] = [
      {
        name: 'to-vault',
        path: 'repository',
        exporter: new DatamoverExporter({
          platform: stagedPlatform(platform, stageDir),
          repository: path.join(vaultDir, 'repo'),
          password: repoPassword,
          profile: 'vault',
          init: true,
        }),
      },
      {
        name: 'to-westus',
        path: 'snapshot-copy',
        exporter: new SnapshotCopyExporter({
          platform,
          toRegion: WEST,
          profile: 'westus-region',
          records: path.join(westDir, 'records'),
          // Never the client secret: the DR site opens the platform with its own credentials.
          drPlatform: { type: 'azure', config: { subscription: sb.subscription, region: WEST } },
        }),
      },
    ];
    const runs: Record<string, ExportRunResult[]> = {};
    const sourceSnapshots: SnapshotRef[] = [];
    const runAll = async (n: number): Promise<void> => {
      for (const p of policies) {
        const snap = await platform.snapshot(vol, { tags: { policy: p.name } });
        sourceSnapshots.push(snap);
        const r = await runExport({
          state: source,
          site: 'east',
          stream: p.name,
          exporter: p.exporter,
          importSecret,
          rp: {
            id: `${p.name}-${n}`,
            app: APP,
            consistentAt: snap.createdAt,
            volumes: [{ volume: vol, snapshot: snap }],
          },
          signal: o.signal,
          onProgress: o.onProgress,
        });
        (runs[p.name] ??= []).push(r);
        fs.writeFileSync(path.join(tokensDir, `${p.name}.tern-x1`), `${r.token}\n`);
        log(
          `run ${n} ${p.name}: exported in ${(r.record.exportDurationMs / 1000).toFixed(2)} s, ${(r.record.bytesTransferred / 2 ** 20).toFixed(1)} MiB moved${r.record.incremental ? ' (incremental)' : ''}`,
        );
      }
    };
    await runAll(1);
    const prev = path.join(work, 'app-image.prev');
    fs.copyFileSync(image, prev);
    const changedBytes = await app.change(o.change ?? 0.01, 12345, Date.now(), o.changeBlock ?? 4096);
    let written = 0;
    for (const r of changedRuns(prev, image, size)) {
      await sb.emulator.writeDisk(eastRg, VOLUME, r.offset, readRange(image, r.offset, r.length));
      written += r.length;
    }
    fs.rmSync(prev);
    log(
      `application changed ${(changedBytes / 2 ** 20).toFixed(1)} MiB (${(written / 2 ** 20).toFixed(1)} MiB of pages written to the disk) and stamped ${new Date(app.writtenAt).toISOString()}`,
    );
    await runAll(2);

    // ---- disaster: east's snapshots and state are gone ----
    const disasterAt = Date.now();
    for (const s of sourceSnapshots) await platform.deleteSnapshot(s).catch(() => undefined);
    fs.rmSync(eastState, { recursive: true, force: true });
    fs.rmSync(stageDir, { recursive: true, force: true });
    fs.rmSync(image, { force: true });
    log(`DISASTER at ${new Date(disasterAt).toISOString()}: east's snapshots and state deleted`);

    // ---- westus: from the export details alone ----
    const westState = new DrStateStore(path.join(westDir, 'catalog'), 'west');
    const westPlatform = await openPlatform('azure', { ...sb.config });
    const results: DemoPathResult[] = [];
    for (const p of policies) {
      const token = fs.readFileSync(path.join(tokensDir, `${p.name}.tern-x1`), 'utf8');
      const t0 = performance.now();
      const imp = await importRestorePoints({
        state: westState,
        token,
        importSecret,
        platform: westPlatform,
        signal: o.signal,
      });
      const importMs = performance.now() - t0;
      log(
        `westus imported ${imp.imported.length} restore point(s) of ${p.name} in ${importMs.toFixed(0)} ms`,
      );
      const restoredAs = `${VOLUME}-${p.path}`;
      const file = path.join(westDir, 'restored', restoredAs);
      const r0 = performance.now();
      await restoreAtDr({
        state: westState,
        importSecret,
        app: APP,
        path: p.path,
        platform: westPlatform,
        region: WEST,
        nameFor: () => restoredAs,
        streamTarget: (_r, name) => path.join(westDir, 'restored', name),
        signal: o.signal,
        onProgress: o.onProgress,
      });
      const restoreMs = performance.now() - r0;
      // A restored disk is read back through the emulator's blob store to check it.
      if (p.path === 'snapshot-copy') {
        fs.mkdirSync(path.dirname(file), { recursive: true });
        fs.writeFileSync(file, await sb.emulator.readDisk(westRg, restoredAs));
      }
      const check = await checkVolume(file);
      const rtoMs = performance.now() - r0;
      if (!check.ok) log(`WARNING: the data restored by ${p.path} fails its checksum`);
      const st = await westState.read();
      const consistentAt =
        Object.values(st.imports)
          .find((s) => s.id.endsWith(p.name))
          ?.restorePoints.at(-1)?.consistentAt ?? '';
      results.push(
        pathResult(p, runs[p.name] ?? [], {
          importMs,
          restoreMs,
          rtoMs,
          disasterAt,
          check,
          consistentAt,
          restoredTo: p.path === 'snapshot-copy' ? `disk ${westRg}/${restoredAs}` : file,
        }),
      );
    }
    return {
      size,
      changedBytes,
      changeBlock: o.changeBlock ?? 4096,
      platform: 'azure',
      sites: [
        { name: 'east', fsType: `azure ${EAST} (emulated)`, path: eastRg },
        { name: 'west', fsType: `azure ${WEST} (emulated)`, path: westRg },
        { name: 'vault', fsType: 'directory', path: vaultDir },
      ],
      notices,
      disasterAt: new Date(disasterAt).toISOString(),
      paths: results,
      report: drReport(await westState.read()),
      ...(o.keep ? { kept: work, cleanup: [`rm -rf ${work}`] } : {}),
    };
  } finally {
    await sb.stop();
    if (!o.keep) fs.rmSync(work, { recursive: true, force: true });
  }
}
