/**
 * DR numbers in /metrics and DR work as action records, through two real `tern server` processes: site "east"
 * exports an app with the datamover to a directory vault (a full run, then an incremental one) and issues
 * export details; site "west" imports and restores over HTTP. West's /metrics then carries the achieved RPO,
 * both export durations, the restore duration (RTO), 3-2-1, the imported count and the last import time; its
 * imports and restores (also a failed import) are actions in `tern actions` and on the event stream.
 */
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { ActionRun } from '../../src/core/model.ts';
import { startTernServer, tern, type CliResult, type TernServerProcess } from '../harness/tern-server.ts';

const MiB = 1 << 20;
const SIZE = 4 * MiB;
const SECRET = 'west metrics import secret 51c0';
const NO_ENV = { TERN_SERVER: '', TERN_IMPORT_SECRET: '', AZURE_STORAGE_CONNECTION_STRING: '' };

function ok(r: CliResult, what: string): unknown {
  assert.equal(r.code, 0, `${what} failed (exit ${r.code}): ${r.stderr}${r.stdout}`);
  return r.json;
}

async function json<T>(res: Response, status: number, what: string): Promise<T> {
  const text = await res.text();
  assert.equal(res.status, status, `${what}: ${text}`);
  return (text ? JSON.parse(text) : undefined) as T;
}

/** `name{labels} value` lines of a Prometheus text exposition, labels as a sorted string. */
function samples(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = /^([a-z_][a-z0-9_]*)(\{[^}]*\})? (\S+)$/.exec(line);
    assert.ok(m, `bad exposition line: ${line}`);
    out.set(`${m[1]}${m[2] ?? ''}`, Number(m[3]));
  }
  return out;
}

function metric(s: Map<string, number>, key: string): number {
  const v = s.get(key);
  assert.ok(v !== undefined, `${key} missing; have:\n${[...s.keys()].join('\n')}`);
  return v;
}

/** Collects the "action" events of the west server's event stream until `stop`. */
function collectEvents(res: Response): { events: ActionRun[]; stop: () => Promise<void> } {
  const events: ActionRun[] = [];
  const reader = (res.body as ReadableStream<Uint8Array>).getReader();
  const dec = new TextDecoder();
  let buf = '';
  const done = (async () => {
    for (;;) {
      const { value, done: end } = await reader.read().catch(() => ({ value: undefined, done: true }));
      if (end) return;
      buf += dec.decode(value, { stream: true });
      let i: number;
      while ((i = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, i);
        buf = buf.slice(i + 2);
        const data = /^data: (.*)$/m.exec(block)?.[1];
        if (/^event: action$/m.test(block) && data) events.push(JSON.parse(data) as ActionRun);
      }
    }
  })();
  return {
    events,
    stop: async () => {
      await reader.cancel().catch(() => undefined);
      await done;
    },
  };
}

