/** The ARM Compute emulator on the wire (plain fetch): what the Azure REST reference says clients will see. */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { AzureSandbox } from '../../src/platforms/azure/sandbox.ts';
import { BlobServiceClient, StorageSharedKeyCredential } from '@azure/storage-blob';
import { startAzureCompute } from '../emulators/azure-compute/index.ts';

describe('Azure Compute emulator (REST)', () => {
  let sb: AzureSandbox;
  let token: string;
  let base: string;
  const api = '?api-version=2025-01-02';

  before(async () => {
    sb = await startAzureCompute({ regions: ['eastus', 'westus'] });
    await sb.emulator.createDisk(sb.resourceGroups['eastus']!, 'd1', 'eastus', 1 << 20);
    base = `${sb.emulator.armEndpoint}/subscriptions/${sb.subscription}/resourceGroups/${sb.resourceGroups['eastus']}/providers/Microsoft.Compute`;
  });
  after(async () => {
    await sb?.stop();
  });

  const call = (method: string, url: string, body?: unknown, auth = true) =>
    fetch(url, {
      method,
      headers: {
        ...(auth ? { authorization: `Bearer ${token}` } : {}),
        ...(body ? { 'content-type': 'application/json' } : {}),
      },
      ...(body ? { body: JSON.stringify(body) } : {}),
    });

  const waitOp = async (url: string): Promise<Record<string, unknown>> => {
    for (;;) {
      const r = (await (await call('GET', url)).json()) as Record<string, unknown>;
      if (r['status'] !== 'InProgress') return r;
      await new Promise((res) => setTimeout(res, 20));
    }
  };

  test('client-credential token; wrong secret and missing token are refused', async () => {
    const tokenUrl = `${sb.emulator.armEndpoint}/${sb.tenant}/oauth2/v2.0/token`;
    const form = (secret: string) =>
      new URLSearchParams({
        grant_type: 'client_credentials',
        client_id: sb.clientId,
        client_secret: secret,
        scope: 'x',
      });
    const bad = await fetch(tokenUrl, { method: 'POST', body: form('nope') });
    assert.equal(bad.status, 401);
    const ok = await fetch(tokenUrl, { method: 'POST', body: form(sb.clientSecret) });
    token = ((await ok.json()) as { access_token: string }).access_token;
    const r = await call('GET', `${base}/snapshots${api}`, undefined, false);
    assert.equal(r.status, 401);
    assert.equal(((await r.json()) as { error: { code: string } }).error.code, 'InvalidAuthenticationToken');
  });

  test('PUT snapshot is a long-running operation; conflicts, grant/revoke, delete, 404', async () => {
    const diskId = `${base.slice(sb.emulator.armEndpoint.length)}/disks/d1`;
    const body = {
      location: 'eastus',
      properties: { creationData: { createOption: 'Copy', sourceResourceId: diskId }, incremental: true },
    };
    const put = await call('PUT', `${base}/snapshots/s1${api}`, body);
    assert.equal(put.status, 201);
    assert.equal(
      ((await put.json()) as { properties: { provisioningState: string } }).properties.provisioningState,
      'Creating',
    );
    const op = put.headers.get('azure-asyncoperation');
    assert.ok(op);
    assert.equal((await waitOp(op))['status'], 'Succeeded');
    const got = (await (await call('GET', `${base}/snapshots/s1${api}`)).json()) as {
      properties: { incremental: boolean; diskSizeBytes: number; provisioningState: string };
    };
    assert.deepEqual(
      [got.properties.incremental, got.properties.diskSizeBytes, got.properties.provisioningState],
      [true, 1 << 20, 'Succeeded'],
    );
    const again = await call('PUT', `${base}/snapshots/s1${api}`, {
      ...body,
      properties: { creationData: { createOption: 'Empty' } },
    });
    assert.equal(again.status, 409);
    assert.equal(
      ((await again.json()) as { error: { code: string } }).error.code,
      'PropertyChangeNotAllowed',
    );

    const grant = await call('POST', `${base}/snapshots/s1/beginGetAccess${api}`, {
      access: 'Read',
      durationInSeconds: 60,
    });
    assert.equal(grant.status, 202);
    const loc = grant.headers.get('location')!;
    await waitOp(grant.headers.get('azure-asyncoperation')!);
    const sas = ((await (await call('GET', loc)).json()) as { accessSAS: string }).accessSAS;
    assert.match(sas, /sig=/);
    assert.equal((await fetch(sas, { method: 'HEAD' })).status, 200);
    const busy = await call('DELETE', `${base}/snapshots/s1${api}`);
    assert.equal(busy.status, 409, 'active SAS blocks delete');
    await busy.body?.cancel();
    const revoke = await call('POST', `${base}/snapshots/s1/endGetAccess${api}`);
    assert.equal(revoke.status, 202);
    await waitOp(revoke.headers.get('azure-asyncoperation')!);
    assert.equal((await fetch(sas, { method: 'HEAD' })).status, 403, 'revoked SAS refused');

    const del = await call('DELETE', `${base}/snapshots/s1${api}`);
    assert.equal(del.status, 202);
    assert.ok(del.headers.get('location'));
    await waitOp(del.headers.get('azure-asyncoperation')!);
    const gone = await call('GET', `${base}/snapshots/s1${api}`);
    assert.equal(gone.status, 404);
    assert.equal(((await gone.json()) as { error: { code: string } }).error.code, 'ResourceNotFound');
  });

  test('an access SAS lives at most maxSasSeconds', async () => {
    sb.emulator.options.maxSasSeconds = 1;
    try {
      const snaps = `${base}/snapshots/s2${api}`;
      const diskId = `${base.slice(sb.emulator.armEndpoint.length)}/disks/d1`;
      const put = await call('PUT', snaps, {
        location: 'eastus',
        properties: { creationData: { createOption: 'Copy', sourceResourceId: diskId } },
      });
      await waitOp(put.headers.get('azure-asyncoperation')!);
      const grant = await call('POST', `${base}/snapshots/s2/beginGetAccess${api}`, {
        access: 'Read',
        durationInSeconds: 3600,
      });
      await waitOp(grant.headers.get('azure-asyncoperation')!);
      const sas = (
        (await (await call('GET', grant.headers.get('location')!)).json()) as { accessSAS: string }
      ).accessSAS;
      assert.equal((await fetch(sas, { method: 'HEAD' })).status, 200);
      await new Promise((r) => setTimeout(r, 1100));
      assert.equal((await fetch(sas, { method: 'HEAD' })).status, 403, 'expired');
    } finally {
      sb.emulator.options.maxSasSeconds = 3600;
    }
  });

  test('injected throttling answers 429 with Retry-After', async () => {
    sb.emulator.injectThrottling(1, 7);
    const r = await call('GET', `${base}/snapshots${api}`);
    assert.equal(r.status, 429);
    assert.equal(r.headers.get('retry-after'), '7');
    await r.body?.cancel();
    assert.equal((await call('GET', `${base}/snapshots${api}`)).status, 200);
  });

  test('role checks per resource group', async () => {
    const west = `${sb.emulator.armEndpoint}/subscriptions/${sb.subscription}/resourceGroups/${sb.resourceGroups['westus']}/providers/Microsoft.Compute`;
    sb.emulator.setRoles(sb.clientId, sb.emulator.rgScope(sb.resourceGroups['westus']!), ['Reader']);
    const r = await call('PUT', `${west}/snapshots/x${api}`, {
      location: 'westus',
      properties: { creationData: { createOption: 'Empty' } },
    });
    assert.equal(r.status, 403);
    const e = ((await r.json()) as { error: { code: string; message: string } }).error;
    assert.equal(e.code, 'AuthorizationFailed');
    assert.match(e.message, /Disk Snapshot Contributor/);
    assert.match(e.message, new RegExp(`resourceGroups/${sb.resourceGroups['westus']}`));
    assert.equal((await call('GET', `${west}/snapshots${api}`)).status, 200, 'Reader may list');
  });
  test('a page blob copied through the blob front owns its pages (writes to copy or source stay apart)', async () => {
    const t = sb.config.targets?.['westus'];
    assert.ok(t?.blobEndpoint, 'sandbox has a westus staging account');
    const cc = new BlobServiceClient(
      t.blobEndpoint,
      new StorageSharedKeyCredential(t.storageAccount, t.accountKey),
    ).getContainerClient('alias-check');
    await cc.createIfNotExists();
    const src = cc.getPageBlobClient('src.vhd');
    const copy = cc.getPageBlobClient('copy.vhd');
    const size = 64 << 10;
    await src.create(size);
    const a = Buffer.alloc(size, 0xaa);
    await src.uploadPages(a, 0, size);
    await (await copy.beginCopyFromURL(src.url, { intervalInMs: 20 })).pollUntilDone();
    // Azurite 3.35 alone shares the page-range array between the two: these writes would show in both.
    await copy.uploadPages(Buffer.alloc(4096, 0xbb), 8192, 4096);
    await src.uploadPages(Buffer.alloc(512, 0xcc), 32768, 512);
    await src.clearPages(49152, 4096);
    const s = await src.downloadToBuffer(0, size);
    const c = await copy.downloadToBuffer(0, size);
    const wantS = Buffer.from(a);
    wantS.fill(0xcc, 32768, 33280);
    wantS.fill(0, 49152, 53248);
    const wantC = Buffer.from(a);
    wantC.fill(0xbb, 8192, 12288);
    assert.ok(s.equals(wantS), 'source kept its own pages');
    assert.ok(c.equals(wantC), 'copy kept its own pages');
    const snaps: string[] = [];
    for await (const b of cc.listBlobsFlat({ includeSnapshots: true })) if (b.snapshot) snaps.push(b.name);
    assert.deepEqual(snaps, [], 'no blob snapshot left behind');
  });
});
