/**
 * The dashboard in a real browser: a real `tern server` child process (SQLite catalog, local platform, a
 * file:// repository), an app and a policy created over the API and run once, then Debian Chromium driven by
 * playwright-core opens `/`, signs in with the token, and must show the app with its restore points per tier,
 * the completed actions, a second run arriving live over the events stream, the DR panel's path choice (RPO
 * and RTO after an import and a restore at this same server), and a clear error for a wrong
 * token. Static files are public and carry a CSP; data routes stay behind the token. Screenshots go to a temp
 * dir (and docs/dashboard.png when TERN_UPDATE_SCREENSHOT=1).
 */
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { chromium, type Browser, type Page } from 'playwright-core';
import type { ActionRun } from '../../src/core/index.ts';
import { startTernServer, type TernServerProcess } from '../harness/tern-server.ts';

const CHROMIUM = process.env.TERN_CHROMIUM ?? '/usr/bin/chromium';
function executable(file: string): boolean {
  try {
    fs.accessSync(file, fs.constants.X_OK);
    return fs.statSync(file).isFile();
  } catch {
    return false;
  }
}
const skip = executable(CHROMIUM)
  ? false
  : `no Chromium at ${CHROMIUM} (scripts/peers.d/40-chromium.sh installs Debian chromium)`;
const ROOT = path.resolve(import.meta.dirname, '..', '..');
const IMPORT_SECRET = 'web test import secret 41c2';