describe('DR metrics and DR actions (two tern servers)', { timeout: 600_000 }, () => {
  let work: string;
  let east: TernServerProcess;
  let west: TernServerProcess;
  let token = '';
  const timings: Record<string, number> = {};
  const eastEnv = (): NodeJS.ProcessEnv => ({ ...NO_ENV, ...east.env });
  const westEnv = (): NodeJS.ProcessEnv => ({ ...NO_ENV, ...west.env });

  before(async () => {
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-dr-metrics-'));
    fs.mkdirSync(path.join(work, 'east-region', 'volumes'), { recursive: true });
    fs.mkdirSync(path.join(work, 'vault'));
    fs.writeFileSync(path.join(work, 'east-region', 'volumes', 'data'), crypto.randomBytes(SIZE));
    east = await startTernServer(path.join(work, 'east-data'), { env: { ...NO_ENV, TERN_SITE: 'east' } });
    west = await startTernServer(path.join(work, 'west-data'), {
      env: { ...NO_ENV, TERN_SITE: 'west', TERN_IMPORT_SECRET: SECRET, TERN_DR_INTERVAL: '0' },
    });
  });

  after(async () => {
    const logs = [east?.log() ?? '', west?.log() ?? ''].join('\n');
    await east?.stop();
    await west?.stop();
    fs.rmSync(work, { recursive: true, force: true });
    process.stderr.write(`timings (ms): ${JSON.stringify(timings)}\n`);
    assert.ok(!logs.includes(SECRET), 'the import secret never appears in a server log');
    assert.doesNotMatch(logs, /internal error/, 'no request ended in a 500');
  });

  test('east: a full and an incremental export to a vault, export details over HTTP', async () => {
    const e = eastEnv();
    const region = path.join(work, 'east-region');
    ok(
      await tern(
        ['profile', 'create', 'infra', 'lab', '--platform', 'local', '--setting', `regions.east=${region}`],
        e,
      ),
      'infra profile',
    );
    ok(await tern(['profile', 'create', 'location', 'vault', '--url', path.join(work, 'vault')], e), 'vault');
    ok(
      await tern(['app', 'create', 'shop', '--infra', 'lab', '--region', 'east', '--volume', 'data=data'], e),
      'app',
    );
    ok(
      await tern(
        [
          'policy',
          'create',
          'to-vault',
          '--app',
          'shop',
          '--frequency',
          '@daily',
          '--retention',
          'latest=5',
          '--export-to',
          'vault',
        ],
        e,
      ),
      'policy',
    );
    for (let run = 1; run <= 2; run++) {
      if (run === 2) {
        const fd = fs.openSync(path.join(region, 'volumes', 'data'), 'r+');
        fs.writeSync(fd, crypto.randomBytes(8192), 0, 8192, 64 * 4096);
        fs.closeSync(fd);
      }
      const r = await tern(['run', 'to-vault', '--wait', '--json'], e);
      ok(r, `run #${run}`);
      timings[`run${run}`] = r.ms;
    }
    const d = await json<{ token: string; restorePoints: number }>(
      await east.fetch('/v1/dr/export-details?policy=to-vault', {
        method: 'POST',
        body: JSON.stringify({ importSecret: SECRET }),
      }),
      200,
      'export details',
    );
    assert.equal(d.restorePoints, 2);
    token = d.token;
    // East imports nothing: no DR samples in its /metrics, and its own families stay.
    const text = await (await east.fetch('/metrics')).text();
    assert.doesNotMatch(text, /^tern_dr_rpo_seconds/m);
    assert.match(text, /^tern_actions\{kind="backup",state="Complete"\} 2$/m);
  });

  test('west: import and restore over HTTP are actions (list, event stream); a bad import is a Failed one', async () => {
    const res = await west.fetch('/v1/actions/events');
    assert.equal(res.status, 200);
    const stream = collectEvents(res);
    try {
      const t0 = Date.now();
      const imp = await json<{ imported: string[]; stream: string }>(
        await west.fetch('/v1/dr/import', { method: 'POST', body: JSON.stringify({ token }) }),
        200,
        'import',
      );
      timings.importMs = Date.now() - t0;
      assert.equal(imp.imported.length, 2);

      const t1 = Date.now();
      const target = path.join(work, 'restored');
      const rst = await json<{ restorePoint: string; bytesTransferred: number; outputs: { path: string }[] }>(
        await west.fetch('/v1/dr/restores', {
          method: 'POST',
          body: JSON.stringify({ app: 'shop', path: 'repository', name: 'data-dr', targetDir: target }),
        }),
        200,
        'restore',
      );
      timings.restoreMs = Date.now() - t1;
      assert.equal(
        crypto
          .createHash('sha256')
          .update(fs.readFileSync(rst.outputs[0]?.path ?? ''))
          .digest('hex'),
        crypto
          .createHash('sha256')
          .update(fs.readFileSync(path.join(work, 'east-region', 'volumes', 'data')))
          .digest('hex'),
        'restored byte for byte',
      );

      // A token under another secret: 400 to the caller, a Failed import action with the error.
      const other = await json<{ token: string }>(
        await east.fetch('/v1/dr/export-details?policy=to-vault', {
          method: 'POST',
          body: JSON.stringify({ importSecret: 'another secret entirely' }),
        }),
        200,
        'other details',
      );
      const bad = await west.fetch('/v1/dr/import', {
        method: 'POST',
        body: JSON.stringify({ token: other.token }),
      });
      assert.equal(bad.status, 400, await bad.text());

      const list = ok(await tern(['actions', '--json'], westEnv()), 'tern actions') as ActionRun[];
      const imports = list.filter((a) => a.type === 'import');
      assert.equal(imports.length, 2, JSON.stringify(list));
      const good = imports.find((a) => a.state === 'Complete');
      assert.ok(good, 'a Complete import action');
      assert.equal(good.app, 'shop');
      assert.equal(good.params.imported, 2);
      assert.equal(good.params.stream, imp.stream);
      assert.deepEqual(
        good.phases.map((p) => p.name),
        ['import'],
      );
      assert.ok(good.phases[0]?.endedAt && good.startedAt && good.endedAt);
      assert.equal(good.restorePoint, imp.imported.at(-1));
      const failed = imports.find((a) => a.state === 'Failed');
      assert.ok(failed?.error, 'the failed import records its error');
      assert.equal(failed.error.code, 'INPUT');
      assert.ok(!JSON.stringify(list).includes(SECRET) && !JSON.stringify(list).includes(token));

      const restore = list.find((a) => a.type === 'restore');
      assert.ok(restore, 'a restore action');
      assert.equal(restore.state, 'Complete');
      assert.equal(restore.app, 'shop');
      assert.equal(restore.restorePoint, rst.restorePoint);
      assert.equal(restore.params.path, 'repository');
      assert.equal(restore.bytesTransferred, rst.bytesTransferred);
      assert.deepEqual(
        restore.phases.map((p) => p.name),
        ['restore'],
      );
      const table = await tern(['actions', '--type', 'restore'], westEnv());
      assert.match(table.stdout, /restore\s+Complete/);

      // The event stream saw each of them go Running, then settle.
      const deadline = Date.now() + 10_000;
      while (stream.events.filter((a) => a.state !== 'Running' && a.state !== 'Pending').length < 3) {
        assert.ok(Date.now() < deadline, `events: ${JSON.stringify(stream.events)}`);
        await new Promise((r) => setTimeout(r, 50));
      }
      for (const a of [good, failed, restore]) {
        const states = stream.events.filter((x) => x.id === a.id).map((x) => x.state);
        assert.ok(states.includes('Running'), `${a.type} Running on the stream: ${states.join(',')}`);
        assert.equal(states.at(-1), a.state);
      }
    } finally {
      await stream.stop();
    }
  });

  test('west /metrics: RPO, export durations, RTO, 3-2-1, imports per app and path', async () => {
    const t0 = Date.now();
    const res = await west.fetch('/metrics');
    timings.metricsMs = Date.now() - t0;
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
    const text = await res.text();
    const s = samples(text);
    for (const f of [
      'tern_dr_rpo_seconds gauge',
      'tern_dr_export_duration_seconds gauge',
      'tern_dr_restore_duration_seconds gauge',
      'tern_dr_321_ok gauge',
      'tern_dr_imported_restore_points_total counter',
      'tern_dr_last_import_timestamp gauge',
    ])
      assert.ok(text.includes(`# TYPE ${f}\n`), `${f} declared`);

    const report = await json<
      {
        app: string;
        paths: { path: string; rpoSeconds: number; exportFirstMs: number; restoreMs: number }[];
      }[]
    >(await west.fetch('/v1/dr/report'), 200, 'report');
    const p = report[0]?.paths[0];
    assert.ok(p);

    const rpo = metric(s, 'tern_dr_rpo_seconds{app="shop",path="repository",site="west"}');
    assert.ok(rpo > 0 && rpo < 600, `RPO ${rpo}`);
    assert.ok(Math.abs(rpo - p.rpoSeconds) < 60, `RPO ${rpo} matches the report's ${p.rpoSeconds}`);
    const first = metric(s, 'tern_dr_export_duration_seconds{app="shop",path="repository",kind="first"}');
    const incr = metric(
      s,
      'tern_dr_export_duration_seconds{app="shop",path="repository",kind="incremental"}',
    );
    assert.ok(first > 0 && first < 300, `first export ${first}s`);
    assert.ok(incr > 0 && incr < 300, `incremental export ${incr}s`);
    assert.equal(first, p.exportFirstMs / 1000);
    const rto = metric(s, 'tern_dr_restore_duration_seconds{app="shop",path="repository"}');
    assert.ok(rto > 0 && rto * 1000 <= (timings.restoreMs ?? 0), `RTO ${rto}s within the request's time`);
    assert.equal(metric(s, 'tern_dr_321_ok{app="shop"}'), 1);
    assert.equal(metric(s, 'tern_dr_imported_restore_points_total{app="shop",path="repository"}'), 2);
    const last = metric(s, 'tern_dr_last_import_timestamp{app="shop",path="repository"}');
    assert.ok(Math.abs(Date.now() / 1000 - last) < 600, `last import ${last}`);
    // The import and restore actions count in the existing families too.
    assert.equal(metric(s, 'tern_actions{kind="import",state="Complete"}'), 1);
    assert.equal(metric(s, 'tern_actions{kind="import",state="Failed"}'), 1);
    assert.equal(metric(s, 'tern_actions{kind="restore",state="Complete"}'), 1);
  });

  test('after a restart the DR actions stay as recorded and the DR metrics are back', async () => {
    // Nothing is running now; the recorded actions stay as they are across a restart.
    const before = ok(await tern(['actions', '--json'], westEnv()), 'actions') as ActionRun[];
    await west.stop();
    west = await startTernServer(path.join(work, 'west-data'), {
      env: { ...NO_ENV, TERN_SITE: 'west', TERN_IMPORT_SECRET: SECRET, TERN_DR_INTERVAL: '0' },
    });
    const after = ok(await tern(['actions', '--json'], westEnv()), 'actions') as ActionRun[];
    assert.deepEqual(
      after.map((a) => [a.id, a.state]),
      before.map((a) => [a.id, a.state]),
    );
    const s = samples(await (await west.fetch('/metrics')).text());
    assert.equal(metric(s, 'tern_dr_imported_restore_points_total{app="shop",path="repository"}'), 2);
  });
});
