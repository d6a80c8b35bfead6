/** `tern kube backup | restore`: back up a namespace to a bundle file, restore (or plan) it. Parse, call, print. */
import fsp from 'node:fs/promises';
import type { Command } from 'commander';
import { KubeConfig } from '@kubernetes/client-node';
import YAML from 'yaml';
import { InputError } from '../../core/index.ts';
import {
  KubeClient,
  LocalCommandRunner,
  backupNamespace,
  parseBundle,
  parseHooks,
  parseTransforms,
  restoreBundle,
} from '../../platforms/kubernetes/index.ts';
import { printJson, printTable } from '../output.ts';
import { interruptSignal } from '../signals.ts';

interface Common {
  kubeconfig?: string;
  context?: string;
  json?: boolean;
}

function withCommon(cmd: Command): Command {
  return cmd
    .option('--kubeconfig <file>', 'kubeconfig (default: $KUBECONFIG, ~/.kube/config, or in-cluster)')
    .option('--context <name>', 'kubeconfig context')
    .option('--json', 'print JSON');
}

function client(o: Common): KubeClient {
  const kc = new KubeConfig();
  try {
    if (o.kubeconfig) kc.loadFromFile(o.kubeconfig);
    else kc.loadFromDefault();
    if (o.context) kc.setCurrentContext(o.context);
  } catch (err) {
    throw new InputError(`cannot load the kubeconfig: ${(err as Error).message}`, { cause: err });
  }
  return new KubeClient(kc);
}

async function readStructured(file: string, what: string): Promise<unknown> {
  const text = await fsp.readFile(file, 'utf8').catch((err: unknown) => {
    throw new InputError(`cannot read ${what} file ${file}`, { cause: err });
  });
  try {
    return file.endsWith('.json') ? JSON.parse(text) : YAML.parse(text);
  } catch (err) {
    throw new InputError(`${what} file ${file} is not valid ${file.endsWith('.json') ? 'JSON' : 'YAML'}`, {
      cause: err,
    });
  }
}

const signal = interruptSignal;

export function registerKube(program: Command): void {
  const kube = program.command('kube').description('Kubernetes namespaces: backup to a bundle, restore');

  withCommon(kube.command('backup <namespace>').description('capture a namespace and snapshot its volumes'))
    .requiredOption('--out <file>', 'write the bundle (JSON, includes Secrets: mode 0600) here')
    .option('--hooks <file>', 'pre/post snapshot hooks (JSON or YAML list), run as local commands')
    .option('--snapshot-timeout <seconds>', 'wait this long for each snapshot to be ready', Number, 600)
    .action(
      async (namespace: string, o: Common & { out: string; hooks?: string; snapshotTimeout: number }) => {
        const hooks = o.hooks ? parseHooks(await readStructured(o.hooks, 'hooks')) : [];
        const bundle = await backupNamespace(client(o), namespace, {
          hooks,
          hookRunner: new LocalCommandRunner(),
          snapshotTimeoutMs: o.snapshotTimeout * 1000,
          signal: signal(),
        });
        // The bundle holds the namespace's Secrets as the API returns them: readable by the owner only.
        await fsp.writeFile(o.out, JSON.stringify(bundle, null, 1), { mode: 0o600 });
        if (o.json)
          printJson({ id: bundle.id, out: o.out, objects: bundle.resources.length, volumes: bundle.volumes });
        else
          process.stdout.write(
            `backup ${bundle.id}: ${bundle.resources.length} objects, ${bundle.volumes.length} volume snapshots -> ${o.out}\n`,
          );
      },
    );

  withCommon(kube.command('restore').description('restore a bundle into its namespace or another one'))
    .requiredOption('--bundle <file>', 'bundle written by "tern kube backup"')
    .option('--target-namespace <ns>', 'restore into this namespace (default: the original)')
    .option('--transforms <file>', 'JSON-patch transforms (JSON or YAML list of {kinds, name, ops})')
    .option('--existing <policy>', 'objects that exist: skip or overwrite', 'skip')
    .option('--dry-run', 'print the plan, change nothing')
    .action(
      async (
        o: Common & {
          bundle: string;
          targetNamespace?: string;
          transforms?: string;
          existing: string;
          dryRun?: boolean;
        },
      ) => {
        if (o.existing !== 'skip' && o.existing !== 'overwrite')
          throw new InputError(`--existing must be skip or overwrite, got "${o.existing}"`);
        const bundle = parseBundle(
          await fsp.readFile(o.bundle, 'utf8').catch((err: unknown) => {
            throw new InputError(`cannot read bundle file ${o.bundle}`, { cause: err });
          }),
        );
        const transforms = o.transforms
          ? parseTransforms(await readStructured(o.transforms, 'transforms'))
          : [];
        const r = await restoreBundle(client(o), bundle, {
          targetNamespace: o.targetNamespace,
          transforms,
          existing: o.existing,
          dryRun: o.dryRun,
          signal: signal(),
        });
        if (o.json) return printJson(r);
        printTable(
          ['Kind', 'Name', 'Action', 'Note'],
          r.plan.map((p) => [
            p.kind,
            p.name,
            r.dryRun ? `would ${p.action}` : p.action,
            [p.reason, p.fromSnapshotHandle ? `from snapshot ${p.fromSnapshotHandle}` : '']
              .filter(Boolean)
              .join('; '),
          ]),
        );
        for (const w of r.warnings) process.stderr.write(`warning: ${w}\n`);
      },
    );
}
