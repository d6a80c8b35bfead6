/** `tern server`: opens the engine on a data dir, runs restart recovery, serves the HTTP API until SIGTERM/SIGINT. */
import fs from 'node:fs';
import type { Command } from 'commander';
import path from 'node:path';
import { openEngine } from '../../engine/index.ts';
import { DEFAULT_LISTEN, startServer } from '../../server/index.ts';
import { defaultDataDir } from '../client.ts';

interface ServerFlags {
  dataDir?: string;
  listen?: string;
  tokenFile?: string;
  quiet?: boolean;
}

export function registerServer(program: Command): void {
  program
    .command('server')
    .description('run the Tern API server (and the scheduler) on a data dir')
    .option('--data-dir <dir>', 'catalog, token and state (env TERN_DATA_DIR, default ~/.tern)')
    .option('--listen <host:port>', `address to listen on (default ${DEFAULT_LISTEN}; port 0 picks one)`)
    .option(
      '--token-file <file>',
      'API bearer token (else env TERN_API_TOKEN, else <data-dir>/api-token, generated)',
    )
    .option('--quiet', 'do not log requests')
    .action(async (o: ServerFlags) => {
      const dataDir = o.dataDir ?? defaultDataDir();
      fs.mkdirSync(dataDir, { recursive: true, mode: 0o700 });
      const log = (line: string): void => {
        process.stderr.write(`${new Date().toISOString()} ${line}\n`);
      };
      const engine = openEngine({ catalog: path.join(dataDir, 'catalog.db') });
      const server = await startServer({
        service: engine,
        dataDir,
        listen: o.listen ?? process.env.TERN_LISTEN ?? DEFAULT_LISTEN,
        tokenFile: o.tokenFile,
        log: o.quiet ? undefined : log,
      });
      const { resumed, failed } = engine.lastRecovery;
      if (resumed.length + failed.length > 0)
        log(
          `restart recovery: resumed ${resumed.join(', ') || 'none'}; failed ${failed.join(', ') || 'none'}`,
        );
      log(`tern server listening on ${server.url} (token from ${server.tokenSource}, data in ${dataDir})`);
      await new Promise<void>((resolve) => {
        const stop = (sig: string): void => {
          log(`${sig}: shutting down`);
          server.close().then(resolve, (err: unknown) => {
            log(`shutdown error: ${String(err)}`);
            resolve();
          });
        };
        process.once('SIGTERM', () => stop('SIGTERM'));
        process.once('SIGINT', () => stop('SIGINT'));
      });
      log('tern server stopped');
    });
}
