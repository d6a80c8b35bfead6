/**
 * The classic DR experiment on one host, no cloud account: sites east and west on their own filesystems, an
 * application volume of random data, two policies on it (datamover export to a repository on a third
 * filesystem, and cross-region snapshot copy to west), two runs with a 1% change between them, then a
 * disaster that destroys east (its filesystem and its catalog). West recovers from the export details alone:
 * import, restore each path, check the data, and measure RPO and RTO from what the restored data says.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { InputError } from '../core/index.ts';
import type { ProgressFn } from '../core/index.ts';
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
import type { AppReport, Exporter, ExportRunResult, RestorePath } from '../engine/dr/index.ts';
import { LocalPlatform, platformTypes } from '../platforms/index.ts';
import { checkVolume, DemoApp } from './appdata.ts';
import { createSite, keepSite } from './sites.ts';
import type { Site } from './sites.ts';

export interface DemoOptions {
  size: number;
  platform: string;
  keep: boolean;
  /** Base directory for the sites (default: the OS temp dir). */
  workDir?: string;
  /** Use loop filesystems when possible (default true). */
  loop?: boolean;
  /** Fraction changed between the runs (default 0.01), in scattered writes of `changeBlock` bytes (4 KiB). */
  change?: number;
  changeBlock?: number;
  log?: (line: string) => void;
  onProgress?: ProgressFn;
  signal?: AbortSignal;
}

export interface DemoPathResult {
  path: RestorePath;
  policy: string;
  exportFirstMs: number;
  exportIncrementalMs: number;
  incrementalPercent: number;
  bytesFirst: number;
  bytesIncremental: number;
  importMs: number;
  restoreMs: number;
  /** Restore + check of the restored data: the measured RTO. */
  rtoMs: number;
  /** Disaster time − the application's timestamp found inside the restored data. */
  rpoMs: number;
  dataWrittenAt: string;
  consistentAt: string;
  checksumOk: boolean;
  restoredTo: string;
}

/** One row of the demo's table, from the two export runs of a path and the check of its restored data. */
export function pathResult(
  p: { path: RestorePath; name: string },
  exports: readonly ExportRunResult[],
  m: {
    importMs: number;
    restoreMs: number;
    rtoMs: number;
    disasterAt: number;
    check: { writtenAt: number; ok: boolean };
    consistentAt: string;
    restoredTo: string;
  },
): DemoPathResult {
  const [first, second] = exports;
  const exportFirstMs = first?.record.exportDurationMs ?? 0;
  const exportIncrementalMs = second?.record.exportDurationMs ?? 0;
  return {
    path: p.path,
    policy: p.name,
    exportFirstMs,
    exportIncrementalMs,
    incrementalPercent: exportFirstMs > 0 ? (100 * exportIncrementalMs) / exportFirstMs : 0,
    bytesFirst: first?.record.bytesTransferred ?? 0,
    bytesIncremental: second?.record.bytesTransferred ?? 0,
    importMs: m.importMs,
    restoreMs: m.restoreMs,
    rtoMs: m.rtoMs,
    rpoMs: m.disasterAt - m.check.writtenAt,
    dataWrittenAt: new Date(m.check.writtenAt).toISOString(),
    consistentAt: m.consistentAt,
    checksumOk: m.check.ok,
    restoredTo: m.restoredTo,
  };
}

export interface DemoResult {
  size: number;
  changedBytes: number;
  changeBlock: number;
  platform: string;
  sites: { name: string; fsType: string; path: string }[];
  notices: string[];
  disasterAt: string;
  paths: DemoPathResult[];
  report: AppReport[];
  kept?: string;
  /** Shell commands that remove kept sites. */
  cleanup?: string[];
}

const APP = 'shop';
const VOLUME = 'data';

