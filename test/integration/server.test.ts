/**
 * The HTTP API and the control-plane CLI end to end: a real `tern server` child process on a fresh data dir
 * (real SQLite catalog), an app with two volumes on a btrfs loop filesystem (a plain directory when loop
 * devices are not allowed here), location profiles on a directory and on Azurite, policy runs through the CLI,
 * restores from the local snapshot and from the repository compared byte for byte, /metrics and the OpenAPI
 * document, and a server killed with SIGKILL in the middle of an export.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Validator } from '@seriousme/openapi-schema-validator';
import type { ActionRun, RestorePoint } from '../../src/core/index.ts';
import { startAzurite, type Azurite } from '../harness/azurite.ts';
import { createLoopFs, type LoopFs } from '../harness/loopfs.ts';
import { startTernServer, tern, type CliResult, type TernServerProcess } from '../harness/tern-server.ts';

const MiB = 1 << 20;
const timings: Record<string, number> = {};

function sha(file: string): string {
  return crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}

/** Writes `size` random bytes, or overwrites `size` bytes at `offset` of an existing file. */
function writeRandom(file: string, size: number, offset?: number): void {
  if (offset === undefined) {
    const fd = fs.openSync(file, 'w');
    for (let done = 0; done < size; done += 4 * MiB)
      fs.writeSync(fd, crypto.randomBytes(Math.min(4 * MiB, size - done)));
    fs.closeSync(fd);
  } else {
    const fd = fs.openSync(file, 'r+');
    fs.writeSync(fd, crypto.randomBytes(size), 0, size, offset);
    fs.closeSync(fd);
  }
}

function ok(r: CliResult, what: string): unknown {
  assert.equal(r.code, 0, `${what} failed (exit ${r.code}): ${r.stderr}${r.stdout}`);
  return r.json;
}

