/** `tern server`: opens the engine on a data dir, runs restart recovery, serves the HTTP API until SIGTERM/SIGINT. */
import fs from 'node:fs';
import type { Command } from 'commander';
import path from 'node:path';
import { openEngine } from '../../engine/index.ts';
import { DEFAULT_LISTEN, DrRuntime, startServer } from '../../server/index.ts';
import { InputError } from '../../core/index.ts';
import { defaultDataDir } from '../client.ts';
import { KubeConfig } from '@kubernetes/client-node';
import { leaderGated, type LeaderElector } from '../../engine/kube/leader.ts';
import { PolicyReconciler } from '../../engine/kube/policies.ts';
import { RestoreActionReconciler } from '../../engine/kube/reconciler.ts';
import { KubeClient } from '../../platforms/kubernetes/index.ts';

interface ServerFlags {
  dataDir?: string;
  listen?: string;
  tokenFile?: string;
  quiet?: boolean;
  kubernetes?: boolean | string;
  site?: string;
  importSecretFile?: string;
  drInterval?: string;
  leaderElection?: boolean;
  leaseDuration?: string;
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
    .option(
      '--kubernetes [namespace]',
      'also run the Policy and RestoreAction resources found in this namespace (default $POD_NAMESPACE or tern-system), using the in-cluster or default kubeconfig',
    )
    .option(
      '--no-leader-election',
      'with --kubernetes: reconcile without holding the tern-reconciler Lease (only for a single replica)',
    )
    .option(
      '--lease-duration <seconds>',
      'with --kubernetes: leader Lease duration; a successor takes over this long after the leader stops renewing (env TERN_LEASE_DURATION, default 15)',
    )
    .option('--site <name>', 'name of this site in DR streams (env TERN_SITE, default "site")')
    .option(
      '--import-secret-file <file>',
      'DR import secret of this site, for import policies (else env TERN_IMPORT_SECRET; without it DR imports are off)',
    )
    .option(
      '--dr-interval <seconds>',
      'how often import policies are checked (env TERN_DR_INTERVAL, default 60; 0 turns the timer off)',
    )
    .action(async (o: ServerFlags) => {
      const dataDir = o.dataDir ?? defaultDataDir();
      fs.mkdirSync(dataDir, { recursive: true, mode: 0o700 });
      const log = (line: string): void => {
        process.stderr.write(`${new Date().toISOString()} ${line}\n`);
      };
      const engine = openEngine({ catalog: path.join(dataDir, 'catalog.db') });
      const interval = Number(o.drInterval ?? process.env.TERN_DR_INTERVAL ?? 60);
      if (!Number.isFinite(interval) || interval < 0)
        throw new InputError(`--dr-interval must be a number of seconds, got "${o.drInterval}"`);
      const importSecret = o.importSecretFile
        ? fs.readFileSync(o.importSecretFile, 'utf8').replace(/\r?\n$/, '')
        : process.env.TERN_IMPORT_SECRET || undefined;
      const dr = new DrRuntime({
        site: o.site ?? process.env.TERN_SITE ?? 'site',
        stateDir: path.join(dataDir, 'dr'),
        ...(importSecret ? { importSecret } : {}),
        engine,
        intervalMs: Math.round(interval * 1000),
        log,
      });
      const server = await startServer({
        dr,
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
      log(
        `dr: site ${dr.site}, ${dr.service ? `import policies checked every ${interval} s` : 'imports off (no import secret)'}`,
      );
      let reconciler: RestoreActionReconciler | undefined;
      let policies: PolicyReconciler | undefined;
      let elector: LeaderElector | undefined;
      if (o.kubernetes) {
        const kc = new KubeConfig();
        kc.loadFromDefault();
        const namespace =
          typeof o.kubernetes === 'string' ? o.kubernetes : (process.env.POD_NAMESPACE ?? 'tern-system');
        reconciler = new RestoreActionReconciler({ client: new KubeClient(kc), namespace, log });
        policies = new PolicyReconciler({ client: new KubeClient(kc), namespace, log });
        if (o.leaderElection === false) {
          reconciler.start();
          policies.start();
        } else {
          const leaseS = Number(o.leaseDuration ?? process.env.TERN_LEASE_DURATION ?? 15);
          if (!Number.isFinite(leaseS) || leaseS < 1)
            throw new InputError(`--lease-duration must be at least 1 second, got "${o.leaseDuration}"`);
          elector = leaderGated(
            {
              client: new KubeClient(kc, { timeoutMs: Math.max(1000, (leaseS * 1000) / 3) }),
              namespace,
              leaseDurationMs: leaseS * 1000,
              retryPeriodMs: Math.max(200, (leaseS * 1000) / 7),
              log,
            },
            [reconciler, policies],
          );
          elector.start();
          log(`kubernetes: leader election as ${elector.identity} (lease ${namespace}/${elector.name})`);
        }
        log(
          `kubernetes: reconciling Policies and RestoreActions in namespace ${namespace} of ${kc.getCurrentCluster()?.server}`,
        );
      }
      await new Promise<void>((resolve) => {
        const stop = (sig: string): void => {
          log(`${sig}: shutting down`);
          (elector ? elector.stop() : Promise.all([reconciler?.stop(), policies?.stop()]))
            .then(() => server.close())
            .then(resolve, (err: unknown) => {
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