describe('web dashboard in Chromium', { skip, timeout: 180_000 }, () => {
  let work: string;
  let server: TernServerProcess;
  let browser: Browser;
  const timings: Record<string, number> = {};
  const consoleErrors: string[] = [];

  const api = async <T>(method: string, p: string, body?: unknown): Promise<T> => {
    const res = await server.fetch(p, { method, ...(body ? { body: JSON.stringify(body) } : {}) });
    const text = await res.text();
    assert.ok(res.ok, `${method} ${p}: ${res.status} ${text}`);
    return (text ? JSON.parse(text) : undefined) as T;
  };

  /** Runs the policy and waits until its backup and every follow-on action ended. */
  const runPolicy = async (name: string): Promise<string> => {
    const { actionId } = await api<{ actionId: string }>('POST', `/v1/policies/${name}/run`);
    const deadline = Date.now() + 60_000;
    for (;;) {
      const run = await api<ActionRun[]>('GET', `/v1/actions?run=${actionId}`);
      const backup = run.find((a) => a.id === actionId);
      if (backup && run.every((a) => ['Complete', 'Failed', 'Cancelled'].includes(a.state))) {
        for (const a of run) assert.equal(a.state, 'Complete', `${a.type}: ${JSON.stringify(a.error)}`);
        if (run.some((a) => a.type === 'export')) return actionId;
      }
      assert.ok(Date.now() < deadline, `run ${actionId} did not finish: ${JSON.stringify(run)}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  };

  const openPage = async (): Promise<Page> => {
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    page.on('console', (m) => {
      // The wrong-token test makes the browser log its 401 response; anything else is a fault.
      if (m.type() === 'error' && !/status of 401/.test(m.text())) consoleErrors.push(m.text());
    });
    page.on('pageerror', (e) => consoleErrors.push(String(e)));
    await page.goto(server.url + '/');
    return page;
  };

  // node:test still runs the hooks of a skipped suite: start nothing then.
  before(async () => {
    if (skip) return;
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-web-test-'));
    const region = path.join(work, 'east');
    fs.mkdirSync(path.join(region, 'volumes'), { recursive: true });
    fs.writeFileSync(path.join(region, 'volumes', 'data'), crypto.randomBytes(2 << 20));
    fs.mkdirSync(path.join(work, 'repo'));
    let t0 = Date.now();
    // Both at once; whichever started is kept so that `after` stops it if the other failed.
    const [started, launched] = await Promise.allSettled([
      startTernServer(path.join(work, 'data'), {
        env: { TERN_SITE: 'east', TERN_IMPORT_SECRET: IMPORT_SECRET, TERN_DR_INTERVAL: '0', TERN_SERVER: '' },
      }),
      chromium.launch({
        executablePath: CHROMIUM,
        args: [
          '--no-sandbox',
          '--disable-gpu',
          '--disable-background-networking',
          '--disable-component-update',
          '--no-first-run',
        ],
      }),
    ]);
    if (started.status === 'fulfilled') server = started.value;
    if (launched.status === 'fulfilled') browser = launched.value;
    if (started.status === 'rejected') throw started.reason;
    if (launched.status === 'rejected') throw launched.reason;
    timings.serverAndBrowserStartMs = Date.now() - t0;
    await api('POST', '/v1/profiles', {
      name: 'local',
      kind: 'infra',
      platform: 'local',
      settings: { 'regions.east': region },
    });
    await api('POST', '/v1/profiles', { name: 'offsite', kind: 'location', url: `file://${work}/repo` });
    await api('POST', '/v1/apps', {
      name: 'shop',
      infraProfile: 'local',
      region: 'east',
      volumes: [{ name: 'data', ref: 'data' }],
    });
    await api('POST', '/v1/policies', {
      name: 'shop-hourly',
      app: 'shop',
      frequency: { every: 'hour', minute: 15 },
      retention: { latest: 3 },
      export: { mode: 'datamover', locationProfile: 'offsite' },
    });
    // An app whose volume is gone after it was registered: its run fails, and the page must say so and why.
    fs.writeFileSync(path.join(region, 'volumes', 'ledger-db'), 'x');
    await api('POST', '/v1/apps', {
      name: 'ledger',
      infraProfile: 'local',
      region: 'east',
      volumes: [{ name: 'db', ref: 'ledger-db' }],
    });
    fs.rmSync(path.join(region, 'volumes', 'ledger-db'));
    await api('POST', '/v1/policies', {
      name: 'ledger-daily',
      app: 'ledger',
      frequency: '@daily',
      retention: {},
    });
    const failed = await api<{ actionId: string }>('POST', '/v1/policies/ledger-daily/run');
    for (let a = await api<ActionRun>('GET', `/v1/actions/${failed.actionId}`); a.state !== 'Failed';) {
      assert.ok(['Pending', 'Running'].includes(a.state), `ledger backup: ${JSON.stringify(a)}`);
      await new Promise((r) => setTimeout(r, 100));
      a = await api<ActionRun>('GET', `/v1/actions/${failed.actionId}`);
    }
    t0 = Date.now();
    await runPolicy('shop-hourly');
    timings.firstRunMs = Date.now() - t0;
  });

  after(async () => {
    if (skip) return;
    await browser?.close();
    const code = await server?.stop();
    if (code !== 0 && code !== null) process.stderr.write(`server log:\n${server.log()}\n`);
    fs.rmSync(work, { recursive: true, force: true });
    process.stderr.write(`web timings (ms): ${JSON.stringify(timings)}\n`);
  });

  test('static files are public with a CSP and no data; data routes still need the token', async () => {
    for (const p of ['/', '/web/app.js', '/web/style.css', '/web/view.js']) {
      const res = await server.fetch(p, { token: null });
      assert.equal(res.status, 200, p);
      const csp = res.headers.get('content-security-policy') ?? '';
      assert.match(csp, /default-src 'none'/, p);
      assert.match(csp, /script-src 'self'/, p);
      assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/, p);
      assert.equal(res.headers.get('x-content-type-options'), 'nosniff');
      const text = await res.text();
      assert.ok(!text.includes('shop'), `${p} carries no catalog data`);
    }
    assert.match((await server.fetch('/', { token: null })).headers.get('content-type') ?? '', /text\/html/);
    assert.match(
      (await server.fetch('/web/app.js', { token: null })).headers.get('content-type') ?? '',
      /text\/javascript/,
    );
    assert.equal((await server.fetch('/web/../auth.ts', { token: null })).status, 404);
    assert.equal((await server.fetch('/web/index.ts', { token: null })).status, 404);
    assert.equal((await server.fetch('/v1/apps', { token: null })).status, 401);
  });

  test('wrong token: a clear error, nothing loaded, nothing stored', async () => {
    const page = await openPage();
    await page.fill('#token', 'not-the-token-' + 'x'.repeat(20));
    await page.click('#login-form button[type=submit]');
    const err = page.locator('#login-error');
    await err.waitFor({ state: 'visible', timeout: 10_000 });
    assert.match((await err.textContent()) ?? '', /Wrong token.*invalid bearer token/);
    assert.equal(await page.locator('#dashboard').isVisible(), false);
    assert.equal(await page.evaluate(() => sessionStorage.getItem('tern.token')), null);
    await page.close();
  });

  test('signed in: app with restore point tiers and RPO, policy, restore points, completed actions, live run', async () => {
    const t0 = Date.now();
    const page = await openPage();
    await page.fill('#token', server.token);
    await page.click('#login-form button[type=submit]');
    const appRow = page.locator('#apps tr[data-app="shop"]');
    await appRow.waitFor({ timeout: 15_000 });
    timings.signInToDataMs = Date.now() - t0;
    const cells = await appRow.locator('td').allTextContents();
    assert.match(cells[0] ?? '', /shop.*local · east/);
    assert.match(cells[2] ?? '', /ago/, `local snapshot tier shown: ${cells.join(' | ')}`);
    assert.match(cells[3] ?? '', /ago/, `repository tier shown: ${cells.join(' | ')}`);
    assert.equal(cells[4], '—', 'no region copy');
    assert.match(cells[5] ?? '', /^\d+ s$/, `current RPO in seconds: ${cells[5]}`);
    assert.equal(await page.evaluate(() => sessionStorage.getItem('tern.token')), server.token);

    const policy = await page.locator('#policies tr[data-policy="shop-hourly"]').textContent();
    assert.match(policy ?? '', /hourly at :15.*repository → offsite.*active.*Complete/);

    const ledger = await page.locator('#apps tr[data-app="ledger"]').textContent();
    assert.match(ledger ?? '', /no restore point/);
    assert.match(
      (await page.locator('#policies tr[data-policy="ledger-daily"]').textContent()) ?? '',
      /daily.*Failed/,
    );
    const failedRow = page.locator('#actions tr[data-state="Failed"]');
    assert.equal(await failedRow.count(), 1);
    assert.match((await failedRow.textContent()) ?? '', /backup.*ledger.*Failed.*[A-Z_]+: .*ledger-db/);
    assert.match((await page.locator('#summary').textContent()) ?? '', /1failed \(24 h\)/);

    const points = await api<{ id: string }[]>('GET', '/v1/restorepoints?app=shop');
    assert.equal(points.length, 1);
    const pointRow = await page.locator(`#points tr[data-point="${points[0]?.id}"]`).textContent();
    assert.match(pointRow ?? '', /shop.*2\.0 MiB.*local.*repository/);

    const done = await page
      .locator('#actions tr[data-state="Complete"] td:first-child strong')
      .allTextContents();
    for (const type of ['backup', 'export', 'retention'])
      assert.ok(done.includes(type), `${type} shown complete: ${done.join(', ')}`);
    const exportRow = (await page.locator('#actions tr[data-type="export"]').first().textContent()) ?? '';
    assert.match(exportRow, /sent 2\.0 MiB/, 'export shows the bytes it moved');

    // A second run while the page is open: its actions arrive over the events stream, no reload.
    await page.locator('#live').waitFor({ state: 'visible', timeout: 10_000 });
    // Every action row state the page shows from now on (a string, as this file has no DOM types).
    await page.evaluate(`(() => {
      const seen = (window.ternSeen = []);
      new MutationObserver(() => {
        for (const tr of document.querySelectorAll('#actions tr[data-action]'))
          seen.push([tr.dataset.action, tr.dataset.type, tr.dataset.state, tr.querySelector('progress') ? 'bar' : ''].join('|'));
      }).observe(document.getElementById('actions'), { childList: true, subtree: true });
    })()`);
    const t1 = Date.now();
    const fd = fs.openSync(path.join(work, 'east', 'volumes', 'data'), 'r+');
    fs.writeSync(fd, crypto.randomBytes(256 << 10), 0, 256 << 10, 1 << 20);
    fs.closeSync(fd);
    const second = await runPolicy('shop-hourly');
    await page
      .locator(`#actions tr[data-action="${second}"][data-state="Complete"]`)
      .waitFor({ timeout: 15_000 });
    timings.liveUpdateAfterRunMs = Date.now() - t1;
    const runIds = new Set((await api<ActionRun[]>('GET', `/v1/actions?run=${second}`)).map((a) => a.id));
    const seen = ((await page.evaluate('window.ternSeen')) as string[])
      .map((x) => x.split('|'))
      .filter(([id]) => runIds.has(id ?? ''));
    assert.ok(
      seen.some(([, , state, bar]) => state === 'Running' && bar === 'bar'),
      `a running action of the run was shown with its progress bar: ${JSON.stringify([...new Set(seen.map((x) => x.join('|')))])}`,
    );
    // Reloaded after the run ended: two points, the newest already with its repository tier. Wait for the
    // second row first: the first run's point also has a repository badge, so checking it alone could pass
    // on the page as it was before the reload.
    await page.locator('#points tbody tr').nth(1).waitFor({ timeout: 10_000 });
    await page
      .locator('#points tbody tr')
      .first()
      .locator('.badge', { hasText: 'repository' })
      .waitFor({ timeout: 10_000 });
    assert.equal(await page.locator('#points tbody tr').count(), 2, 'restore points reloaded after the run');
    assert.equal(await page.locator('#banner').isVisible(), false);
    assert.match((await page.locator('#dr').textContent()) ?? '', /No DR streams/);

    // This server is also a DR site for its own stream: import the export details, restore from the
    // repository (a measured RTO), and the DR panel names the path with its RPO and RTO.
    const { token } = await api<{ token: string }>('POST', '/v1/dr/export-details?policy=shop-hourly', {
      importSecret: IMPORT_SECRET,
    });
    await api('POST', '/v1/dr/import', { token, locationProfile: 'offsite' });
    await api('POST', '/v1/dr/restores', {
      app: 'shop',
      path: 'repository',
      targetDir: path.join(work, 'restored'),
    });
    await page.click('#refresh');
    // An earlier reload may have drawn the panel before the restore; the refresh's answer must replace it.
    await page
      .locator('#dr [data-dr-app="shop"] .verdict', {
        hasText: /^Use repository: fastest back \(RTO [\d.]+ m?s\) and least loss \(RPO \d+ s\)\.$/,
      })
      .waitFor({ timeout: 10_000 });
    const drRow = await page.locator('#dr [data-dr-app="shop"] tbody tr').allTextContents();
    assert.equal(drRow.length, 1);
    assert.match(drRow[0] ?? '', /repository.*\d+ s.*m?s.*3-2-1/);

    const shots = path.join(work, 'shots');
    fs.mkdirSync(shots);
    const shot = path.join(shots, 'dashboard.png');
    await page.screenshot({ path: shot, fullPage: true });
    assert.ok(fs.statSync(shot).size > 10_000, 'screenshot written');
    if (process.env.TERN_UPDATE_SCREENSHOT === '1')
      fs.copyFileSync(shot, path.join(ROOT, 'docs', 'dashboard.png'));

    // Sign out forgets the token.
    await page.click('#signout');
    assert.equal(await page.evaluate(() => sessionStorage.getItem('tern.token')), null);
    await page.locator('#login').waitFor();
    await page.close();
    assert.deepEqual(consoleErrors, [], 'no script errors or CSP violations');
  });
});
