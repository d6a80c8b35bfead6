/**
 * DR through `tern server`: two real server child processes, each on its own data dir. Site "east" runs
 * policies exporting with the datamover to a directory vault and to Azurite, and issues export details over
 * HTTP (the import secret in the request body only). Site "west" (the DR site, its own data dir, import secret
 * in its environment) holds an import policy that imports on the server's own timer; its report shows the
 * achieved RPO and export durations. Then a disaster at east: west imports the Azurite stream with the
 * credentials of its own location profile (none in the token, none in the environment) and restores byte for
 * byte through the CLI in its server form.
 */
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Validator } from '@seriousme/openapi-schema-validator';
import { startAzurite, type Azurite } from '../harness/azurite.ts';
import { startTernServer, tern, type CliResult, type TernServerProcess } from '../harness/tern-server.ts';

const MiB = 1 << 20;
const SECRET = 'west import secret 7f3a9c';
const SIZE = 8 * MiB;
/** The west site must not read Azure credentials from the environment: only from its location profile. */
const NO_CLOUD_ENV = {
  AZURE_STORAGE_CONNECTION_STRING: '',
  AZURE_STORAGE_KEY: '',
  AZURE_STORAGE_SAS_TOKEN: '',
  AZURE_STORAGE_ENDPOINT: '',
  TERN_SERVER: '',
  TERN_IMPORT_SECRET: '',
};

const sha = (file: string): string => crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex');

function ok(r: CliResult, what: string): unknown {
  assert.equal(r.code, 0, `${what} failed (exit ${r.code}): ${r.stderr}${r.stdout}`);
  return r.json;
}

interface PathReport {
  app: string;
  stream: string;
  path: string;
  restorePoints: number;
  rpoSeconds?: number;
  exportFirstMs?: number;
  exportIncrementalMs?: number;
  restoreMs?: number;
  rule321: { ok: boolean };
}
interface AppReport {
  app: string;
  paths: PathReport[];
  rpoSeconds?: number;
}

async function json<T>(res: Response, status: number, what: string): Promise<T> {
  const text = await res.text();
  assert.equal(res.status, status, `${what}: ${text}`);
  return (text ? JSON.parse(text) : undefined) as T;
}