export async function runDemo(o: DemoOptions): Promise<DemoResult> {
  const log = o.log ?? (() => {});
  if (o.platform === 'azure') {
    if (!platformTypes().includes('azure'))
      throw new InputError(
        'the azure platform (src/platforms/azure) is not in this build: run with --platform local',
      );
    // Azurite + the compute emulator, loaded only for this path.
    const { runAzureDemo } = await import('./azure.ts');
    return runAzureDemo(o);
  }
  if (o.platform !== 'local')
    throw new InputError(`the demo runs on --platform local or azure, not "${o.platform}"`);
  const notices: string[] = [];
  const work = fs.mkdtempSync(path.join(o.workDir ?? os.tmpdir(), 'tern-demo-'));
  const slack = 256 << 20;
  const sites: Site[] = [];
  const mk = (name: string, bytes: number): Site => {
    const { site, notice } = createSite(work, name, bytes, o.loop ?? true);
    if (notice) notices.push(notice);
    sites.push(site);
    return site;
  };
  try {
    // east: volume + snapshots (shared extents); west: copies + a restore from each path; vault: the repository.
    const east = mk('east', Math.ceil(o.size * 1.5) + slack);
    const west = mk('west', Math.ceil(o.size * 2.6) + slack);
    const vault = mk('vault', Math.ceil(o.size * 1.3) + slack);
    for (const n of notices) log(`notice: ${n}`);
    const eastRegion = path.join(east.path, 'region');
    const westRegion = path.join(west.path, 'region');
    const tokensDir = path.join(work, 'tokens-offsite');
    const importSecret = crypto.randomBytes(18).toString('base64url');
    const repoPassword = crypto.randomBytes(18).toString('base64url');

    // ---- east: the application and its two policies ----
    const platform = new LocalPlatform({ regions: { east: eastRegion, west: westRegion } });
    const vol = await platform.createVolume('east', VOLUME, { kind: 'block', sizeBytes: o.size });
    const app = new DemoApp(platform.volumeDataPath(vol), o.size);
    log(`writing ${(o.size / 2 ** 20).toFixed(0)} MiB of application data in east…`);
    await app.writeInitial(crypto.randomBytes(32), Date.now());
    const source = new SourceStateStore(path.join(east.path, 'catalog'), 'east');
    const policies: { name: string; path: RestorePath; exporter: Exporter }[] = [
      {
        name: 'to-vault',
        path: 'repository',
        exporter: new DatamoverExporter({
          platform,
          repository: path.join(vault.path, 'repo'),
          password: repoPassword,
          profile: 'vault',
          init: true,
        }),
      },
      {
        name: 'to-west',
        path: 'snapshot-copy',
        exporter: new SnapshotCopyExporter({
          platform,
          toRegion: 'west',
          profile: 'west-region',
          records: westRegion,
          drPlatform: { type: 'local', config: { regions: { west: westRegion } } },
        }),
      },
    ];
    const runs: Record<string, ExportRunResult[]> = {};
    const runAll = async (n: number) => {
      for (const p of policies) {
        const snap = await platform.snapshot(vol, { tags: { policy: p.name } });
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
          detailsDir: path.join(east.path, 'catalog', 'export-details'),
          signal: o.signal,
          onProgress: o.onProgress,
        });
        (runs[p.name] ??= []).push(r);
        // The operator keeps the export details off-site (here: a directory outside east).
        fs.mkdirSync(tokensDir, { recursive: true });
        fs.writeFileSync(path.join(tokensDir, `${p.name}.tern-x1`), `${r.token}\n`);
        log(
          `run ${n} ${p.name}: exported in ${(r.record.exportDurationMs / 1000).toFixed(2)} s, ${(r.record.bytesTransferred / 2 ** 20).toFixed(1)} MiB moved${r.record.incremental ? ' (incremental)' : ''}`,
        );
      }
    };
    await runAll(1);
    const changedBytes = await app.change(o.change ?? 0.01, 12345, Date.now(), o.changeBlock ?? 4096);
    log(
      `application changed ${(changedBytes / 2 ** 20).toFixed(1)} MiB and stamped ${new Date(app.writtenAt).toISOString()}`,
    );
    await runAll(2);

    // ---- disaster: east's filesystem and catalog are gone ----
    const disasterAt = Date.now();
    east.destroy();
    if (fs.existsSync(eastRegion)) throw new Error('east survived the disaster');
    log(`DISASTER at ${new Date(disasterAt).toISOString()}: east destroyed (filesystem and catalog)`);

    // ---- west: from the export details alone ----
    const westState = new DrStateStore(path.join(west.path, 'catalog'), 'west');
    const westPlatform = new LocalPlatform({ regions: { west: westRegion } });
    const results: DemoPathResult[] = [];
    for (const p of policies) {
      const token = fs.readFileSync(path.join(tokensDir, `${p.name}.tern-x1`), 'utf8');
      const t0 = performance.now();
      const imp = await importRestorePoints({ state: westState, token, importSecret, signal: o.signal });
      const importMs = performance.now() - t0;
      log(`west imported ${imp.imported.length} restore point(s) of ${p.name} in ${importMs.toFixed(0)} ms`);
      const restoredAs = `${VOLUME}-${p.path}`;
      const r0 = performance.now();
      const r = await restoreAtDr({
        state: westState,
        importSecret,
        app: APP,
        path: p.path,
        platform: westPlatform,
        region: 'west',
        nameFor: () => restoredAs,
        signal: o.signal,
        onProgress: o.onProgress,
      });
      const restoreMs = performance.now() - r0;
      const file = path.join(westRegion, 'volumes', restoredAs);
      const check = await checkVolume(file);
      const rtoMs = performance.now() - r0;
      if (!check.ok) log(`WARNING: the data restored by ${p.path} fails its checksum`);
      results.push(
        pathResult(p, runs[p.name] ?? [], {
          importMs,
          restoreMs,
          rtoMs,
          disasterAt,
          check,
          consistentAt: r.consistentAt,
          restoredTo: file,
        }),
      );
    }
    const report = drReport(await westState.read());
    const out: DemoResult = {
      size: o.size,
      changedBytes,
      changeBlock: o.changeBlock ?? 4096,
      platform: o.platform,
      sites: sites.map((s) => ({ name: s.name, fsType: s.fsType, path: s.path })),
      notices,
      disasterAt: new Date(disasterAt).toISOString(),
      paths: results,
      report,
    };
    if (o.keep) {
      for (const s of sites) keepSite(s);
      out.kept = work;
      out.cleanup = [
        ...sites
          .filter((s) => s.loop && fs.existsSync(s.path))
          .map((s) => `umount ${s.path} && losetup -d ${s.device}`),
        `rm -rf ${work}`,
      ];
    }
    return out;
  } finally {
    if (!o.keep) {
      for (const s of sites) s.destroy();
      fs.rmSync(work, { recursive: true, force: true });
    }
  }
}
