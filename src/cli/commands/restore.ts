/**
 * `tern restore` for restore points (through the server). The same verb restores repository snapshots
 * when --repo (or TERN_REPOSITORY) is given; repo.ts owns that form and hands the rest to this module.
 */
import type { Command } from 'commander';
import type { ActionRun } from '../../core/index.ts';
import { formatBytes, InputError } from '../../core/base.ts';
import type { ClientFlags } from '../client.ts';
import { printJson, printTable } from '../output.ts';

export interface RestorePointFlags extends ClientFlags {
  restorePoint?: string;
  source?: string;
  toApp?: string;
  volumes?: string;
  dryRun?: boolean;
  wait?: boolean;
}

interface Plan {
  restorePoint: string;
  app: string;
  targetApp: string;
  inPlace: boolean;
  source: string;
  consistentAt: string;
  totalBytes: number;
  volumes: {
    volume: string;
    from: string;
    to: string;
    region: string;
    sizeBytes: number;
    overwrite: boolean;
  }[];
}

export function restorePointOptions(cmd: Command): Command {
  return cmd
    .option('--restore-point <id>', 'restore this restore point (through the Tern server)')
    .option('--source <source>', 'snapshot, repository or auto (default: the local snapshot if it exists)')
    .option('--to-app <name>', 'restore into a new application of this name (default: in place)')
    .option('--volumes <a,b>', 'only these volumes')
    .option('--dry-run', 'only show the plan')
    .option('--wait', 'wait until the restore finishes')
    .option('--server <url>', 'Tern server URL (env TERN_SERVER)')
    .option('--data-dir <dir>', 'where to find server.url and api-token (env TERN_DATA_DIR)');
}

/** True when `tern restore` means a restore point, not a repository snapshot. */
export function isRestorePointForm(o: { repo?: string; restorePoint?: string }, env = process.env): boolean {
  if (o.restorePoint !== undefined) return true;
  return !o.repo && !env.TERN_REPOSITORY;
}

export async function restoreRestorePoint(
  o: RestorePointFlags,
  positional: string | undefined,
): Promise<void> {
  const id = o.restorePoint ?? positional;
  if (!id)
    throw new InputError('which restore point? use --restore-point ID (or --repo for repository snapshots)');
  // Loaded here: the API client and the action helpers bring the server's modules and the policy model (zod,
  // yaml), which `tern restore --repo` never needs.
  const { ApiClient } = await import('../client.ts');
  const client = ApiClient.fromFlags(o);
  const result = await client.post<{ plan: Plan; actionId?: string; action?: ActionRun }>('/v1/restores', {
    restorePoint: id,
    ...(o.source !== undefined ? { source: o.source } : {}),
    ...(o.toApp !== undefined ? { targetApp: o.toApp } : {}),
    ...(o.volumes !== undefined ? { volumes: o.volumes.split(',').filter(Boolean) } : {}),
    dryRun: o.dryRun === true,
  });
  if (o.wait && result.actionId) {
    const { ACTION_HEADERS, actionRow, failOnBadAction, waitForActions } = await import('./control.ts');
    const done = await waitForActions(client, [result.actionId]);
    if (o.json) printJson({ plan: result.plan, action: done[0] });
    else {
      printPlan(result.plan);
      printTable(ACTION_HEADERS, done.map(actionRow));
    }
    failOnBadAction(done);
    return;
  }
  if (o.json) return printJson(result);
  printPlan(result.plan);
  if (result.actionId)
    process.stdout.write(`restore started: action ${result.actionId} (tern actions --watch)\n`);
  else process.stdout.write('dry run: nothing was changed\n');
}

function printPlan(plan: Plan): void {
  process.stdout.write(
    `restore point ${plan.restorePoint} of ${plan.app} (consistent at ${plan.consistentAt}) from ${plan.source} → ${plan.inPlace ? 'in place' : `app ${plan.targetApp}`}\n`,
  );
  printTable(
    ['VOLUME', 'FROM', 'TO', 'REGION', 'SIZE', 'OVERWRITE'],
    plan.volumes.map((v) => [
      v.volume,
      v.from,
      v.to,
      v.region,
      formatBytes(v.sizeBytes),
      v.overwrite ? 'yes' : 'no',
    ]),
  );
}
