/** Repository verbs: repo init, backup, snapshots, ls, restore, verify, forget, prune, stats, key. */
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import type { Command } from 'commander';
import { AuthError, formatBytes, InputError, IntegrityError, parseSize } from '../../core/base.ts';
import { openStore } from '../../storage/index.ts';
import {
  backupImage,
  forget,
  ImageMapView,
  parseRanges,
  prune,
  Repository,
  restoreImage,
  stats,
  verify,
  type KeepPolicy,
  type SnapshotManifest,
} from '../../repo/index.ts';
import { backupTree, listTree, modeString, restoreTree } from '../../repo/tree/index.ts';
import { OutputBuffer, printJson, printJsonArray, printTable, progressPrinter } from '../output.ts';
import { interruptSignal } from '../signals.ts';
import {
  isRestorePointForm,
  restorePointOptions,
  restoreRestorePoint,
  type RestorePointFlags,
} from './restore.ts';

type RestoreFlags = Common & RestorePointFlags & { overwrite?: boolean };

interface Common {
  repo?: string;
  passwordFile?: string;
  json?: boolean;
}

function withCommon(cmd: Command): Command {
  return cmd
    .option('-r, --repo <url>', 'repository location (path, s3://, azblob://); env TERN_REPOSITORY')
    .option('--password-file <file>', 'read the passphrase from this file (else env TERN_PASSWORD)')
    .option('--json', 'print JSON');
}

async function passphrase(o: Common, env = 'TERN_PASSWORD', file = o.passwordFile): Promise<string> {
  if (file) return (await fsp.readFile(file, 'utf8')).replace(/\r?\n$/, '');
  const p = process.env[env];
  if (p === undefined || p === '') throw new AuthError(`no passphrase: set ${env} or use --password-file`);
  return p;
}

function location(o: Common): string {
  const r = o.repo ?? process.env.TERN_REPOSITORY;
  if (!r) throw new InputError('no repository: use --repo or set TERN_REPOSITORY');
  return r;
}

/** `metadata`: the verb reads listings, keys or snapshots: crypto workers start only if it decrypts data. */
async function withRepo<T>(
  o: Common,
  fn: (repo: Repository) => Promise<T>,
  use: 'data' | 'metadata' = 'data',
): Promise<T> {
  const store = await openStore(location(o));
  const repo = await Repository.open(store, await passphrase(o), { startWorkers: use === 'data' });
  try {
    return await fn(repo);
  } finally {
    await repo.close();
    await store.close?.();
  }
}

const signal = interruptSignal;

function short(id: string): string {
  return id.slice(0, 8);
}

function int(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new InputError(`"${v}" is not a non-negative integer`);
  return n;
}

