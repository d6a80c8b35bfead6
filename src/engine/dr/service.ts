/**
 * The DR facade a server or CLI calls: at the source, export details for an engine policy; at the DR site,
 * import, restore and the DR report. Holds the site's state directory and import secret; thin over the
 * functions of this folder.
 */
import path from 'node:path';
import type { Clock, RunOptions } from '../../core/index.ts';
import { systemClock } from '../../core/index.ts';
import type { Platform } from '../../platforms/index.ts';
import { openStore } from '../../storage/index.ts';
import type { Engine } from '../engine.ts';
import { publishExportDetails } from './engine-publish.ts';
import type { PublishResult } from './engine-publish.ts';
import { importRestorePoints } from './import.ts';
import type { ImportOptions, ImportResult } from './import.ts';
import { listRecords, recordKey } from './records.ts';
import { drReport } from './report.ts';
import type { AppReport } from './report.ts';
import { restoreAtDr } from './restore.ts';
import type { RestoreOptions, RestoreResult } from './restore.ts';
import { DrStateStore } from './state.ts';
import type { RestorePointRecord } from './types.ts';

export interface DrServiceOptions {
  site: string;
  /** Directory of the site's DR manifest (and export details files). */
  stateDir: string;
  importSecret: string;
  /** The source side's engine, for export details of its policies. */
  engine?: Engine;
  /** The DR site's platform (default: opened from each stream's export details). */
  platform?: Platform;
  clock?: Clock;
}

export class DrService {
  readonly state: DrStateStore;
  private readonly o: DrServiceOptions;

  constructor(o: DrServiceOptions) {
    this.o = o;
    this.state = new DrStateStore(o.stateDir, o.site);
  }

  /** Source: publish records and issue export details for an engine policy. */
  exportDetails(policy: string, opts: RunOptions & { records?: string } = {}): Promise<PublishResult> {
    if (!this.o.engine) throw new Error('DrService.exportDetails needs the engine');
    return publishExportDetails(this.o.engine, {
      ...opts,
      site: this.o.site,
      policy,
      importSecret: this.o.importSecret,
      detailsDir: path.join(this.o.stateDir, 'export-details'),
    });
  }

  /** DR site: import every new restore point named by the token's stream. */
  import(
    token: string,
    opts: Omit<ImportOptions, 'state' | 'token' | 'importSecret'> = {},
  ): Promise<ImportResult> {
    return importRestorePoints({
      ...opts,
      state: this.state,
      token,
      importSecret: this.o.importSecret,
      ...(this.o.platform && !opts.platform ? { platform: this.o.platform } : {}),
      clock: opts.clock ?? this.o.clock ?? systemClock,
    });
  }

  restore(
    app: string,
    opts: Omit<RestoreOptions, 'state' | 'app' | 'importSecret'> = {},
  ): Promise<RestoreResult> {
    return restoreAtDr({
      ...opts,
      state: this.state,
      app,
      importSecret: this.o.importSecret,
      ...(this.o.platform && !opts.platform ? { platform: this.o.platform } : {}),
      clock: opts.clock ?? this.o.clock ?? systemClock,
    });
  }

  /**
   * Per app and path: achieved RPO (now − the newest importable restore point, counting records already at
   * the export locations but not imported yet), export durations, RTO, 3-2-1.
   */
  async report(opts: RunOptions & { refresh?: boolean } = {}): Promise<AppReport[]> {
    const st = await this.state.read();
    const importable: Record<string, RestorePointRecord[]> = {};
    if (opts.refresh !== false)
      for (const s of Object.values(st.imports)) {
        const known = new Set([...s.restorePoints.map((r) => r.id), ...s.forgotten]);
        try {
          const store = await openStore(s.records);
          try {
            const { records } = await listRecords(store, s.id, recordKey(this.o.importSecret, s.id), opts);
            importable[s.id] = records.filter((r) => !known.has(r.id));
          } finally {
            await store.close?.();
          }
        } catch {
          // The export location is unreachable: the report stands on what was imported.
        }
      }
    return drReport(st, { clock: this.o.clock ?? systemClock, importable });
  }
}
