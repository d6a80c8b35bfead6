/**
 * `tern dr import | restore | report | policy | export-details`: the DR verbs (src/engine/dr). Parse, call, print.
 * With --server or TERN_SERVER they go through `tern server` (/v1/dr, the server's own DR state, secret and
 * location profiles); without, they work on a DR site directory in this process.
 */
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { Command } from 'commander';
import { AuthError, formatBytes, formatDuration, InputError } from '../../core/index.ts';
import {
  DrService,
  DrStateStore,
  drReport,
  importRestorePoints,
  restoreAtDr,
} from '../../engine/dr/index.ts';
import type { AppReport, ImportPolicy, ImportResult, RestorePath } from '../../engine/dr/index.ts';
import { publishExportDetails } from '../../engine/dr/index.ts';
import { storeOptions } from '../../engine/datamover.ts';
import { openEngine } from '../../engine/index.ts';
import type { Engine } from '../../engine/index.ts';
import type { StoreOptions } from '../../storage/index.ts';
import { ApiClient, defaultDataDir } from '../client.ts';
import { printJson, printTable, progressPrinter } from '../output.ts';
import { interruptSignal } from '../signals.ts';

interface Common {
  siteDir?: string;
  site: string;
  secretFile?: string;
  json?: boolean;
  server?: string;
  dataDir?: string;
}

function withCommon(cmd: Command): Command {
  return cmd
    .option('--server <url>', 'go through this Tern server (env TERN_SERVER); else work on --site-dir here')
    .option('--data-dir <dir>', 'Tern data dir: api-token, catalog of location profiles (env TERN_DATA_DIR)')
    .option('--site-dir <dir>', 'DR site state directory (env TERN_DR_SITE_DIR)')
    .option('--site <name>', 'DR site name', 'dr')
    .option('--secret-file <file>', 'import secret from this file (else env TERN_IMPORT_SECRET)')
    .option('--json', 'print JSON');
}

function state(o: Common): DrStateStore {
  const dir = o.siteDir ?? process.env.TERN_DR_SITE_DIR;
  if (!dir) throw new InputError('no DR site directory: use --site-dir or set TERN_DR_SITE_DIR');
  return new DrStateStore(path.resolve(dir), o.site);
}

async function secret(o: Common): Promise<string> {
  if (o.secretFile) return (await fsp.readFile(o.secretFile, 'utf8')).replace(/\r?\n$/, '');
  const s = process.env.TERN_IMPORT_SECRET;
  if (!s) throw new AuthError('no import secret: set TERN_IMPORT_SECRET or use --secret-file');
  return s;
}

/** The server client when --server or TERN_SERVER names one. */
function remote(o: Common): ApiClient | undefined {
  if (!o.server && !process.env.TERN_SERVER) return undefined;
  return ApiClient.fromFlags({
    ...(o.server ? { server: o.server } : {}),
    ...(o.dataDir ? { dataDir: o.dataDir } : {}),
  });
}

/** The local engine on the data dir's catalog (location profiles, source policies), closed after `fn`. */
async function withEngine<T>(o: Common, fn: (e: Engine) => Promise<T>): Promise<T> {
  const dataDir = o.dataDir ?? defaultDataDir();
  const engine = openEngine({ catalog: path.join(dataDir, 'catalog.db'), scheduler: false });
  try {
    return await fn(engine);
  } finally {
    await engine.close();
  }
}

/** Store options of a location profile of the local catalog (credentials for s3:// and azblob:// locations). */
async function localStoreOptions(o: Common, profile: string | undefined): Promise<StoreOptions | undefined> {
  if (!profile) return undefined;
  return withEngine(o, (e) => Promise.resolve(storeOptions(e.locationProfile(profile))));
}

function printImport(r: ImportResult): void {
  process.stdout.write(
    `${r.app} (${r.kind}): ${r.imported.length} restore point(s) imported, ${r.alreadyImported} already here${r.forgotten.length ? `, ${r.forgotten.length} forgotten by retention` : ''}${r.standby ? `, standby restored in ${formatDuration(r.standby.durationMs)}` : ''}\n`,
  );
  for (const m of r.rejected) process.stderr.write(`rejected: ${m}\n`);
  if (r.missing.length) process.stderr.write(`not (yet) at the location: ${r.missing.join(', ')}\n`);
}

const signal = interruptSignal;