async function until<T>(what: string, fn: () => Promise<T | undefined>, timeoutMs = 60_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe('DR through tern server (two sites)', { timeout: 600_000 }, () => {
  let work: string;
  let east: TernServerProcess;
  let west: TernServerProcess;
  let azurite: Azurite;
  let eastRegion: string;
  let vault: string;
  const tokens: Record<string, string> = {};
  const hashes: string[] = [];
  const timings: Record<string, number> = {};
  const volume = (): string => path.join(eastRegion, 'volumes', 'data');
  const eastEnv = (): NodeJS.ProcessEnv => ({ ...NO_CLOUD_ENV, ...east.env });
  const westEnv = (): NodeJS.ProcessEnv => ({ ...NO_CLOUD_ENV, ...west.env });

  const westReport = async (query = ''): Promise<AppReport[]> =>
    json<AppReport[]>(await west.fetch(`/v1/dr/report${query}`), 200, 'west report');

  before(async () => {
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-dr-server-'));
    eastRegion = path.join(work, 'east-region');
    vault = path.join(work, 'vault');
    fs.mkdirSync(path.join(eastRegion, 'volumes'), { recursive: true });
    fs.mkdirSync(vault);
    fs.writeFileSync(volume(), crypto.randomBytes(SIZE));
    azurite = await startAzurite(['drvault']);
    east = await startTernServer(path.join(work, 'east-data'), {
      env: { ...NO_CLOUD_ENV, TERN_SITE: 'east' },
    });
    west = await startTernServer(path.join(work, 'west-data'), {
      env: { ...NO_CLOUD_ENV, TERN_SITE: 'west', TERN_IMPORT_SECRET: SECRET, TERN_DR_INTERVAL: '0.2' },
    });
  });

  after(async () => {
    const logs = [east?.log() ?? '', west?.log() ?? ''].join('\n');
    await east?.stop();
    await west?.stop();
    await azurite?.stop();
    fs.rmSync(work, { recursive: true, force: true });
    process.stderr.write(`timings (ms): ${JSON.stringify(timings)}\n`);
    assert.ok(!logs.includes(SECRET), 'the import secret never appears in a server log');
    assert.ok(
      !logs.includes(azurite?.accounts[0]?.key ?? 'no key'),
      'the storage key never appears in a log',
    );
    assert.doesNotMatch(logs, /internal error/, 'no request ended in a 500');
  });

  test('east: app, a directory vault and an Azurite vault, two runs of each policy', async () => {
    const acct = azurite.accounts[0];
    assert.ok(acct);
    const e = eastEnv();
    ok(
      await tern(
        [
          'profile',
          'create',
          'infra',
          'lab',
          '--platform',
          'local',
          '--setting',
          `regions.east=${eastRegion}`,
        ],
        e,
      ),
      'infra profile',
    );
    ok(await tern(['profile', 'create', 'location', 'vault', '--url', vault], e), 'vault profile');
    ok(
      await tern(
        [
          'profile',
          'create',
          'location',
          'azure',
          '--url',
          `azblob://${acct.name}/tern/shop`,
          '--setting',
          `azureEndpoint=${azurite.accountUrl(acct.name)}`,
          '--secret',
          `azureKey=${acct.key}`,
        ],
        e,
      ),
      'azure profile',
    );
    ok(
      await tern(['app', 'create', 'shop', '--infra', 'lab', '--region', 'east', '--volume', 'data=data'], e),
      'app',
    );
    for (const [name, to] of [
      ['to-vault', 'vault'],
      ['to-azure', 'azure'],
    ] as const)
      ok(
        await tern(
          [
            'policy',
            'create',
            name,
            '--app',
            'shop',
            '--frequency',
            '@daily',
            '--retention',
            'latest=5',
            '--export-to',
            to,
          ],
          e,
        ),
        `policy ${name}`,
      );
    for (let run = 1; run <= 2; run++) {
      if (run === 2) {
        const fd = fs.openSync(volume(), 'r+');
        for (let i = 0; i < 16; i++)
          fs.writeSync(fd, crypto.randomBytes(4096), 0, 4096, ((i * 7919) % (SIZE / 4096)) * 4096);
        fs.closeSync(fd);
      }
      hashes.push(sha(volume()));
      // The vault policy's second run waits until west has imported the first one (next test).
      for (const p of run === 1 ? ['to-vault', 'to-azure'] : ['to-azure']) {
        const r = await tern(['run', p, '--wait', '--json'], e);
        ok(r, `run ${p} #${run}`);
        timings[`run-${p}-${run}`] = r.ms;
      }
    }
  });

  test('export details over HTTP; west imports on its own timer; the report shows RPO and export time', async () => {
    // Validation and error mapping first: nothing is published by a bad request.
    assert.equal((await east.fetch('/v1/dr/export-details', { method: 'POST', body: '{}' })).status, 400);
    assert.equal(
      (
        await east.fetch('/v1/dr/export-details?policy=to-vault', {
          method: 'POST',
          body: JSON.stringify({ importSecret: 'short' }),
        })
      ).status,
      400,
    );
    const missing = await east.fetch('/v1/dr/export-details?policy=nope', {
      method: 'POST',
      body: JSON.stringify({ importSecret: SECRET }),
    });
    assert.equal(missing.status, 404);
    assert.equal(
      (await east.fetch('/v1/dr/export-details?policy=to-vault', { method: 'POST', token: null })).status,
      401,
    );

    const t0 = Date.now();
    const details = await json<{ token: string; stream: string; published: string[]; restorePoints: number }>(
      await east.fetch('/v1/dr/export-details?policy=to-vault', {
        method: 'POST',
        body: JSON.stringify({ importSecret: SECRET }),
      }),
      200,
      'export details',
    );
    timings.exportDetailsMs = Date.now() - t0;
    assert.match(details.token, /^tern-x1\./);
    assert.equal(details.stream, 'east-shop-to-vault');
    assert.equal(details.published.length, 1);
    assert.equal(details.restorePoints, 1);
    tokens.vault = details.token;

    // A token issued under another secret is refused before it is stored.
    const other = await json<{ token: string }>(
      await east.fetch('/v1/dr/export-details?policy=to-vault', {
        method: 'POST',
        body: JSON.stringify({ importSecret: 'some other secret' }),
      }),
      200,
      'export details (other secret)',
    );
    const refused = await west.fetch('/v1/dr/import-policies', {
      method: 'POST',
      body: JSON.stringify({ name: 'bad', token: other.token, frequency: '@hourly' }),
    });
    assert.equal(refused.status, 400, await refused.text());
    assert.equal(
      (
        await west.fetch('/v1/dr/import-policies', {
          method: 'POST',
          body: JSON.stringify({ name: 'x', token: details.token, frequency: 'every tuesday' }),
        })
      ).status,
      400,
    );

    const t1 = Date.now();
    const created = await json<Record<string, unknown>>(
      await west.fetch('/v1/dr/import-policies', {
        method: 'POST',
        body: JSON.stringify({ name: 'shop-vault', token: details.token, frequency: '@hourly' }),
      }),
      201,
      'import policy',
    );
    assert.equal(created.stream, 'east-shop-to-vault');
    assert.equal(created.app, 'shop');
    assert.equal(created.token, undefined, 'the token stays in the server');
    assert.equal(
      (
        await west.fetch('/v1/dr/import-policies', {
          method: 'POST',
          body: JSON.stringify({ name: 'shop-vault', token: details.token, frequency: '@hourly' }),
        })
      ).status,
      409,
    );

    // Nobody runs the policy: the server's timer does.
    const report = await until('the timer to import', async () => {
      const r = await westReport('?refresh=false');
      return r[0]?.paths[0]?.restorePoints === 1 ? r : undefined;
    });
    timings.timerImportMs = Date.now() - t1;
    // The server logs the import after it has recorded it: the report can show it a moment earlier.
    await until(
      'the import to be logged',
      () => Promise.resolve(/dr import policy shop-vault: 1 imported/.test(west.log()) ? true : undefined),
      10_000,
    );
    const p = report[0]?.paths[0];
    assert.ok(p);
    assert.equal(p.path, 'repository');
    assert.ok(p.rpoSeconds !== undefined && p.rpoSeconds > 0 && p.rpoSeconds < 600, `RPO ${p.rpoSeconds}`);
    assert.ok(p.exportFirstMs !== undefined && p.exportFirstMs > 0, 'first export duration');
    const policies = await json<{ name: string; lastResult?: { imported: number } }[]>(
      await west.fetch('/v1/dr/import-policies'),
      200,
      'list',
    );
    assert.equal(policies[0]?.lastResult?.imported, 1);
    assert.ok(!JSON.stringify(policies).includes(details.token));
    assert.equal((await west.fetch('/v1/dr/import-policies/nope')).status, 404);

    // The CLI in its server form shows the same.
    const cli = ok(await tern(['dr', 'report', '--json'], westEnv()), 'tern dr report') as AppReport[];
    assert.equal(cli[0]?.paths[0]?.stream, 'east-shop-to-vault');
    const table = await tern(['dr', 'policy', 'list'], westEnv());
    assert.match(table.stdout, /shop-vault\s+@hourly\s+all\s+no\s+\S+\s+1 imported/);
  });

  test('a new restore point at east: the report counts it before import; run now imports it (incremental)', async () => {
    const e = eastEnv();
    const fd = fs.openSync(volume(), 'r+');
    fs.writeSync(fd, crypto.randomBytes(4096), 0, 4096, 4096 * 100);
    fs.closeSync(fd);
    ok(await tern(['run', 'to-vault', '--wait', '--json'], e), 'run to-vault #2');
    const before = (await westReport())[0]?.paths[0]?.rpoSeconds ?? Infinity;
    // Publishing through the CLI (server form): the secret comes from the CLI's environment, sent in the body.
    const out = ok(
      await tern(['dr', 'export-details', '--policy', 'to-vault', '--json'], {
        ...e,
        TERN_IMPORT_SECRET: SECRET,
      }),
      'tern dr export-details',
    ) as { published: string[]; restorePoints: number };
    assert.equal(out.published.length, 1);
    assert.equal(out.restorePoints, 2);
    const waiting = (await westReport())[0]?.paths[0];
    assert.equal(waiting?.restorePoints, 2, 'a record at the location counts before it is imported');
    assert.ok((waiting?.rpoSeconds ?? Infinity) < before, 'the RPO got better');
    const run = ok(
      await tern(['dr', 'policy', 'run', 'shop-vault', '--json'], westEnv()),
      'tern dr policy run',
    ) as { result: { imported: string[] } }[];
    assert.equal(run[0]?.result.imported.length, 1);
    const p = (await westReport('?refresh=false'))[0]?.paths[0];
    assert.equal(p?.restorePoints, 2);
    assert.ok(p?.exportIncrementalMs !== undefined, 'incremental export duration reported');
  });

  test('disaster at east: west imports the Azurite stream with its own location profile and restores byte for byte', async () => {
    const acct = azurite.accounts[0];
    assert.ok(acct);
    const details = ok(
      await tern(['dr', 'export-details', '--policy', 'to-azure', '--json'], {
        ...eastEnv(),
        TERN_IMPORT_SECRET: SECRET,
      }),
      'export details to-azure',
    ) as { token: string };
    assert.ok(!details.token.includes(acct.key));
    const tokenFile = path.join(work, 'to-azure.tern-x1');
    fs.writeFileSync(tokenFile, details.token);

    // The disaster: east's server, catalog and region are gone.
    await east.stop();
    fs.rmSync(path.join(work, 'east-data'), { recursive: true, force: true });
    fs.rmSync(eastRegion, { recursive: true, force: true });

    const w = westEnv();
    // A profile name west does not have is refused before the policy is stored.
    const unknown = await tern(
      ['dr', 'policy', 'add', 'shop-az', '--token-file', tokenFile, '--location-profile', 'nope', '--json'],
      w,
    );
    assert.notEqual(unknown.code, 0);
    assert.match(unknown.stderr + unknown.stdout, /nope/);
    // West's own credentials for the same account (the token never carries any).
    ok(
      await tern(
        [
          'profile',
          'create',
          'location',
          'azure-west',
          '--url',
          `azblob://${acct.name}/west-check`,
          '--setting',
          `azureEndpoint=${azurite.accountUrl(acct.name)}`,
          '--secret',
          `azureKey=${acct.key}`,
        ],
        w,
      ),
      'west azure profile',
    );
    const t0 = Date.now();
    ok(
      await tern(
        [
          'dr',
          'policy',
          'add',
          'shop-az',
          '--token-file',
          tokenFile,
          '--location-profile',
          'azure-west',
          '--json',
        ],
        w,
      ),
      'import policy with a location profile',
    );
    await until('the timer to import the Azurite stream', async () => {
      const r = await westReport('?refresh=false');
      const p = r[0]?.paths.find((x) => x.stream === 'east-shop-to-azure');
      return p?.restorePoints === 2 ? p : undefined;
    });
    timings.azureImportMs = Date.now() - t0;

    const target = path.join(work, 'restored');
    const st = JSON.parse(fs.readFileSync(path.join(work, 'west-data', 'dr', 'dr-site.json'), 'utf8')) as {
      imports: Record<string, { locationProfile?: string; restorePoints: { id: string }[] }>;
    };
    const azStream = st.imports['east-shop-to-azure'];
    assert.equal(azStream?.locationProfile, 'azure-west', 'the profile name is remembered, not its secrets');
    assert.ok(!JSON.stringify(st).includes(acct.key));
    const newest = azStream?.restorePoints.at(-1)?.id ?? '';
    const t1 = Date.now();
    const r2 = ok(
      await tern(
        [
          'dr',
          'restore',
          'shop',
          '--restore-point',
          newest,
          '--path',
          'repository',
          '--name',
          'data-az',
          '--target-dir',
          target,
          '--json',
        ],
        w,
      ),
      'restore the Azurite restore point',
    ) as { stream: string; outputs: { path: string }[] };
    timings.azureRestoreMs = Date.now() - t1;
    assert.ok(r2.outputs[0]?.path.startsWith(target));
    assert.equal(r2.stream, 'east-shop-to-azure');
    assert.equal(sha(r2.outputs[0]?.path ?? ''), hashes[1], 'Azurite stream restored byte for byte');
    const rep = (await westReport('?refresh=false'))[0]?.paths.find((x) => x.stream === 'east-shop-to-azure');
    assert.ok(rep?.restoreMs !== undefined, 'the restore time (RTO) is reported');
  });

  test('OpenAPI: the DR routes are documented and the document stays valid', async () => {
    const doc = (await (await west.fetch('/openapi.json', { token: null })).json()) as {
      paths: Record<string, Record<string, unknown>>;
    };
    for (const p of [
      '/v1/dr/report',
      '/v1/dr/import-policies',
      '/v1/dr/import-policies/{name}/run',
      '/v1/dr/export-details',
      '/v1/dr/restores',
    ])
      assert.ok(doc.paths[p], `${p} documented`);
    const verdict = await new Validator().validate(doc as unknown as Parameters<Validator['validate']>[0]);
    assert.equal(verdict.valid, true, JSON.stringify(verdict.errors));
  });
});
