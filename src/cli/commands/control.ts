/**
 * Control-plane verbs (apps, profiles, policies, runs, restore points, actions). Each one is a thin
 * HTTP call to `tern server` (see ../client.ts), printed as a table or, with --json, as the API returned it.
 */
import fs from 'node:fs';
import type { Command } from 'commander';
import YAML from 'yaml';
import type { ActionRun, Application, Policy, RedactedProfile, RestorePoint } from '../../core/index.ts';
import { formatBytes, formatDuration, InputError, isTerminal, TernError } from '../../core/index.ts';
import { codeForStatus } from '../../server/errors.ts';
import { ApiClient, withClient, type ClientFlags } from '../client.ts';
import { printJson, printTable } from '../output.ts';

function collect(value: string, previous: string[] = []): string[] {
  return [...previous, value];
}

/** "k=v" pairs (repeatable flags or comma lists) → record. Values stay strings. */
function pairs(items: string[] | undefined, what: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const item of items ?? []) {
    const i = item.indexOf('=');
    if (i <= 0) throw new InputError(`${what} "${item}" must look like key=value`);
    out[item.slice(0, i)] = item.slice(i + 1);
  }
  return out;
}

/** "latest=3,daily=7" → { latest: 3, daily: 7 }; numbers are passed on unchecked (the server validates). */
function retention(spec: string | undefined): Record<string, number> | undefined {
  if (spec === undefined) return undefined;
  const out: Record<string, number> = {};
  for (const [k, v] of Object.entries(pairs(spec.split(',').filter(Boolean), 'retention'))) {
    const n = Number(v);
    if (v.trim() === '' || Number.isNaN(n)) throw new InputError(`retention ${k}="${v}" is not a number`);
    out[k] = n;
  }
  return out;
}

/** A frequency flag: a preset/cron string, or JSON for the { every, hour, minute } form. */
function frequency(spec: string): unknown {
  return spec.trim().startsWith('{') ? (JSON.parse(spec) as unknown) : spec;
}

function readBodyFile(file: string): unknown {
  const text = file === '-' ? fs.readFileSync(0, 'utf8') : fs.readFileSync(file, 'utf8');
  return YAML.parse(text) as unknown;
}

const enc = encodeURIComponent;

function query(params: Record<string, string | undefined>): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== '') q.set(k, v);
  const s = q.toString();
  return s ? `?${s}` : '';
}

function ago(iso: string | undefined, now = Date.now()): string {
  if (!iso) return '-';
  return `${formatDuration(Math.max(0, now - Date.parse(iso)))} ago`;
}

function tiersOf(rp: RestorePoint): string {
  return rp.tiers.map((t) => (t.expiredAt ? `${t.kind}(expired)` : t.kind)).join(',') || '-';
}

function actionDuration(a: ActionRun): string {
  if (!a.startedAt) return '-';
  const end = a.endedAt ? Date.parse(a.endedAt) : Date.now();
  return formatDuration(end - Date.parse(a.startedAt));
}

function currentPhase(a: ActionRun): string {
  const p = a.phases.at(-1);
  return p ? p.name : '-';
}

export function actionRow(a: ActionRun): string[] {
  return [
    a.id,
    a.type,
    a.state,
    a.app ?? '-',
    a.policy ?? '-',
    currentPhase(a),
    a.progress === undefined ? '-' : `${Math.round(a.progress * 100)}%`,
    actionDuration(a),
    formatBytes(a.bytesTransferred),
    a.error ? a.error.message.slice(0, 60) : '',
  ];
}
export const ACTION_HEADERS = [
  'ID',
  'TYPE',
  'STATE',
  'APP',
  'POLICY',
  'PHASE',
  'PROGRESS',
  'DURATION',
  'TRANSFERRED',
  'ERROR',
];