export function registerDr(program: Command): void {
  const dr = program.command('dr').description('disaster recovery at the DR site: import, restore, report');

  withCommon(dr.command('import').description('import every new restore point named by export details'))
    .option('--token <token>', 'export details (tern-x1.…)')
    .option('--token-file <file>', 'read the export details from a file')
    .option('--keep-last <n>', 'DR-side retention: keep the n newest imported restore points', Number)
    .option('--restore', 'warm standby: restore the newest restore point after importing')
    .option('--target-dir <dir>', 'where repository restores write volumes (default: the platform region)')
    .option(
      '--location-profile <name>',
      "this site's location profile with the credentials for the export location (s3://, azblob://)",
    )
    .action(
      async (
        o: Common & {
          token?: string;
          tokenFile?: string;
          keepLast?: number;
          restore?: boolean;
          targetDir?: string;
          locationProfile?: string;
        },
      ) => {
        const token = o.token ?? (o.tokenFile ? await fsp.readFile(o.tokenFile, 'utf8') : undefined);
        if (!token) throw new InputError('give --token or --token-file');
        const api = remote(o);
        if (api) {
          if (o.restore || o.targetDir)
            throw new InputError(
              '--restore and --target-dir are local only: use an import policy or tern dr restore',
            );
          const r = await api.post<ImportResult>('/v1/dr/import', {
            token: token.trim(),
            ...(o.keepLast ? { keepLast: o.keepLast } : {}),
            ...(o.locationProfile ? { locationProfile: o.locationProfile } : {}),
          });
          return o.json ? printJson(r) : printImport(r);
        }
        const so = await localStoreOptions(o, o.locationProfile);
        const r = await importRestorePoints({
          ...(so ? { storeOptions: so } : {}),
          ...(o.locationProfile ? { locationProfile: o.locationProfile } : {}),
          state: state(o),
          token,
          importSecret: await secret(o),
          ...(o.keepLast ? { keepLast: o.keepLast } : {}),
          restoreAfterImport: o.restore ?? false,
          ...(o.targetDir
            ? { restore: { streamTarget: (_r, name) => path.join(o.targetDir ?? '', name) } }
            : {}),
          signal: signal(),
        });
        return o.json ? printJson(r) : printImport(r);
      },
    );

  withCommon(
    dr.command('restore <app>').description('restore an application from its newest imported restore point'),
  )
    .option('--path <path>', 'auto | repository | snapshot-copy', 'auto')
    .option('--restore-point <id>', 'a specific restore point')
    .option('--region <region>', 'target region')
    .option('--name <name>', 'name of the restored volume (one-volume apps)')
    .option('--target-dir <dir>', 'where repository restores write volumes (default: the platform region)')
    .option('--overwrite', 'replace an existing volume')
    .action(
      async (
        app: string,
        o: Common & {
          path: string;
          restorePoint?: string;
          region?: string;
          name?: string;
          targetDir?: string;
          overwrite?: boolean;
        },
      ) => {
        if (!['auto', 'repository', 'snapshot-copy'].includes(o.path))
          throw new InputError(`--path must be auto, repository or snapshot-copy, not "${o.path}"`);
        const api = remote(o);
        if (api) {
          const r = await api.post<{
            restorePoint: string;
            consistentAt: string;
            path: string;
            durationMs: number;
            bytesTransferred: number;
          }>('/v1/dr/restores', {
            app,
            path: o.path,
            ...(o.restorePoint ? { restorePoint: o.restorePoint } : {}),
            ...(o.region ? { region: o.region } : {}),
            ...(o.name ? { name: o.name } : {}),
            ...(o.targetDir ? { targetDir: path.resolve(o.targetDir) } : {}),
            overwrite: o.overwrite ?? false,
          });
          if (o.json) return printJson(r);
          process.stdout.write(
            `restored ${app} from ${r.restorePoint} (consistent at ${r.consistentAt}) by ${r.path} in ${formatDuration(r.durationMs)}${r.bytesTransferred ? `, ${formatBytes(r.bytesTransferred)} read` : ''}\n`,
          );
          return;
        }
        const progress = progressPrinter(!o.json && process.stderr.isTTY === true);
        // Location profiles remembered on the imported streams, resolved from the local catalog.
        const localProfiles = new Map<string, StoreOptions>();
        for (const st of Object.values((await state(o).read()).imports))
          if (st.locationProfile && !localProfiles.has(st.locationProfile))
            localProfiles.set(st.locationProfile, (await localStoreOptions(o, st.locationProfile)) ?? {});
        const r = await restoreAtDr({
          storeOptions: (st) => (st.locationProfile ? localProfiles.get(st.locationProfile) : undefined),
          state: state(o),
          importSecret: await secret(o),
          app,
          path: o.path as RestorePath | 'auto',
          ...(o.restorePoint ? { restorePoint: o.restorePoint } : {}),
          ...(o.region ? { region: o.region } : {}),
          ...(o.name ? { nameFor: () => o.name ?? '' } : {}),
          ...(o.targetDir
            ? { streamTarget: (_r: string, name: string) => path.join(o.targetDir ?? '', name) }
            : {}),
          overwrite: o.overwrite ?? false,
          signal: signal(),
          onProgress: progress.update,
        }).finally(() => progress.done());
        if (o.json) return printJson(r);
        process.stdout.write(
          `restored ${app} from ${r.restorePoint} (consistent at ${r.consistentAt}) by ${r.path} in ${formatDuration(r.durationMs)}${r.bytesTransferred ? `, ${formatBytes(r.bytesTransferred)} read` : ''}\n`,
        );
      },
    );

  const pol = dr.command('policy').description('import policies: scheduled imports at the DR site');
  const service = async (o: Common) =>
    new DrService({
      site: o.site,
      stateDir: path.resolve(o.siteDir ?? process.env.TERN_DR_SITE_DIR ?? ''),
      importSecret: await secret(o),
      storeOptionsFor: (name) => localProfileOptions.get(name) ?? {},
    });
  // Filled before a local policy run from the data dir's catalog (the DR manifest keeps profile names only).
  const localProfileOptions = new Map<string, StoreOptions>();
  const loadProfiles = async (o: Common, names: (string | undefined)[]): Promise<void> => {
    for (const n of names)
      if (n && !localProfileOptions.has(n)) localProfileOptions.set(n, (await localStoreOptions(o, n)) ?? {});
  };
  withCommon(pol.command('add <name>').description('import a stream on a schedule'))
    .requiredOption('--token-file <file>', 'export details of the stream')
    .option('--frequency <f>', '@hourly, @daily… or a cron expression (UTC)', '@hourly')
    .option('--keep-last <n>', 'keep the n newest imported restore points', Number)
    .option('--restore', 'warm standby: restore the newest restore point after each import')
    .option('--standby-prefix <p>', 'name prefix of standby volumes')
    .option(
      '--location-profile <name>',
      "this site's location profile with the credentials for the export location (s3://, azblob://)",
    )
    .action(
      async (
        name: string,
        o: Common & {
          tokenFile: string;
          frequency: string;
          keepLast?: number;
          restore?: boolean;
          standbyPrefix?: string;
          locationProfile?: string;
        },
      ) => {
        const input = {
          name,
          token: (await fsp.readFile(o.tokenFile, 'utf8')).trim(),
          frequency: o.frequency,
          ...(o.keepLast ? { keepLast: o.keepLast } : {}),
          restoreAfterImport: o.restore ?? false,
          ...(o.standbyPrefix ? { standby: { prefix: o.standbyPrefix } } : {}),
          ...(o.locationProfile ? { locationProfile: o.locationProfile } : {}),
        };
        const api = remote(o);
        if (!api) await loadProfiles(o, [o.locationProfile]);
        const p = api
          ? await api.post<ImportPolicy>('/v1/dr/import-policies', input)
          : await (await service(o)).createImportPolicy(input);
        if (o.json) return printJson({ ...p, token: undefined });
        process.stdout.write(`import policy ${p.name} created (${String(p.frequency)})\n`);
      },
    );
  withCommon(pol.command('list').description('list import policies')).action(async (o: Common) => {
    const api = remote(o);
    const ps = api
      ? await api.get<ImportPolicy[]>('/v1/dr/import-policies')
      : await (await service(o)).listImportPolicies();
    if (o.json) return printJson(ps.map((p) => ({ ...p, token: undefined })));
    printTable(
      ['name', 'frequency', 'keep', 'standby', 'last run', 'last result'],
      ps.map((p) => [
        p.name,
        typeof p.frequency === 'string' ? p.frequency : JSON.stringify(p.frequency),
        p.keepLast ? String(p.keepLast) : 'all',
        p.restoreAfterImport ? 'yes' : 'no',
        p.lastRunAt ?? '-',
        p.lastResult ? (p.lastResult.error ?? `${p.lastResult.imported} imported`) : '-',
      ]),
    );
  });
  withCommon(pol.command('run [name]').description('run one import policy now, or every due one')).action(
    async (name: string | undefined, o: Common) => {
      const api = remote(o);
      if (api && !name)
        throw new InputError('through a server, name the policy (the server runs due ones itself)');
      if (api) {
        const r = await api.post<{ policy: string; result: ImportResult }>(
          `/v1/dr/import-policies/${encodeURIComponent(name ?? '')}/run`,
        );
        return o.json ? printJson([r]) : printImport(r.result);
      }
      const svc = await service(o);
      await loadProfiles(
        o,
        (await svc.listImportPolicies()).map((p) => p.locationProfile),
      );
      const out = name
        ? [{ policy: name, result: await svc.runImportPolicy(name, { signal: signal() }) }]
        : await svc.tick({ signal: signal() });
      if (o.json) return printJson(out);
      for (const r of out)
        process.stdout.write(
          `${r.policy}: ${'error' in r && r.error ? `error: ${r.error}` : `${r.result?.imported.length ?? 0} imported`}\n`,
        );
    },
  );

  withCommon(
    dr.command('report').description('per app and path: achieved RPO, export durations, RTO, 3-2-1'),
  ).action(async (o: Common) => {
    // With the import secret, records already at the export locations but not imported yet count too.
    const api = remote(o);
    const sec = !api && (o.secretFile || process.env.TERN_IMPORT_SECRET) ? await secret(o) : undefined;
    let rep: AppReport[];
    if (api) rep = await api.get<AppReport[]>('/v1/dr/report');
    else if (sec) {
      const svc = await service(o);
      await loadProfiles(
        o,
        Object.values((await svc.state.read()).imports).map((s) => s.locationProfile),
      );
      rep = await svc.report();
    } else rep = drReport(await state(o).read());
    if (o.json) return printJson(rep);
    const opt = (ms: number | undefined) => (ms === undefined ? '-' : formatDuration(ms));
    printTable(
      ['app', 'path', 'restore points', 'RPO now', 'export first', 'export incr', 'restore (RTO)', '3-2-1'],
      rep.flatMap((a) =>
        a.paths.map((p) => [
          a.app,
          p.path,
          String(p.restorePoints),
          opt(p.rpoSeconds === undefined ? undefined : p.rpoSeconds * 1000),
          opt(p.exportFirstMs),
          p.exportIncrementalMs === undefined
            ? '-'
            : `${formatDuration(p.exportIncrementalMs)}${p.exportIncrementalPercent !== undefined ? ` (${p.exportIncrementalPercent.toFixed(1)}%)` : ''}`,
          opt(p.restoreMs),
          `${p.rule321.copies}/${p.rule321.media}/${p.rule321.offsite} ${p.rule321.ok ? 'ok' : 'no'} (app: ${a.rule321.ok ? 'ok' : 'no'})`,
        ]),
      ),
    );
  });

  withCommon(
    dr
      .command('export-details')
      .description('source site: publish the records of an engine policy and print its export details'),
  )
    .requiredOption('--policy <name>', 'policy with an export step')
    .option('--records <url>', 'records location of a snapshot-copy policy (default: the DR region path)')
    .option('--out <file>', 'also write the export details to this file (mode 0600)')
    .action(async (o: Common & { policy: string; records?: string; out?: string }) => {
      const importSecret = await secret(o);
      const api = remote(o);
      const r = api
        ? await api.post<{ token: string; stream: string; published: string[]; restorePoints: number }>(
            `/v1/dr/export-details?policy=${encodeURIComponent(o.policy)}`,
            { importSecret, ...(o.records ? { records: o.records } : {}) },
          )
        : await withEngine(o, (engine) =>
            publishExportDetails(engine, {
              site: o.site,
              policy: o.policy,
              importSecret,
              ...(o.records ? { records: o.records } : {}),
              signal: signal(),
            }),
          );
      if (o.out) await fsp.writeFile(o.out, `${r.token}\n`, { mode: 0o600 });
      if (o.json)
        return printJson({
          token: r.token,
          stream: r.stream,
          published: r.published,
          restorePoints: r.restorePoints,
        });
      process.stderr.write(
        `${r.stream}: ${r.restorePoints} restore point(s), ${r.published.length} record(s) published\n`,
      );
      process.stdout.write(`${r.token}\n`);
    });
}
