/** `tern dr import | restore | report`: the DR site's verbs (src/engine/dr). Parse, call, print. */
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
import type { RestorePath } from '../../engine/dr/index.ts';
import { printJson, printTable, progressPrinter } from '../output.ts';

interface Common {
  siteDir?: string;
  site: string;
  secretFile?: string;
  json?: boolean;
}

function withCommon(cmd: Command): Command {
  return cmd
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

function signal(): AbortSignal {
  const ac = new AbortController();
  const onSig = (): void => ac.abort(new Error('interrupted'));
  process.once('SIGINT', onSig);
  process.once('SIGTERM', onSig);
  return ac.signal;
}

export function registerDr(program: Command): void {
  const dr = program.command('dr').description('disaster recovery at the DR site: import, restore, report');

  withCommon(dr.command('import').description('import every new restore point named by export details'))
    .option('--token <token>', 'export details (tern-x1.…)')
    .option('--token-file <file>', 'read the export details from a file')
    .option('--keep-last <n>', 'DR-side retention: keep the n newest imported restore points', Number)
    .option('--restore', 'warm standby: restore the newest restore point after importing')
    .option('--target-dir <dir>', 'where repository restores write volumes (default: the platform region)')
    .action(
      async (
        o: Common & {
          token?: string;
          tokenFile?: string;
          keepLast?: number;
          restore?: boolean;
          targetDir?: string;
        },
      ) => {
        const token = o.token ?? (o.tokenFile ? await fsp.readFile(o.tokenFile, 'utf8') : undefined);
        if (!token) throw new InputError('give --token or --token-file');
        const r = await importRestorePoints({
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
        if (o.json) return printJson(r);
        process.stdout.write(
          `${r.app} (${r.kind}): ${r.imported.length} restore point(s) imported, ${r.alreadyImported} already here${r.forgotten.length ? `, ${r.forgotten.length} forgotten by retention` : ''}${r.standby ? `, standby restored in ${formatDuration(r.standby.durationMs)}` : ''}\n`,
        );
        for (const m of r.rejected) process.stderr.write(`rejected: ${m}\n`);
        if (r.missing.length) process.stderr.write(`not (yet) at the location: ${r.missing.join(', ')}\n`);
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
        const progress = progressPrinter(!o.json && process.stderr.isTTY === true);
        const r = await restoreAtDr({
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
    });
  withCommon(pol.command('add <name>').description('import a stream on a schedule'))
    .requiredOption('--token-file <file>', 'export details of the stream')
    .option('--frequency <f>', '@hourly, @daily… or a cron expression (UTC)', '@hourly')
    .option('--keep-last <n>', 'keep the n newest imported restore points', Number)
    .option('--restore', 'warm standby: restore the newest restore point after each import')
    .option('--standby-prefix <p>', 'name prefix of standby volumes')
    .action(
      async (
        name: string,
        o: Common & {
          tokenFile: string;
          frequency: string;
          keepLast?: number;
          restore?: boolean;
          standbyPrefix?: string;
        },
      ) => {
        const p = await (
          await service(o)
        ).createImportPolicy({
          name,
          token: (await fsp.readFile(o.tokenFile, 'utf8')).trim(),
          frequency: o.frequency,
          ...(o.keepLast ? { keepLast: o.keepLast } : {}),
          restoreAfterImport: o.restore ?? false,
          ...(o.standbyPrefix ? { standby: { prefix: o.standbyPrefix } } : {}),
        });
        if (o.json) return printJson({ ...p, token: undefined });
        process.stdout.write(`import policy ${p.name} created (${String(p.frequency)})\n`);
      },
    );
  withCommon(pol.command('list').description('list import policies')).action(async (o: Common) => {
    const ps = await (await service(o)).listImportPolicies();
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
      const svc = await service(o);
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
    const dir = o.siteDir ?? process.env.TERN_DR_SITE_DIR ?? '';
    const sec = o.secretFile || process.env.TERN_IMPORT_SECRET ? await secret(o) : undefined;
    const rep = sec
      ? await new DrService({ site: o.site, stateDir: path.resolve(dir), importSecret: sec }).report()
      : drReport(await state(o).read());
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
}