/** Waits until every action is terminal (polling: simple and robust across server restarts). */
export async function waitForActions(
  client: ApiClient,
  ids: string[],
  intervalMs = 250,
): Promise<ActionRun[]> {
  const done = new Map<string, ActionRun>();
  for (;;) {
    for (const id of ids) {
      if (done.has(id)) continue;
      const a = await client.get<ActionRun>(`/v1/actions/${enc(id)}`);
      if (isTerminal(a.state)) done.set(id, a);
    }
    if (done.size === ids.length) return ids.map((id) => done.get(id) as ActionRun);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/**
 * Waits for a whole policy run: its first action and the follow-ons (export, retention) that carry
 * `params.run`. The engine inserts a follow-on in the same transaction that completes its predecessor,
 * so once every action seen is terminal, the run is over.
 */
export async function waitForRun(client: ApiClient, runId: string, intervalMs = 250): Promise<ActionRun[]> {
  for (;;) {
    const first = await client.get<ActionRun>(`/v1/actions/${enc(runId)}`);
    const rest = await client.get<ActionRun[]>(`/v1/actions${query({ run: runId })}`);
    const all = [first, ...rest.filter((a) => a.id !== runId)].sort((a, b) =>
      a.createdAt.localeCompare(b.createdAt),
    );
    if (all.every((a) => isTerminal(a.state))) return all;
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** A Failed or Cancelled action becomes the command's error, so the exit code tells what happened. */
export function failOnBadAction(actions: ActionRun[]): void {
  const bad = actions.find((a) => a.state === 'Failed' || a.state === 'Cancelled');
  if (bad) {
    // The exit code follows the recorded error's code when it is one of ours.
    const code = bad.state === 'Cancelled' ? 'CANCELLED' : codeForStatus(500, bad.error?.code);
    throw new TernError(code, `action ${bad.id} ${bad.state}: ${bad.error?.message ?? 'no reason recorded'}`);
  }
}

function registerApps(program: Command): void {
  const app = program.command('app').description('applications (what to protect)');
  withClient(app.command('create [name]').description('register an application'))
    .option('-f, --file <file>', 'the application as JSON/YAML ("-" for stdin)')
    .option('--infra <profile>', 'infra profile (platform) the volumes live on')
    .option('--region <region>', 'region of the volumes')
    .option(
      '--volume <name=ref>',
      'a volume (repeatable); ref is the platform id (local: volume name)',
      collect,
    )
    .option('--label <k=v>', 'a label (repeatable)', collect)
    .action(async (name: string | undefined, o: ClientFlags & Record<string, unknown>) => {
      const body: Record<string, unknown> = o.file
        ? (readBodyFile(o.file as string) as Record<string, unknown>)
        : {};
      if (name) body.name = name;
      if (o.infra) body.infraProfile = o.infra;
      if (o.region) body.region = o.region;
      if (o.volume)
        body.volumes = Object.entries(pairs(o.volume as string[], 'volume')).map(([n, ref]) => ({
          name: n,
          ref,
        }));
      if (o.label) body.labels = pairs(o.label as string[], 'label');
      const created = await ApiClient.fromFlags(o).post<Application>('/v1/apps', body);
      if (o.json) printJson(created);
      else process.stdout.write(`app ${created.name} created\n`);
    });
  withClient(app.command('list').description('list applications')).action(async (o: ClientFlags) => {
    const apps = await ApiClient.fromFlags(o).get<Application[]>('/v1/apps');
    if (o.json) return printJson(apps);
    printTable(
      ['NAME', 'INFRA', 'REGION', 'VOLUMES', 'LABELS'],
      apps.map((a) => [
        a.name,
        a.infraProfile,
        a.region,
        a.volumes.map((v) => v.name).join(','),
        Object.entries(a.labels ?? {})
          .map(([k, v]) => `${k}=${v}`)
          .join(','),
      ]),
    );
  });
  withClient(app.command('get <name>').description('show one application')).action(
    async (name: string, o: ClientFlags) => {
      const a = await ApiClient.fromFlags(o).get<Application>(`/v1/apps/${enc(name)}`);
      if (o.json) return printJson(a);
      process.stdout.write(`name: ${a.name}\ninfra profile: ${a.infraProfile}\nregion: ${a.region}\n`);
      printTable(
        ['VOLUME', 'REF', 'SIZE'],
        a.volumes.map((v) => [v.name, v.ref, v.sizeBytes === undefined ? '-' : formatBytes(v.sizeBytes)]),
      );
    },
  );
  withClient(app.command('delete <name>').description('remove an application from the catalog')).action(
    async (name: string, o: ClientFlags) => {
      await ApiClient.fromFlags(o).delete(`/v1/apps/${enc(name)}`);
      if (o.json) printJson({ deleted: name });
      else process.stdout.write(`app ${name} deleted\n`);
    },
  );
}

function registerProfiles(program: Command): void {
  const profile = program
    .command('profile')
    .description('location (object store) and infra (platform) profiles');
  const create = profile.command('create').description('create a profile');
  const common = (cmd: Command): Command =>
    withClient(cmd)
      .option('-f, --file <file>', 'the profile as JSON/YAML ("-" for stdin)')
      .option('--setting <k=v>', 'a non-secret setting (repeatable)', collect)
      .option('--secret <k=v>', 'a secret value (repeatable; prefer --secret-file)', collect)
      .option('--secret-file <k=file>', 'a secret read from a file (repeatable)', collect);
  const send = async (
    kind: 'location' | 'infra',
    name: string | undefined,
    o: ClientFlags & Record<string, unknown>,
    extra: Record<string, unknown>,
  ) => {
    const body: Record<string, unknown> = o.file
      ? (readBodyFile(o.file as string) as Record<string, unknown>)
      : {};
    body.kind = kind;
    if (name) body.name = name;
    Object.assign(body, extra);
    if (o.setting)
      body.settings = { ...(body.settings as object), ...pairs(o.setting as string[], 'setting') };
    const secrets: Record<string, string> = { ...pairs(o.secret as string[] | undefined, 'secret') };
    for (const [k, file] of Object.entries(pairs(o.secretFile as string[] | undefined, 'secret file')))
      secrets[k] = fs.readFileSync(file, 'utf8').replace(/\r?\n$/, '');
    if (Object.keys(secrets).length > 0) body.secrets = { ...(body.secrets as object), ...secrets };
    const created = await ApiClient.fromFlags(o).post<RedactedProfile>('/v1/profiles', body);
    if (o.json) printJson(created);
    else process.stdout.write(`${kind} profile ${created.name} created\n`);
  };
  common(create.command('location [name]').description('an object store for exported data'))
    .option('--url <url>', 'file:///path, s3://bucket/prefix, azblob://account/container/prefix')
    .action(async (name: string | undefined, o: ClientFlags & Record<string, unknown>) =>
      send('location', name, o, o.url ? { url: o.url } : {}),
    );
  common(create.command('infra [name]').description('a platform where volumes and snapshots live'))
    .option('--platform <type>', 'platform provider (local, azure, aws, kubernetes)')
    .action(async (name: string | undefined, o: ClientFlags & Record<string, unknown>) =>
      send('infra', name, o, o.platform ? { platform: o.platform } : {}),
    );
  withClient(profile.command('list').description('list profiles (secrets are never shown)')).action(
    async (o: ClientFlags) => {
      const list = await ApiClient.fromFlags(o).get<RedactedProfile[]>('/v1/profiles');
      if (o.json) return printJson(list);
      printTable(
        ['NAME', 'KIND', 'TARGET', 'SETTINGS', 'SECRETS'],
        list.map((p) => [
          p.name,
          p.kind,
          (p as { url?: string; platform?: string }).url ?? (p as { platform?: string }).platform ?? '-',
          Object.keys(p.settings ?? {}).join(','),
          p.secretNames.join(','),
        ]),
      );
    },
  );
  withClient(profile.command('get <name>').description('show one profile')).action(
    async (name: string, o: ClientFlags) => {
      const p = await ApiClient.fromFlags(o).get<RedactedProfile>(`/v1/profiles/${enc(name)}`);
      if (o.json) return printJson(p);
      process.stdout.write(YAML.stringify(p));
    },
  );
  withClient(profile.command('delete <name>').description('delete a profile')).action(
    async (name: string, o: ClientFlags) => {
      await ApiClient.fromFlags(o).delete(`/v1/profiles/${enc(name)}`);
      if (o.json) printJson({ deleted: name });
      else process.stdout.write(`profile ${name} deleted\n`);
    },
  );
}

function describeFrequency(f: Policy['frequency']): string {
  return typeof f === 'string' ? f : `every ${f.every}`;
}
const RETENTION_ORDER = ['latest', 'hourly', 'daily', 'weekly', 'monthly', 'yearly'] as const;
function describeRetention(r: Policy['retention'] | undefined): string {
  if (!r) return '-';
  return RETENTION_ORDER.filter((k) => (r[k] ?? 0) > 0)
    .map((k) => `${k}=${r[k]}`)
    .join(',');
}
function describeExport(e: Policy['export']): string {
  if (!e) return '-';
  return e.mode === 'datamover' ? `datamover→${e.locationProfile}` : `copy→${e.region}`;
}

function policyOptions(cmd: Command): Command {
  return withClient(cmd)
    .option('-f, --file <file>', 'the policy as JSON/YAML ("-" for stdin)')
    .option('--app <app>', 'application to protect')
    .option('--frequency <f>', '@hourly, @daily…, a cron expression (UTC) or JSON {"every":"day","hour":2}')
    .option('--retention <spec>', 'local snapshots to keep, e.g. latest=3,daily=7,weekly=4')
    .option('--export-to <profile>', 'export with the datamover into this location profile')
    .option('--repository-path <path>', 'path of the repository inside the location')
    .option('--copy-to-region <region>', 'export by copying snapshots to this region')
    .option('--export-retention <spec>', 'exported points to keep (default: as --retention)');
}

function policyBody(o: Record<string, unknown>, base: Record<string, unknown>): Record<string, unknown> {
  const body = { ...base };
  if (o.app !== undefined) body.app = o.app;
  if (o.frequency !== undefined) body.frequency = frequency(o.frequency as string);
  const r = retention(o.retention as string | undefined);
  if (r) body.retention = r;
  if (o.exportTo !== undefined)
    body.export = {
      mode: 'datamover',
      locationProfile: o.exportTo,
      ...(o.repositoryPath !== undefined ? { repositoryPath: o.repositoryPath } : {}),
    };
  else if (o.copyToRegion !== undefined) body.export = { mode: 'snapshot-copy', region: o.copyToRegion };
  const er = retention(o.exportRetention as string | undefined);
  if (er) body.exportRetention = er;
  return body;
}

function printPolicies(list: Policy[]): void {
  printTable(
    ['NAME', 'APP', 'FREQUENCY', 'RETENTION', 'EXPORT', 'EXPORT RETENTION', 'PAUSED'],
    list.map((p) => [
      p.name,
      p.app,
      describeFrequency(p.frequency),
      describeRetention(p.retention),
      describeExport(p.export),
      describeRetention(p.exportRetention),
      p.paused ? 'yes' : 'no',
    ]),
  );
}

function registerPolicies(program: Command): void {
  const policy = program.command('policy').description('backup/export policies');
  policyOptions(policy.command('create [name]').description('create a policy')).action(
    async (name: string | undefined, o: ClientFlags & Record<string, unknown>) => {
      const base = o.file ? (readBodyFile(o.file as string) as Record<string, unknown>) : {};
      const body = policyBody(o, name ? { ...base, name } : base);
      const p = await ApiClient.fromFlags(o).post<Policy>('/v1/policies', body);
      if (o.json) printJson(p);
      else process.stdout.write(`policy ${p.name} created\n`);
    },
  );
  policyOptions(policy.command('update <name>').description('change fields of a policy')).action(
    async (name: string, o: ClientFlags & Record<string, unknown>) => {
      const base = o.file ? (readBodyFile(o.file as string) as Record<string, unknown>) : {};
      const p = await ApiClient.fromFlags(o).patch<Policy>(`/v1/policies/${enc(name)}`, policyBody(o, base));
      if (o.json) printJson(p);
      else process.stdout.write(`policy ${p.name} updated\n`);
    },
  );
  withClient(policy.command('list').description('list policies'))
    .option('--app <app>', 'only policies of this application')
    .action(async (o: ClientFlags & { app?: string }) => {
      const list = await ApiClient.fromFlags(o).get<Policy[]>(`/v1/policies${query({ app: o.app })}`);
      if (o.json) printJson(list);
      else printPolicies(list);
    });
  withClient(policy.command('get <name>').description('show one policy')).action(
    async (name: string, o: ClientFlags) => {
      const p = await ApiClient.fromFlags(o).get<Policy>(`/v1/policies/${enc(name)}`);
      if (o.json) printJson(p);
      else process.stdout.write(YAML.stringify(p));
    },
  );
  for (const verb of ['pause', 'resume'] as const)
    withClient(policy.command(`${verb} <name>`).description(`${verb} scheduled runs`)).action(
      async (name: string, o: ClientFlags) => {
        const p = await ApiClient.fromFlags(o).post<Policy>(`/v1/policies/${enc(name)}/${verb}`);
        if (o.json) printJson(p);
        else process.stdout.write(`policy ${name} ${p.paused ? 'paused' : 'active'}\n`);
      },
    );
  withClient(policy.command('delete <name>').description('delete a policy (restore points stay)')).action(
    async (name: string, o: ClientFlags) => {
      await ApiClient.fromFlags(o).delete(`/v1/policies/${enc(name)}`);
      if (o.json) printJson({ deleted: name });
      else process.stdout.write(`policy ${name} deleted\n`);
    },
  );

  withClient(
    program.command('run <policy>').description('run a policy now (backup, then export if it has one)'),
  )
    .option('--wait', 'wait until the run finishes; a failed run exits non-zero')
    .action(async (name: string, o: ClientFlags & { wait?: boolean }) => {
      const client = ApiClient.fromFlags(o);
      const started = await client.post<{ actionId: string; action: ActionRun }>(
        `/v1/policies/${enc(name)}/run`,
      );
      if (!o.wait) {
        if (o.json) printJson(started);
        else
          process.stdout.write(`policy ${name} started: action ${started.actionId} (tern actions --watch)\n`);
        return;
      }
      const actions = await waitForRun(client, started.actionId);
      if (o.json) printJson({ actionId: started.actionId, actions });
      else printTable(ACTION_HEADERS, actions.map(actionRow));
      failOnBadAction(actions);
    });
}

function registerRestorePoints(program: Command): void {
  withClient(program.command('restorepoints').description('list restore points'))
    .option('--app <app>', 'only this application')
    .option('--tier <tier>', 'only points with this tier: local, repository, region-copy')
    .action(async (o: ClientFlags & { app?: string; tier?: string }) => {
      const list = await ApiClient.fromFlags(o).get<RestorePoint[]>(
        `/v1/restorepoints${query({ app: o.app, tier: o.tier })}`,
      );
      if (o.json) return printJson(list);
      printTable(
        ['ID', 'APP', 'POLICY', 'CONSISTENT AT', 'AGE', 'SIZE', 'TIERS'],
        list.map((rp) => [
          rp.id,
          rp.app,
          rp.policy ?? '-',
          rp.consistentAt,
          ago(rp.consistentAt),
          formatBytes(rp.sizeBytes),
          tiersOf(rp),
        ]),
      );
    });
}

function registerActions(program: Command): void {
  const actions = withClient(program.command('actions').description('action runs (backup, export, restore…)'))
    .option('--app <app>', 'only this application')
    .option('--state <state>', 'only this state (Running, Failed…)')
    .option('--type <type>', 'only this type (backup, export, restore…)')
    .option('--watch', 'keep printing updates as actions change (server-sent events)')
    .action(async (o: ClientFlags & { app?: string; state?: string; type?: string; watch?: boolean }) => {
      const client = ApiClient.fromFlags(o);
      const q = query({ app: o.app, state: o.state, type: o.type });
      const list = await client.get<ActionRun[]>(`/v1/actions${q}`);
      if (!o.watch) {
        if (o.json) printJson(list);
        else printTable(ACTION_HEADERS, list.map(actionRow));
        return;
      }
      if (o.json) for (const a of list) process.stdout.write(JSON.stringify(a) + '\n');
      else printTable(ACTION_HEADERS, list.map(actionRow));
      const ac = new AbortController();
      process.once('SIGINT', () => ac.abort());
      process.once('SIGTERM', () => ac.abort());
      await client.events(
        `/v1/actions/events${q}`,
        (event, data) => {
          if (event !== 'action') return;
          const a = data as ActionRun;
          if (o.json) process.stdout.write(JSON.stringify(a) + '\n');
          else process.stdout.write(actionRow(a).join('  ').trimEnd() + '\n');
        },
        ac.signal,
      );
    });
  // The parent `actions` has the same flags and takes them when they come first; optsWithGlobals merges both.
  withClient(actions.command('get <id>').description('show one action run')).action(
    async (id: string, _o: ClientFlags, cmd: Command) => {
      const o = cmd.optsWithGlobals<ClientFlags>();
      const a = await ApiClient.fromFlags(o).get<ActionRun>(`/v1/actions/${enc(id)}`);
      if (o.json) return printJson(a);
      process.stdout.write(YAML.stringify(a));
    },
  );
  withClient(actions.command('cancel <id>').description('cancel a pending or running action')).action(
    async (id: string, _o: ClientFlags, cmd: Command) => {
      const o = cmd.optsWithGlobals<ClientFlags>();
      const a = await ApiClient.fromFlags(o).post<ActionRun>(`/v1/actions/${enc(id)}/cancel`);
      if (o.json) printJson(a);
      else process.stdout.write(`action ${id}: ${a.state}\n`);
    },
  );
}

export function registerControl(program: Command): void {
  registerApps(program);
  registerProfiles(program);
  registerPolicies(program);
  registerRestorePoints(program);
  registerActions(program);
}