export function registerRepo(program: Command): void {
  const repoCmd = program.command('repo').description('repository administration');
  withCommon(repoCmd.command('init').description('create a new encrypted repository')).action(
    async (o: Common) => {
      const store = await openStore(location(o));
      const repo = await Repository.init(store, await passphrase(o));
      await repo.close();
      if (o.json) printJson({ id: repo.config.id, location: store.location });
      else process.stdout.write(`created repository ${short(repo.config.id)} at ${store.location}\n`);
    },
  );

  withCommon(
    program.command('backup <path>').description('back up a directory tree or a file/block device (image)'),
  )
    .option('--tag <tag...>', 'tag the snapshot (repeatable)')
    .option('--parent <id>', 'parent snapshot (incremental)')
    .option('--changed-ranges <file>', 'image: JSON [{offset,length}] of ranges changed since the parent')
    .option('--chunk-size <size>', 'image chunk size (default 1MiB)')
    .action(
      async (
        p: string,
        o: Common & { tag?: string[]; parent?: string; changedRanges?: string; chunkSize?: string },
      ) => {
        const st = await fsp.stat(p).catch((err: unknown) => {
          throw new InputError(`cannot read ${p}`, { cause: err });
        });
        const path = fs.realpathSync(p);
        const sig = signal();
        const progress = progressPrinter(!o.json && process.stderr.isTTY === true);
        const started = Date.now();
        const m = await withRepo(o, async (repo) => {
          const parent = o.parent ? await repo.resolveSnapshot(o.parent) : undefined;
          const session = await repo.startBackup();
          try {
            let manifest: SnapshotManifest;
            if (st.isDirectory()) {
              if (parent && parent.root.kind !== 'tree')
                throw new InputError('the parent snapshot is not a directory tree');
              const r = await backupTree(session, path, {
                signal: sig,
                onProgress: progress.update,
                reader: repo,
                parentTree: parent?.root.kind === 'tree' ? parent.root.tree : undefined,
              });
              manifest = await session.saveSnapshot({
                paths: [path],
                tags: o.tag ?? [],
                parent: parent?.id,
                root: { kind: 'tree', tree: r.tree },
                summary: {
                  bytesRead: r.stats.bytesRead,
                  bytesAdded: r.stats.bytesAdded,
                  filesNew: r.stats.filesNew,
                  filesChanged: r.stats.filesChanged,
                  filesUnmodified: r.stats.filesUnmodified,
                  durationMs: Date.now() - started,
                },
              });
            } else {
              if (parent && parent.root.kind !== 'image')
                throw new InputError('the parent snapshot is not an image');
              const ranges = o.changedRanges
                ? parseRanges(await fsp.readFile(o.changedRanges, 'utf8'))
                : undefined;
              const r = await backupImage(session, path, {
                signal: sig,
                onProgress: progress.update,
                reader: repo,
                parentMap: parent?.root.kind === 'image' ? parent.root.map : undefined,
                changedRanges: ranges,
                chunkSize: o.chunkSize ? parseSize(o.chunkSize) : undefined,
              });
              manifest = await session.saveSnapshot({
                paths: [path],
                tags: o.tag ?? [],
                parent: parent?.id,
                root: { kind: 'image', map: r.map, size: r.size },
                summary: {
                  bytesRead: r.bytesRead,
                  bytesAdded: r.bytesAdded,
                  durationMs: Date.now() - started,
                },
              });
            }
            return manifest;
          } finally {
            progress.done();
            await session.close();
          }
        });
        if (o.json) printJson(m);
        else
          process.stdout.write(
            `snapshot ${short(m.id)} saved: ${formatBytes(m.summary.bytesRead)} read, ${formatBytes(m.summary.bytesAdded)} added in ${(m.summary.durationMs / 1000).toFixed(1)} s\n`,
          );
      },
    );

  withCommon(program.command('snapshots').description('list snapshots'))
    .option('--tag <tag...>', 'only snapshots with these tags')
    .action(async (o: Common & { tag?: string[] }) => {
      const snaps = await withRepo(o, (repo) => repo.listSnapshots(), 'metadata');
      const sel = snaps.filter((s) => !o.tag || o.tag.every((t) => s.tags.includes(t)));
      if (o.json) printJson(sel);
      else
        printTable(
          ['ID', 'Time', 'Host', 'Kind', 'Tags', 'Paths', 'Size'],
          sel.map((s) => [
            short(s.id),
            s.time.replace('T', ' ').slice(0, 19),
            s.hostname,
            s.root.kind,
            s.tags.join(','),
            s.paths.join(','),
            s.root.kind === 'image' ? formatBytes(s.root.size) : formatBytes(s.summary.bytesRead),
          ]),
        );
    });

  withCommon(program.command('ls <id>').description('list a snapshot (tree entries or image chunks)'))
    .option('--path <path>', 'tree: list below this path')
    .option('-R, --recursive', 'tree: list recursively')
    .action(async (id: string, o: Common & { path?: string; recursive?: boolean }) => {
      await withRepo(
        o,
        async (repo) => {
          const s = await repo.resolveSnapshot(id);
          if (s.root.kind === 'image') {
            const map = await ImageMapView.open(repo, s.root.map);
            let zero = 0;
            for (let k = 0; k < map.segmentCount; k++)
              for (const c of await map.segment(k)) if (c === null) zero++;
            const info = {
              snapshot: s.id,
              kind: 'image',
              size: map.size,
              chunkSize: map.chunkSize,
              chunks: map.chunks,
              zeroChunks: zero,
            };
            if (o.json) printJson(info);
            else
              process.stdout.write(
                `image ${s.paths.join(',')}: ${formatBytes(map.size)} (${map.size} bytes), ${map.chunks} chunks of ${formatBytes(map.chunkSize)}, ${zero} zero\n`,
              );
            return;
          }
          // Printed as read: a directory of any size is never held whole.
          const entries = listTree(repo, s.root.tree, { path: o.path, recursive: o.recursive ?? true });
          if (o.json) {
            await printJsonArray(
              (async function* () {
                for await (const { path: p, node } of entries)
                  yield {
                    path: p,
                    type: node.type,
                    mode: node.mode,
                    size: node.size,
                    mtimeMs: node.mtimeMs,
                    ...(node.linkTarget !== undefined ? { linkTarget: node.linkTarget } : {}),
                  };
              })(),
            );
            return;
          }
          const out = new OutputBuffer();
          for await (const { path: p, node } of entries)
            await out.line(
              `${modeString(node)} ${String(node.size ?? '').padStart(12)} ${new Date(node.mtimeMs).toISOString().slice(0, 19)} ${p}${node.type === 'symlink' ? ` -> ${node.linkTarget ?? ''}` : ''}\n`,
            );
          await out.end();
        },
        'metadata',
      );
    });

  // One verb, two forms: with --repo (or TERN_REPOSITORY) a repository snapshot, else a restore point (restore.ts).
  restorePointOptions(
    withCommon(
      program
        .command('restore [id] [target]')
        .description(
          'restore a repository snapshot ("latest" for the newest) with --repo, or a restore point with --restore-point',
        ),
    ),
  )
    .option('--overwrite', 'replace existing files')
    .action(async (id: string | undefined, target: string | undefined, o: RestoreFlags) => {
      if (isRestorePointForm(o)) return restoreRestorePoint(o, id);
      if (!id || !target) throw new InputError('usage: tern restore <id> <target> --repo <url>');
      const sig = signal();
      const progress = progressPrinter(!o.json && process.stderr.isTTY === true);
      const started = Date.now();
      const out = await withRepo(o, async (repo) => {
        const s = await repo.resolveSnapshot(id);
        try {
          if (s.root.kind === 'image') {
            const r = await restoreImage(repo, s.root.map, target, {
              signal: sig,
              onProgress: progress.update,
              overwrite: o.overwrite,
            });
            return {
              snapshot: s.id,
              kind: 'image',
              bytes: r.bytesWritten,
              bytesDirect: r.bytesDirect,
              size: r.size,
            };
          }
          const r = await restoreTree(repo, s.root.tree, target, {
            signal: sig,
            onProgress: progress.update,
            overwrite: o.overwrite,
          });
          return {
            snapshot: s.id,
            kind: 'tree',
            files: r.files,
            bytes: r.bytes,
            bytesDirect: r.bytesDirect,
            warnings: r.warnings,
          };
        } finally {
          progress.done();
        }
      });
      const ms = Date.now() - started;
      if (o.json) printJson({ ...out, durationMs: ms });
      else {
        for (const w of ('warnings' in out ? out.warnings : undefined) ?? [])
          process.stderr.write(`warning: ${w}\n`);
        process.stdout.write(
          `restored ${short(out.snapshot)} to ${target}: ${formatBytes(out.bytes)} in ${(ms / 1000).toFixed(1)} s\n`,
        );
      }
    });

  withCommon(
    program.command('verify').description('check the repository structure (and data with --read-data)'),
  )
    .option('--read-data', 'decrypt and hash every blob')
    .option('--read-data-subset <pct>', 'read this percentage of packs (e.g. 10%)')
    .action(async (o: Common & { readData?: boolean; readDataSubset?: string }) => {
      const pct = o.readDataSubset ? Number(o.readDataSubset.replace('%', '')) : undefined;
      if (pct !== undefined && !(pct > 0 && pct <= 100))
        throw new InputError('--read-data-subset takes 1-100%');
      const r = await withRepo(o, (repo) =>
        verify(repo, { readData: o.readData || pct !== undefined, subsetPercent: pct }),
      );
      if (o.json) printJson(r);
      else {
        for (const e of r.errors) process.stderr.write(`error: ${e.object}: ${e.message}\n`);
        process.stdout.write(
          `${r.ok ? 'no errors' : `${r.errors.length} error(s)`}: ${r.snapshots} snapshots, ${r.packs} packs${o.readData || pct ? `, ${r.blobsChecked} blobs read (${formatBytes(r.bytesChecked)})` : ''}\n`,
        );
      }
      if (!r.ok)
        throw new IntegrityError(
          `verify found ${r.errors.length} error(s): ${r.errors
            .map((e) => e.object)
            .slice(0, 5)
            .join(', ')}`,
          {
            details: { objects: r.errors.map((e) => e.object) },
          },
        );
    });

  withCommon(
    program.command('forget [ids...]').description('remove snapshots by id or by a retention policy'),
  )
    .option('--keep-last <n>', 'keep the n newest', int)
    .option('--keep-hourly <n>', 'keep the newest of each of n hours', int)
    .option('--keep-daily <n>', 'keep the newest of each of n days', int)
    .option('--keep-weekly <n>', 'keep the newest of each of n weeks', int)
    .option('--keep-monthly <n>', 'keep the newest of each of n months', int)
    .option('--keep-yearly <n>', 'keep the newest of each of n years', int)
    .option('--tag <tag...>', 'only snapshots with these tags')
    .option('--dry-run', 'only show what would be removed')
    .option('--prune', 'run prune afterwards')
    .action(
      async (
        ids: string[],
        o: Common & {
          keepLast?: number;
          keepHourly?: number;
          keepDaily?: number;
          keepWeekly?: number;
          keepMonthly?: number;
          keepYearly?: number;
          tag?: string[];
          dryRun?: boolean;
          prune?: boolean;
        },
      ) => {
        const policy: KeepPolicy = {
          last: o.keepLast,
          hourly: o.keepHourly,
          daily: o.keepDaily,
          weekly: o.keepWeekly,
          monthly: o.keepMonthly,
          yearly: o.keepYearly,
          tags: o.tag,
        };
        const hasPolicy = [
          policy.last,
          policy.hourly,
          policy.daily,
          policy.weekly,
          policy.monthly,
          policy.yearly,
        ].some((v) => v !== undefined);
        if (!hasPolicy && ids.length === 0)
          throw new InputError('give snapshot ids or at least one --keep-* option');
        const r = await withRepo(
          o,
          async (repo) => {
            let res: { keep: SnapshotManifest[]; remove: SnapshotManifest[] };
            if (ids.length > 0) {
              const remove = await Promise.all(ids.map((i) => repo.resolveSnapshot(i)));
              if (!o.dryRun) for (const s of remove) await repo.store.delete(`snapshots/${s.id}`);
              res = { keep: [], remove };
            } else res = await forget(repo, policy, { dryRun: o.dryRun });
            const pr = o.prune && !o.dryRun ? await prune(repo) : undefined;
            return { ...res, prune: pr };
          },
          'metadata',
        );
        if (o.json)
          printJson({
            keep: r.keep.map((s) => s.id),
            remove: r.remove.map((s) => s.id),
            dryRun: o.dryRun === true,
            prune: r.prune,
          });
        else {
          process.stdout.write(
            `${o.dryRun ? 'would remove' : 'removed'} ${r.remove.length} snapshot(s), kept ${r.keep.length}\n`,
          );
          for (const s of r.remove) process.stdout.write(`  ${short(s.id)} ${s.time}\n`);
        }
      },
    );

  withCommon(program.command('prune').description('delete data no snapshot references (exclusive lock)'))
    .option('--dry-run', 'only report')
    .action(async (o: Common & { dryRun?: boolean }) => {
      const r = await withRepo(o, (repo) => prune(repo, { dryRun: o.dryRun }));
      if (o.json) printJson(r);
      else
        process.stdout.write(
          `${r.dryRun ? 'would delete' : 'deleted'} ${r.packsDeleted} pack(s), repacked ${r.packsRepacked}, removed ${r.packsUnindexedDeleted} unindexed, ${r.blobsRemoved} blob(s), ${formatBytes(r.bytesFreed)} freed\n`,
        );
    });

  withCommon(program.command('stats').description('repository statistics')).action(async (o: Common) => {
    const r = await withRepo(o, (repo) => stats(repo), 'metadata');
    if (o.json) printJson(r);
    else
      printTable(
        ['snapshots', 'packs', 'blobs', 'stored', 'raw', 'referenced', 'dedup', 'compression'],
        [
          [
            String(r.snapshots),
            String(r.packs),
            String(r.blobs),
            formatBytes(r.storedBytes),
            formatBytes(r.rawBytes),
            formatBytes(r.logicalBytes),
            `${r.dedupRatio.toFixed(2)}x`,
            `${r.compressionRatio.toFixed(2)}x`,
          ],
        ],
      );
  });

  const key = program.command('key').description('manage passphrases (key files)');
  withCommon(key.command('list').description('list key files')).action(async (o: Common) => {
    const keys = await withRepo(o, (repo) => repo.listKeys(), 'metadata');
    if (o.json) printJson(keys);
    else
      printTable(
        ['ID', 'Created', 'Host', 'Current'],
        keys.map((k) => [short(k.id), k.created, k.hostname, k.current ? '*' : '']),
      );
  });
  withCommon(
    key.command('add').description('add a passphrase (env TERN_NEW_PASSWORD or --new-password-file)'),
  )
    .option('--new-password-file <file>', 'file holding the new passphrase')
    .action(async (o: Common & { newPasswordFile?: string }) => {
      const np = await passphrase(o, 'TERN_NEW_PASSWORD', o.newPasswordFile);
      const id = await withRepo(o, (repo) => repo.addKey(np), 'metadata');
      if (o.json) printJson({ id });
      else process.stdout.write(`added key ${short(id)}\n`);
    });
  withCommon(
    key.command('remove <id>').description('remove a key file (not the last one, not the one in use)'),
  ).action(async (id: string, o: Common) => {
    const removed = await withRepo(o, (repo) => repo.removeKey(id), 'metadata');
    if (o.json) printJson({ removed });
    else process.stdout.write(`removed key ${short(removed)}\n`);
  });
}
