/** `tern demo`: the DR experiment end to end on this host (src/demo/). Parse, run, print. */
import type { Command } from 'commander';
import { formatBytes, formatDuration, parseSize } from '../../core/index.ts';
import { runDemo } from '../../demo/experiment.ts';
import { printJson, printTable, progressPrinter } from '../output.ts';

export function registerDemo(program: Command): void {
  program
    .command('demo')
    .description(
      'DR experiment: two sites, datamover vs snapshot copy, a disaster, import + restore, RPO/RTO',
    )
    .option('--size <size>', 'application volume size (e.g. 256MiB, 5GiB)', '256MiB')
    .option('--change-block <size>', 'the 1% change is written in scattered pieces of this size', '4KiB')
    .option(
      '--platform <type>',
      'platform: local, or azure (Azurite + the compute emulator, started for the demo)',
      'local',
    )
    .option('--work-dir <dir>', 'where the sites are created (default: the temp dir)')
    .option('--no-loop', 'plain directories instead of loop filesystems')
    .option('--keep', 'leave the sites for inspection')
    .option('--json', 'print JSON')
    .action(
      async (o: {
        size: string;
        changeBlock: string;
        platform: string;
        workDir?: string;
        loop: boolean;
        keep?: boolean;
        json?: boolean;
      }) => {
        const ac = new AbortController();
        const onSig = (): void => ac.abort(new Error('interrupted'));
        process.once('SIGINT', onSig);
        process.once('SIGTERM', onSig);
        const progress = progressPrinter(!o.json && process.stderr.isTTY === true);
        const r = await runDemo({
          size: parseSize(o.size),
          changeBlock: parseSize(o.changeBlock),
          platform: o.platform,
          keep: o.keep ?? false,
          loop: o.loop,
          ...(o.workDir ? { workDir: o.workDir } : {}),
          signal: ac.signal,
          onProgress: progress.update,
          log: o.json
            ? undefined
            : (line) => {
                progress.done();
                process.stderr.write(`${line}\n`);
              },
        }).finally(() => progress.done());
        if (o.json) return printJson(r);
        process.stdout.write(
          `\nTern DR demo: ${formatBytes(r.size)} volume, ${formatBytes(r.changedBytes)} changed between runs (in ${formatBytes(r.changeBlock)} pieces), sites on ${r.sites.map((s) => `${s.name}=${s.fsType}`).join(', ')}\n\n`,
        );
        printTable(
          [
            'path',
            'export first',
            'export incremental',
            'restore',
            'RTO (restored+checked)',
            'RPO',
            'bytes moved (first / incr)',
            'data',
          ],
          r.paths.map((p) => [
            p.path,
            formatDuration(p.exportFirstMs),
            `${formatDuration(p.exportIncrementalMs)} (${p.incrementalPercent.toFixed(1)}%)`,
            formatDuration(p.restoreMs),
            formatDuration(p.rtoMs),
            formatDuration(p.rpoMs),
            `${formatBytes(p.bytesFirst)} / ${formatBytes(p.bytesIncremental)}`,
            p.checksumOk ? 'checksum ok' : 'CHECKSUM FAILED',
          ]),
        );
        const rule = r.report.map(
          (a) =>
            `${a.app}: 3-2-1 ${a.rule321.ok ? 'ok' : 'NOT met'} (${a.rule321.copies} copies, ${a.rule321.media} media, ${a.rule321.offsite} off-site)`,
        );
        process.stdout.write(`\n${rule.join('\n')}\n`);
        if (r.kept)
          process.stdout.write(
            `sites kept in ${r.kept}; to remove them:\n  ${(r.cleanup ?? []).join('\n  ')}\n`,
          );
        for (const n of r.notices) process.stdout.write(`notice: ${n}\n`);
      },
    );
}