describe('tern server + CLI', { timeout: 600_000 }, () => {
  let work: string;
  let loop: LoopFs | undefined;
  let regions: Record<string, string>;
  let server: TernServerProcess;
  let dataDir: string;
  let repoDir: string;
  let azurite: Azurite | undefined;
  let fsNote = '';
  const env = (): NodeJS.ProcessEnv => server.env;
  /** Hash of each volume after each run: run index → volume → sha256. */
  const states: Record<string, string>[] = [];
  let points: RestorePoint[] = [];

  const volPath = (region: string, name: string): string => path.join(regions[region] ?? '', 'volumes', name);

  before(async () => {
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-server-test-'));
    const l = createLoopFs('btrfs', 1024 * MiB);
    let root: string;
    if ('skip' in l) {
      fsNote = `plain directory (no loop filesystem: ${l.skip})`;
      root = path.join(work, 'fs');
    } else {
      loop = l;
      fsNote = 'btrfs loop filesystem';
      root = l.mountpoint;
    }
    regions = { east: path.join(root, 'east'), west: path.join(root, 'west') };
    for (const r of Object.values(regions)) fs.mkdirSync(path.join(r, 'volumes'), { recursive: true });
    writeRandom(volPath('east', 'data'), 8 * MiB);
    writeRandom(volPath('east', 'logs'), 3 * MiB + 12345);
    dataDir = path.join(work, 'data');
    repoDir = path.join(work, 'repo');
    fs.mkdirSync(repoDir);
    const t0 = Date.now();
    server = await startTernServer(dataDir);
    timings.serverStartMs = Date.now() - t0;
  });

  after(async () => {
    const code = await server?.stop();
    if (code !== 0 && code !== null) process.stderr.write(`server log:\n${server.log()}\n`);
    assert.doesNotMatch(server?.log() ?? '', /internal error/, 'no request ended in a 500');
    await azurite?.stop();
    loop?.cleanup();
    fs.rmSync(work, { recursive: true, force: true });
    process.stderr.write(`volumes on: ${fsNote}\ntimings (ms): ${JSON.stringify(timings)}\n`);
  });

  test('auth: 401 without or with a wrong token; health and OpenAPI are public; token file is 0600', async () => {
    assert.equal((await server.fetch('/v1/apps', { token: null })).status, 401);
    const wrong = await server.fetch('/v1/apps', { token: 'x'.repeat(43) });
    assert.equal(wrong.status, 401);
    assert.equal(((await wrong.json()) as { error: { code: string } }).error.code, 'AUTH');
    assert.equal((await server.fetch('/metrics', { token: null })).status, 401);
    assert.equal((await server.fetch('/v1/apps')).status, 200);
    assert.equal((await server.fetch('/healthz', { token: null })).status, 200);
    assert.equal(fs.statSync(path.join(dataDir, 'api-token')).mode & 0o777, 0o600);
    const cli = await tern(['app', 'list', '--json'], { ...env(), TERN_API_TOKEN: 'y'.repeat(43) });
    assert.equal(cli.code, 4, 'CLI exit code for 401 is the AUTH code');
  });

  test('OpenAPI 3.1 document: valid against the official schema, every route, every $ref resolves', async () => {
    const res = await server.fetch('/openapi.json', { token: null });
    assert.equal(res.status, 200);
    const doc = (await res.json()) as {
      openapi: string;
      info: { title: string; version: string };
      paths: Record<string, Record<string, { responses: Record<string, unknown>; requestBody?: unknown }>>;
      components: { schemas: Record<string, unknown>; securitySchemes: Record<string, unknown> };
    };
    assert.equal(doc.openapi, '3.1.0');
    const validator = new Validator();
    const verdict = await validator.validate(doc as unknown as Parameters<Validator['validate']>[0]);
    assert.equal(verdict.valid, true, JSON.stringify(verdict.errors));
    assert.equal(validator.version, '3.1');
    assert.ok(doc.info.title && doc.info.version);
    for (const p of [
      '/v1/apps',
      '/v1/profiles',
      '/v1/policies',
      '/v1/restorepoints',
      '/v1/restores',
      '/v1/actions',
    ])
      assert.ok(doc.paths[p], `path ${p} documented`);
    assert.ok(doc.paths['/v1/apps']?.post?.requestBody, 'POST /v1/apps has a request body');
    assert.ok(doc.paths['/v1/policies/{name}']?.patch, 'PATCH /v1/policies/{name}');
    for (const [p, ops] of Object.entries(doc.paths))
      for (const [m, op] of Object.entries(ops))
        assert.ok(Object.keys(op.responses).length > 0, `${m} ${p} responses`);
    const refs = [...JSON.stringify(doc).matchAll(/"\$ref":"([^"]+)"/g)].map((m) => m[1] ?? '');
    assert.ok(refs.length > 10);
    for (const r of refs) {
      const m = /^#\/components\/schemas\/([A-Za-z0-9_]+)$/.exec(r);
      assert.ok(m, `ref ${r} is a local component ref`);
      assert.ok(doc.components.schemas[m[1] ?? ''], `ref ${r} resolves`);
    }
    const policy = doc.components.schemas.PolicyInput as {
      properties: Record<string, unknown>;
      required: string[];
    };
    assert.ok(policy.properties.frequency && policy.required.includes('name'));
    assert.ok(doc.components.securitySchemes.bearer);
  });

  test('profiles and app through the CLI', async () => {
    const infra = await tern(
      [
        'profile',
        'create',
        'infra',
        'local',
        '--platform',
        'local',
        '--setting',
        `regions.east=${regions.east}`,
        '--setting',
        `regions.west=${regions.west}`,
        '--json',
      ],
      env(),
    );
    ok(infra, 'infra profile');
    const loc = ok(
      await tern(['profile', 'create', 'location', 'offsite', '--url', `file://${repoDir}`, '--json'], env()),
      'location profile',
    ) as { secretNames: string[] };
    assert.ok(!JSON.stringify(loc).includes('"secrets"'), 'secrets never come back');
    const app = await tern(
      [
        'app',
        'create',
        'web',
        '--infra',
        'local',
        '--region',
        'east',
        '--volume',
        'data=data',
        '--volume',
        'logs=logs',
        '--json',
      ],
      env(),
    );
    assert.deepEqual(
      (ok(app, 'app create') as { volumes: { name: string }[] }).volumes.map((v) => v.name),
      ['data', 'logs'],
    );
    const list = await tern(['app', 'list'], env());
    assert.equal(list.code, 0);
    assert.match(list.stdout, /^web\s+local\s+east\s+data,logs/m);
    const profiles = await tern(['profile', 'list', '--json'], env());
    assert.deepEqual((ok(profiles, 'profile list') as { name: string }[]).map((p) => p.name).sort(), [
      'local',
      'offsite',
    ]);
  });

  test('bad input: 400 with field errors (bad cron, retention -1, unknown profile), 409 for duplicates; nothing changes', async () => {
    const snapshot = async (): Promise<string> =>
      JSON.stringify(
        await Promise.all(
          ['/v1/apps', '/v1/profiles', '/v1/policies'].map(async (p) => (await server.fetch(p)).json()),
        ),
      );
    const before = await snapshot();
    const post = async (
      p: string,
      body: unknown,
    ): Promise<{ status: number; fields: { path: string; message: string }[] }> => {
      const res = await server.fetch(p, { method: 'POST', body: JSON.stringify(body) });
      const j = (await res.json()) as {
        error: { details?: { fields?: { path: string; message: string }[] } };
      };
      return { status: res.status, fields: j.error.details?.fields ?? [] };
    };
    const base = { name: 'p1', app: 'web', frequency: '@daily', retention: { latest: 2 } };
    const cron = await post('/v1/policies', { ...base, frequency: '61 * * * *' });
    assert.equal(cron.status, 400);
    assert.deepEqual(
      cron.fields.map((f) => f.path),
      ['frequency'],
    );
    const ret = await post('/v1/policies', { ...base, retention: { latest: -1 } });
    assert.equal(ret.status, 400);
    assert.deepEqual(
      ret.fields.map((f) => f.path),
      ['retention.latest'],
    );
    const prof = await post('/v1/policies', {
      ...base,
      export: { mode: 'datamover', locationProfile: 'nope' },
    });
    assert.equal(prof.status, 400, 'unknown location profile');
    assert.ok(
      prof.fields.some((f) => f.path.includes('locationProfile')),
      JSON.stringify(prof.fields),
    );
    const infra = await post('/v1/apps', {
      name: 'other',
      infraProfile: 'nope',
      region: 'east',
      volumes: [{ name: 'a', ref: 'a' }],
    });
    assert.equal(infra.status, 400, 'unknown infra profile');
    assert.ok(
      infra.fields.some((f) => f.path.includes('infraProfile')),
      JSON.stringify(infra.fields),
    );
    const dup = await post('/v1/apps', {
      name: 'web',
      infraProfile: 'local',
      region: 'east',
      volumes: [{ name: 'data', ref: 'data' }],
    });
    assert.equal(dup.status, 409, 'duplicate name is a conflict');
    const dupProfile = await post('/v1/profiles', {
      name: 'offsite',
      kind: 'location',
      url: `file://${repoDir}`,
    });
    assert.equal(dupProfile.status, 409);
    const notJson = await server.fetch('/v1/apps', {
      method: 'POST',
      body: '{',
      headers: { 'content-type': 'application/json' },
    });
    assert.equal(notJson.status, 400);
    assert.equal((await server.fetch('/v1/apps/nope')).status, 404);
    const cli = await tern(
      ['policy', 'create', 'p1', '--app', 'web', '--frequency', '@daily', '--retention', 'latest=-1'],
      env(),
    );
    assert.equal(cli.code, 2, 'CLI exit code for 400 is the INPUT code');
    assert.match(cli.stderr, /retention\.latest/);
    assert.equal(await snapshot(), before, 'nothing changed');
  });

  test('policy runs three times across data changes through the CLI', async () => {
    ok(
      await tern(
        [
          'policy',
          'create',
          'web-daily',
          '--app',
          'web',
          '--frequency',
          '@daily',
          '--retention',
          'latest=5',
          '--export-to',
          'offsite',
          '--json',
        ],
        env(),
      ),
      'policy create',
    );
    for (let i = 0; i < 3; i++) {
      if (i > 0) {
        writeRandom(volPath('east', 'data'), 256 * 1024, i * MiB);
        fs.appendFileSync(volPath('east', 'logs'), crypto.randomBytes(4096));
      }
      states.push({ data: sha(volPath('east', 'data')), logs: sha(volPath('east', 'logs')) });
      const r = await tern(['run', 'web-daily', '--wait', '--json'], env());
      ok(r, `run ${i + 1}`);
      timings[`run${i + 1}Ms`] = r.ms;
    }
    const runs = await tern(['actions', '--app', 'web', '--json'], env());
    const actions = ok(runs, 'actions') as ActionRun[];
    assert.ok(
      actions.filter((a) => a.type === 'backup' && a.state === 'Complete').length === 3,
      JSON.stringify(actions.map((a) => [a.type, a.state])),
    );
    assert.ok(actions.filter((a) => a.type === 'export' && a.state === 'Complete').length === 3);
    const table = await tern(['actions', '--app', 'web'], env());
    assert.match(table.stdout, /ID\s+TYPE\s+STATE/);
  });

  test('restore points are listed, with local and repository tiers', async () => {
    points = ok(
      await tern(['restorepoints', '--app', 'web', '--json'], env()),
      'restorepoints',
    ) as RestorePoint[];
    assert.equal(points.length, 3);
    points.sort((a, b) => a.consistentAt.localeCompare(b.consistentAt));
    for (const rp of points) {
      const kinds = rp.tiers.map((t) => t.kind).sort();
      assert.deepEqual(kinds, ['local', 'repository']);
      assert.ok(rp.exportCompletedAt);
    }
    const repoOnly = ok(
      await tern(['restorepoints', '--tier', 'repository', '--json'], env()),
      'tier filter',
    ) as RestorePoint[];
    assert.equal(repoOnly.length, 3);
    const human = await tern(['restorepoints'], env());
    assert.match(human.stdout, /local,repository|repository,local/);
  });

  test('restore from the local snapshot and from the repository, byte for byte', async () => {
    const [rp1, rp2] = points;
    assert.ok(rp1 && rp2);
    // Dry run: a plan, no action.
    const before = (
      ok(await tern(['actions', '--type', 'restore', '--json'], env()), 'actions') as ActionRun[]
    ).length;
    const plan = ok(
      await tern(['restore', '--restore-point', rp1.id, '--to-app', 'web-dry', '--dry-run', '--json'], env()),
      'dry run',
    ) as {
      plan: { volumes: { volume: string }[] };
      actionId?: string;
    };
    assert.equal(plan.actionId, undefined);
    assert.deepEqual(plan.plan.volumes.map((v) => v.volume).sort(), ['data', 'logs']);
    assert.equal(
      (ok(await tern(['actions', '--type', 'restore', '--json'], env()), 'actions') as ActionRun[]).length,
      before,
    );

    for (const [rp, source, target, state] of [
      [rp1, 'snapshot', 'web-snap', states[0]],
      [rp2, 'repository', 'web-repo', states[1]],
    ] as const) {
      const r = await tern(
        ['restore', '--restore-point', rp.id, '--source', source, '--to-app', target, '--wait', '--json'],
        env(),
      );
      const out = ok(r, `restore from ${source}`) as {
        plan: { source: string; volumes: { volume: string; to: string; region: string }[] };
        action: ActionRun;
      };
      timings[`restore_${source}Ms`] = r.ms;
      assert.equal(out.plan.source, source);
      assert.equal(out.action.state, 'Complete');
      const app = ok(await tern(['app', 'get', target, '--json'], env()), 'restored app') as {
        volumes: { name: string; ref: string }[];
        region: string;
      };
      for (const v of out.plan.volumes) {
        const file = volPath(v.region, v.to.split('/').at(-1) ?? v.to);
        assert.equal(
          sha(file),
          state?.[v.volume],
          `${source} restore of ${v.volume} equals the data at that point`,
        );
      }
      assert.deepEqual(app.volumes.map((v) => v.name).sort(), ['data', 'logs']);
    }
  });

  test('/metrics: RPO gauge per app and tier, action counts, durations, bytes', async () => {
    const res = await server.fetch('/metrics');
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /text\/plain/);
    const text = await res.text();
    const gauge = (tier: string): number => {
      const m = new RegExp(
        `^tern_restore_point_age_seconds\\{app="web",tier="${tier}"\\} ([0-9.e+-]+)$`,
        'm',
      ).exec(text);
      assert.ok(m, `RPO gauge for tier ${tier}:\n${text}`);
      return Number(m[1]);
    };
    for (const tier of ['local', 'repository']) {
      const age = gauge(tier);
      assert.ok(age >= 0 && age < 600, `age ${age}`);
    }
    assert.match(text, /^tern_last_success_timestamp\{app="web",tier="repository"\} \d/m);
    assert.match(text, /^tern_actions\{kind="backup",state="Complete"\} 3$/m);
    assert.match(text, /^tern_action_duration_seconds_count\{kind="export",state="Complete"\} 3$/m);
    assert.match(text, /^tern_bytes_transferred_total\{kind="export"\} [1-9]/m);
    assert.match(text, /^# TYPE tern_restore_point_age_seconds gauge$/m);
    // Request latency of a catalog read through HTTP + auth + SQLite (sequential, one keep-alive client).
    const lat: number[] = [];
    for (let i = 0; i < 100; i++) {
      const t = performance.now();
      const r = await server.fetch('/v1/restorepoints?app=web');
      assert.equal(r.status, 200);
      await r.arrayBuffer();
      lat.push(performance.now() - t);
    }
    lat.sort((a, b) => a - b);
    timings.listRestorePointsP50Ms = +(lat[49] ?? 0).toFixed(2);
    timings.listRestorePointsP95Ms = +(lat[94] ?? 0).toFixed(2);
  });

  test('actions --watch streams updates (server-sent events)', async () => {
    const child = spawn(
      process.execPath,
      [path.resolve('src/cli/main.ts'), 'actions', '--watch', '--app', 'web', '--json'],
      {
        env: { ...process.env, ...env() },
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    try {
      await new Promise((r) => setTimeout(r, 500));
      const started = out.split('\n').filter(Boolean).length;
      ok(await tern(['run', 'web-daily', '--wait', '--json'], env()), 'run 4');
      const deadline = Date.now() + 10_000;
      const seen = (): ActionRun[] =>
        out
          .split('\n')
          .filter(Boolean)
          .slice(started)
          .map((l) => JSON.parse(l) as ActionRun);
      while (!seen().some((a) => a.type === 'export' && a.state === 'Complete') && Date.now() < deadline)
        await new Promise((r) => setTimeout(r, 100));
      const events = seen();
      assert.ok(
        events.some((a) => a.type === 'backup' && a.state === 'Running'),
        'saw a backup running',
      );
      assert.ok(
        events.some((a) => a.type === 'export' && a.state === 'Complete'),
        'saw the export complete',
      );
    } finally {
      child.kill('SIGTERM');
    }
  });

  test('Azurite location profile: export and restore from the repository', async () => {
    azurite = await startAzurite(['ternacct']);
    const acct = azurite.accounts[0];
    assert.ok(acct);
    ok(
      await tern(
        [
          'profile',
          'create',
          'location',
          'azure',
          '--url',
          `azblob://${acct.name}/tern/web`,
          '--setting',
          `azureEndpoint=${azurite.accountUrl(acct.name)}`,
          '--secret',
          `azureKey=${acct.key}`,
          '--json',
        ],
        env(),
      ),
      'azure profile',
    );
    ok(
      await tern(
        [
          'policy',
          'create',
          'web-azure',
          '--app',
          'web',
          '--frequency',
          '@hourly',
          '--retention',
          'latest=2',
          '--export-to',
          'azure',
          '--json',
        ],
        env(),
      ),
      'policy',
    );
    const want = { data: sha(volPath('east', 'data')), logs: sha(volPath('east', 'logs')) };
    const r = await tern(['run', 'web-azure', '--wait', '--json'], env());
    ok(r, 'azure run');
    timings.runAzureMs = r.ms;
    const rps = ok(await tern(['restorepoints', '--app', 'web', '--json'], env()), 'rps') as RestorePoint[];
    const rp = rps.find((p) => p.policy === 'web-azure');
    assert.ok(rp);
    const res = await tern(
      [
        'restore',
        '--restore-point',
        rp.id,
        '--source',
        'repository',
        '--to-app',
        'web-az',
        '--wait',
        '--json',
      ],
      env(),
    );
    const out = ok(res, 'azure restore') as {
      plan: { volumes: { volume: string; to: string; region: string }[] };
    };
    for (const v of out.plan.volumes)
      assert.equal(sha(volPath(v.region, v.to.split('/').at(-1) ?? v.to)), want[v.volume as 'data' | 'logs']);
  });

  test('SIGKILL mid-export: after restart the action is resumed or Failed with a reason, never stuck Running', async () => {
    writeRandom(volPath('east', 'big'), 200 * MiB);
    const bigHash = sha(volPath('east', 'big'));
    ok(
      await tern(
        ['app', 'create', 'big', '--infra', 'local', '--region', 'east', '--volume', 'big=big', '--json'],
        env(),
      ),
      'app big',
    );
    ok(
      await tern(
        [
          'policy',
          'create',
          'big-daily',
          '--app',
          'big',
          '--frequency',
          '@daily',
          '--retention',
          'latest=2',
          '--export-to',
          'offsite',
          '--json',
        ],
        env(),
      ),
      'policy big',
    );
    ok(await tern(['run', 'big-daily', '--json'], env()), 'run big');
    const getAction = async (id: string): Promise<ActionRun> =>
      (await (await server.fetch(`/v1/actions/${id}`)).json()) as ActionRun;
    /** The export of app big once it is Running with data flowing (attempt > minAttempt), or terminal. */
    const runningExport = async (minAttempt: number): Promise<ActionRun | undefined> => {
      const deadline = Date.now() + 60_000;
      while (Date.now() < deadline) {
        const list = (await (await server.fetch(`/v1/actions?app=big&type=export`)).json()) as ActionRun[];
        const a = list[0];
        if (a && ['Complete', 'Failed', 'Cancelled'].includes(a.state)) return a;
        if (a && a.attempt > minAttempt && a.state === 'Running' && a.bytesRead > 0) return a;
        await new Promise((r) => setTimeout(r, 10));
      }
      return undefined;
    };
    // Kill the server without warning while the export runs; after each restart, kill the resumed attempt
    // again while it runs, until the engine has no attempt left and must fail the action with a reason.
    let exp = await runningExport(0);
    assert.ok(exp?.state === 'Running', 'export running when the server is killed');
    const id = exp.id;
    timings.killedAtBytesRead = exp.bytesRead;
    let kills = 0;
    for (;;) {
      await server.kill();
      kills++;
      const t0 = Date.now();
      server = await startTernServer(dataDir);
      timings.restartAfterKillMs = Date.now() - t0;
      // Right after restart nothing may claim to be Running from the dead process's attempt.
      const after = await getAction(id);
      assert.ok(
        after.state !== 'Running' || after.attempt > exp.attempt,
        `state ${after.state} attempt ${after.attempt} after a kill during attempt ${exp.attempt}`,
      );
      // A restore point is never half visible: no repository tier until the export completed.
      for (const rp of (await (await server.fetch('/v1/restorepoints?app=big')).json()) as RestorePoint[])
        if (rp.tiers.some((t) => t.kind === 'repository')) assert.ok(rp.exportCompletedAt);
      const next = await runningExport(exp.attempt);
      timings[`resumeAfterKill${kills}Ms`] = Date.now() - t0;
      if (!next || next.state !== 'Running') break;
      exp = next;
    }
    let final = await getAction(id);
    const end = Date.now() + 120_000;
    while (!['Complete', 'Failed', 'Cancelled'].includes(final.state) && Date.now() < end) {
      await new Promise((r) => setTimeout(r, 100));
      final = await getAction(id);
    }
    process.stderr.write(
      `killed export ${id} ${kills} time(s): ${final.state} after attempt ${final.attempt}/${final.maxAttempts} (${final.error?.message ?? 'no error'})\n`,
    );
    timings.exportKills = kills;
    assert.ok(final.state === 'Complete' || final.state === 'Failed', `terminal, got ${final.state}`);
    if (final.state === 'Failed') {
      assert.equal(final.attempt, final.maxAttempts, 'failed only when no attempt is left');
      assert.ok(final.error?.message, 'Failed with a reason');
      for (const rp of (await (await server.fetch('/v1/restorepoints?app=big')).json()) as RestorePoint[])
        assert.ok(!rp.tiers.some((t) => t.kind === 'repository'), 'no repository tier from a failed export');
      // The next run exports the same data completely.
      ok(await tern(['run', 'big-daily', '--wait', '--json'], env()), 'run after the failed export');
    } else assert.ok(final.attempt > 1, 'resumed as a new attempt');
    const rps = (await (
      await server.fetch('/v1/restorepoints?app=big&tier=repository')
    ).json()) as RestorePoint[];
    const rp = rps[0];
    assert.ok(rp?.exportCompletedAt);
    const r = await tern(
      [
        'restore',
        '--restore-point',
        rp.id,
        '--source',
        'repository',
        '--to-app',
        'big-copy',
        '--wait',
        '--json',
      ],
      env(),
    );
    const out = ok(r, 'restore big') as { plan: { volumes: { to: string; region: string }[] } };
    timings.restoreBig200MiBMs = r.ms;
    const v = out.plan.volumes[0];
    assert.ok(v);
    assert.equal(sha(volPath(v.region, v.to.split('/').at(-1) ?? v.to)), bigHash);
  });

  test('policy update/pause/resume/delete, conflicts on delete, and cancelling a running export', async () => {
    const upd = ok(
      await tern(['policy', 'update', 'big-daily', '--retention', 'latest=3,daily=7', '--json'], env()),
      'update',
    ) as {
      retention: { latest: number; daily: number };
    };
    assert.equal(upd.retention.latest, 3);
    assert.equal(upd.retention.daily, 7);
    const bad = await tern(['policy', 'update', 'big-daily', '--frequency', 'every tuesday'], env());
    assert.equal(bad.code, 2);
    assert.equal(
      (ok(await tern(['policy', 'pause', 'big-daily', '--json'], env()), 'pause') as { paused: boolean })
        .paused,
      true,
    );
    assert.match(
      (await tern(['policy', 'list'], env())).stdout,
      /big-daily\s+big\s+@daily\s+latest=3,daily=7\s+datamover→offsite\s+-\s+yes/,
    );
    assert.equal(
      (ok(await tern(['policy', 'resume', 'big-daily', '--json'], env()), 'resume') as { paused: boolean })
        .paused,
      false,
    );
    const inUse = await tern(['app', 'delete', 'big'], env());
    assert.equal(inUse.code, 6, `deleting an app a policy names is a conflict: ${inUse.stderr}`);
    assert.equal((await tern(['profile', 'delete', 'offsite'], env())).code, 6);
    assert.equal((await tern(['policy', 'get', 'nope'], env())).code, 3);

    // Cancel: change 96 MiB so the export has work to do, start a run, cancel its export while it runs
    // (over HTTP, what `tern actions cancel` calls, so the CLI's start-up time cannot let it finish first).
    writeRandom(volPath('east', 'big'), 96 * MiB, 0);
    const before = (await (
      await server.fetch('/v1/restorepoints?app=big&tier=repository')
    ).json()) as RestorePoint[];
    const run = (await (await server.fetch('/v1/policies/big-daily/run', { method: 'POST' })).json()) as {
      actionId: string;
    };
    let target: ActionRun | undefined;
    const deadline = Date.now() + 60_000;
    while (!target && Date.now() < deadline) {
      const list = (await (await server.fetch(`/v1/actions?run=${run.actionId}`)).json()) as ActionRun[];
      target = list.find((a) => a.type === 'export' && a.state === 'Running');
      if (!target) await new Promise((r) => setTimeout(r, 10));
    }
    assert.ok(target, 'export running');
    const cancel = await server.fetch(`/v1/actions/${target.id}/cancel`, { method: 'POST' });
    assert.equal(cancel.status, 202);
    let final = target;
    while (!['Cancelled', 'Complete', 'Failed'].includes(final.state) && Date.now() < deadline + 30_000) {
      await new Promise((r) => setTimeout(r, 50));
      final = (await (await server.fetch(`/v1/actions/${target.id}`)).json()) as ActionRun;
    }
    assert.equal(
      final.state,
      'Cancelled',
      `export ${final.state} after cancel (${final.bytesRead} bytes read)`,
    );
    const afterCancel = (await (
      await server.fetch('/v1/restorepoints?app=big&tier=repository')
    ).json()) as RestorePoint[];
    assert.equal(afterCancel.length, before.length, 'a cancelled export adds no repository tier');
    // The CLI verb on the (now terminal) action: prints its state, exit 0; an unknown id is exit 3.
    const c = await tern(['actions', 'cancel', target.id], env());
    assert.equal(c.code, 0, c.stderr);
    assert.match(c.stdout, /Cancelled/);
    assert.equal((await tern(['actions', 'cancel', 'act-nope'], env())).code, 3);
    const failedRun = await tern(['actions', '--state', 'Cancelled', '--json'], env());
    assert.ok((ok(failedRun, 'actions --state') as ActionRun[]).some((a) => a.id === target.id));

    ok(await tern(['policy', 'delete', 'big-daily', '--json'], env()), 'policy delete');
    assert.equal((await tern(['policy', 'get', 'big-daily'], env())).code, 3);
    ok(await tern(['app', 'delete', 'big-copy'], env()), 'app delete');
    const apps = ok(await tern(['app', 'list', '--json'], env()), 'apps') as { name: string }[];
    assert.ok(!apps.some((a) => a.name === 'big-copy'));
  });

  test('SIGTERM: graceful shutdown ends event streams, exits 0 and removes server.url', async () => {
    const res = await server.fetch('/v1/actions/events');
    assert.equal(res.status, 200);
    const reader = (res.body as ReadableStream<Uint8Array>).getReader();
    await reader.read();
    const t0 = Date.now();
    const code = await server.stop();
    timings.sigtermShutdownMs = Date.now() - t0;
    assert.equal(code, 0, server.log());
    assert.equal((await reader.read()).done, true, 'the event stream ended');
    assert.ok(!fs.existsSync(path.join(dataDir, 'server.url')));
    server = await startTernServer(dataDir);
  });
});
