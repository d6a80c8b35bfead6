/**
 * Azure platform against the compute emulator + Azurite with the real SDKs: the field's VHD path, incremental
 * copies measured in bytes, SAS expiry, throttling, role errors, cancellation and a killed copy.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { BlobServiceClient, StorageSharedKeyCredential } from '@azure/storage-blob';
import {
  CancelledError,
  ConflictError,
  ForbiddenError,
  InputError,
  describeError,
} from '../../src/core/index.ts';
import {
  AzurePlatform,
  VHD_CONTAINER,
  azureConfigFromProfiles,
  locationProblems,
  supportsPageBlobs,
} from '../../src/platforms/azure/index.ts';
import { openPlatform } from '../../src/platforms/index.ts';
import type { SnapshotRef, VolumeRef } from '../../src/platforms/index.ts';
import type { AzureSandbox } from '../../src/platforms/azure/sandbox.ts';
import { startAzureSandbox } from '../../src/platforms/azure/sandbox.ts';
import { startAzureCompute } from '../emulators/azure-compute/index.ts';

const EAST = 'eastus';
const WEST = 'westus';
const SIZE = 64 << 20;
/** The other scenarios run on a smaller disk: Azurite copies page blobs at ~25 MB/s on a busy CI core. */
const SMALL = 8 << 20;

describe('Azure platform (compute emulator + Azurite, real SDK)', () => {
  let sb: AzureSandbox;
  let p: AzurePlatform;
  let east: string;
  let west: string;
  let vol: VolumeRef;
  let small: VolumeRef;

  before(async () => {
    sb = await startAzureCompute({ regions: [EAST, WEST] });
    p = (await openPlatform('azure', { ...sb.config })) as AzurePlatform;
    east = sb.resourceGroups[EAST]!;
    west = sb.resourceGroups[WEST]!;
    await sb.emulator.createDisk(east, 'db', EAST, SIZE);
    // Fully written disk: random data everywhere.
    for (let off = 0; off < SIZE; off += 8 << 20)
      await sb.emulator.writeDisk(east, 'db', off, crypto.randomBytes(8 << 20));
    await sb.emulator.createDisk(east, 'small', EAST, SMALL);
    await sb.emulator.writeDisk(east, 'small', 0, crypto.randomBytes(SMALL));
    const vols = await p.listVolumes(EAST);
    vol = vols.find((v) => v.name === 'db')!;
    small = vols.find((v) => v.name === 'small')!;
    assert.equal(vol.sizeBytes, SIZE);
  });
  after(async () => {
    await sb?.stop();
  });

  const vhds = async (): Promise<string[]> => {
    const acct = sb.storageAccounts[WEST]!;
    const c = new BlobServiceClient(
      `${sb.emulator.blobEndpoint}/${acct.name}`,
      new StorageSharedKeyCredential(acct.name, acct.key),
    ).getContainerClient(VHD_CONTAINER);
    if (!(await c.exists())) return [];
    const out: string[] = [];
    for await (const b of c.listBlobsFlat()) out.push(b.name);
    return out;
  };

  /** Reads a snapshot through the platform (grantAccess SAS on the snapshot, revoked on close). */
  const readViaSas = async (s: SnapshotRef): Promise<Buffer> => {
    const rd = await p.openSnapshot(s);
    try {
      const parts: Buffer[] = [];
      for (let off = 0; off < rd.size; off += 8 << 20) parts.push(await rd.read(off, 8 << 20));
      return Buffer.concat(parts);
    } finally {
      await rd.close();
    }
  };

  /** ~1% of the disk rewritten in 4 KiB blocks scattered over it. */
  const changeOnePercent = async (disk = 'db', size = SIZE): Promise<number> => {
    const blocks = Math.max(40, Math.round((size * 0.01) / 4096));
    const stride = Math.floor(size / blocks / 4096) * 4096;
    for (let i = 0; i < blocks; i++)
      await sb.emulator.writeDisk(east, disk, i * stride + ((i * 7) % 3) * 512, crypto.randomBytes(4096));
    return blocks * 4096;
  };

  let smallCopy: { snap: SnapshotRef; source: SnapshotRef } | undefined;

  test('full copy by the VHD path, then an incremental copy of a 1% change moves <= 5% of the bytes', async (t) => {
    const s1 = await p.snapshot(vol, { tags: { app: 'shop' } });
    assert.equal(s1.details?.['incremental'], 'true');
    let t0 = performance.now();
    const c1 = await p.copySnapshot(s1, WEST);
    const fullMs = performance.now() - t0;
    assert.equal(c1.incremental, false);
    assert.equal(c1.snapshot.region, WEST);
    assert.equal(c1.snapshot.details?.['method'], 'Import');
    assert.equal(c1.bytesTransferred, SIZE);
    assert.deepEqual(await vhds(), [], 'staging VHD deleted');
    assert.equal(sb.emulator.activeGrants(), 0, 'every SAS revoked');
    const v1 = await sb.emulator.readDisk(east, 'db');
    assert.ok((await readViaSas(c1.snapshot)).equals(v1), 'DR copy equals the disk at snapshot time');

    const changed = await changeOnePercent();
    const s2 = await p.snapshot(vol);
    const cr = await p.changedRanges(s1, s2);
    assert.equal(cr.method, 'page-ranges');
    const covered = cr.ranges.reduce((n, r) => n + r.length, 0);
    assert.ok(
      covered >= changed && covered <= changed * 1.5,
      `diff covers ${covered} for ${changed} written`,
    );

    const out0 = sb.emulator.stats.blobBytesOut;
    t0 = performance.now();
    const c2 = await p.copySnapshot(s2, WEST, { previousCopy: c1.snapshot });
    const incMs = performance.now() - t0;
    const frontOut = sb.emulator.stats.blobBytesOut - out0;
    assert.equal(c2.incremental, true);
    assert.equal(c2.snapshot.parentId, c1.snapshot.id);
    assert.ok(
      c2.bytesTransferred <= c1.bytesTransferred * 0.05,
      `incremental moved ${c2.bytesTransferred} of ${c1.bytesTransferred}`,
    );
    // Nearby changed ranges are read as one piece (gaps under 64 KiB joined): the count is what was read.
    assert.ok(
      c2.bytesTransferred >= covered && c2.bytesTransferred <= covered * 1.5,
      `incremental reported ${c2.bytesTransferred} for ${covered} changed`,
    );
    assert.ok(
      frontOut >= c2.bytesTransferred && frontOut <= c2.bytesTransferred + (256 << 10),
      `reported ${c2.bytesTransferred}, read through the blob front ${frontOut}`,
    );
    const v2 = await sb.emulator.readDisk(east, 'db');
    assert.ok(
      (await readViaSas(c2.snapshot)).equals(v2),
      'incremental DR copy equals the disk byte for byte',
    );
    assert.deepEqual(await vhds(), []);
    assert.equal(sb.emulator.activeGrants(), 0);
    const westList = await p.listSnapshots({ ...vol, id: `${WEST}/db`, region: WEST });
    assert.deepEqual(
      westList.map((s) => s.id),
      [c1.snapshot.id, c2.snapshot.id],
    );
    t.diagnostic(
      `AZURE full VHD copy ${SIZE >> 20} MiB: ${c1.bytesTransferred} bytes in ${fullMs.toFixed(0)} ms; ` +
        `incremental (1% changed, ${changed} bytes written): ${c2.bytesTransferred} bytes (${((100 * c2.bytesTransferred) / c1.bytesTransferred).toFixed(2)}%) in ${incMs.toFixed(0)} ms; ` +
        `bytes read through the blob front during it (incl. the same-region clone): ${frontOut}`,
    );

    // A restored disk at DR has the data.
    const restored = await p.restoreVolume(c2.snapshot, { name: 'db' });
    assert.equal(restored.region, WEST);
    assert.ok((await sb.emulator.readDisk(west, 'db')).equals(v2));
    await assert.rejects(p.restoreVolume(c2.snapshot, { name: 'db' }), ConflictError);
  });

  test('an access SAS that expires in the middle of a copy is granted again and the copy goes on', async () => {
    const s0 = await p.snapshot(small);
    const c0 = await p.copySnapshot(s0, WEST);
    smallCopy = { snap: c0.snapshot, source: s0 };
    await changeOnePercent('small', SMALL);
    const s3 = await p.snapshot(small);
    const grants0 = sb.emulator.stats.grants;
    let expired = 0;
    const c3 = await p.copySnapshot(s3, WEST, {
      previousCopy: c0.snapshot,
      baseSnapshot: s0,
      onProgress: (pr) => {
        if (pr.phase === 'copy' && pr.bytesRead > 0 && expired === 0) {
          expired++;
          sb.emulator.expireAccess();
        }
      },
    });
    assert.equal(expired, 1);
    // source + base + previous copy, then at least one re-grant of the source.
    assert.ok(sb.emulator.stats.grants - grants0 >= 4, `grants: ${sb.emulator.stats.grants - grants0}`);
    assert.ok((await readViaSas(c3.snapshot)).equals(await sb.emulator.readDisk(east, 'small')));

    // Full path: the SAS dies before the server-side copy reads it.
    const s4 = await p.snapshot(small);
    let once = false;
    const g4 = sb.emulator.stats.grants;
    const c4 = await p.copySnapshot(s4, WEST, {
      onProgress: () => {
        if (!once) {
          once = true;
          sb.emulator.expireAccess();
        }
      },
    });
    assert.equal(sb.emulator.stats.grants - g4, 2, 'granted, refused, granted again');
    assert.ok((await readViaSas(c4.snapshot)).equals(await sb.emulator.readDisk(east, 'small')));
    assert.deepEqual(await vhds(), []);
    await p.deleteSnapshot(c4.snapshot);
    await p.deleteSnapshot(c3.snapshot);
  });

  test('429 with Retry-After is waited out', async () => {
    const before = sb.emulator.stats.throttled;
    sb.emulator.injectThrottling(2, 1);
    const t0 = performance.now();
    const s = await p.snapshot(small);
    const ms = performance.now() - t0;
    assert.equal(sb.emulator.stats.throttled - before, 2);
    assert.ok(ms >= 1900, `waited ${ms.toFixed(0)} ms for two Retry-After: 1`);
    await p.deleteSnapshot(s);
  });

  test('a missing role at DR fails with the role and scope, and leaves nothing behind', async () => {
    const scope = `/subscriptions/${sb.subscription}/resourceGroups/${west}`;
    sb.emulator.setRoles(sb.clientId, scope, ['Reader']);
    try {
      const s = await p.snapshot(small);
      let progressed = false;
      const err = await p.copySnapshot(s, WEST, { onProgress: () => (progressed = true) }).then(
        () => assert.fail('copy should be refused'),
        (e: unknown) => e,
      );
      assert.ok(err instanceof ForbiddenError, String(err));
      assert.match(err.message, /Disk Snapshot Contributor/);
      assert.ok(err.message.includes(scope), err.message);
      assert.equal(progressed, false, 'refused before any byte moved');
      const text = describeError(err);
      assert.ok(!text.includes(sb.clientSecret) && !text.includes('sig='), 'no secret or SAS in the error');
      assert.deepEqual(await vhds(), []);
      assert.equal(sb.emulator.activeGrants(), 0);
      await p.deleteSnapshot(s);
    } finally {
      sb.emulator.setRoles(sb.clientId, scope, ['Disk Snapshot Contributor', 'Virtual Machine Contributor']);
    }
  });

  test('deleting a snapshot with an active SAS is a conflict', async () => {
    const s = await p.snapshot(small);
    const rd = await p.openSnapshot(s);
    await assert.rejects(p.deleteSnapshot(s), ConflictError);
    await rd.close();
    await p.deleteSnapshot(s);
  });

  test('a cancelled copy leaves no DR snapshot, no VHD and no SAS; a retry then succeeds', async () => {
    assert.ok(smallCopy, 'needs the SAS test');
    await changeOnePercent('small', SMALL);
    const s = await p.snapshot(small);
    const ac = new AbortController();
    await assert.rejects(
      p.copySnapshot(s, WEST, {
        previousCopy: smallCopy.snap,
        baseSnapshot: smallCopy.source,
        signal: ac.signal,
        onProgress: (pr) => {
          if (pr.phase === 'copy' && pr.bytesRead > 0) ac.abort();
        },
      }),
      CancelledError,
    );
    const name = `${s.details!['name']}-${WEST}`;
    assert.ok(!sb.emulator.list('snapshots', west).some((x) => x.name === name));
    assert.deepEqual(await vhds(), []);
    assert.equal(sb.emulator.activeGrants(), 0);
    const c = await p.copySnapshot(s, WEST, { previousCopy: smallCopy.snap, baseSnapshot: smallCopy.source });
    assert.equal(c.incremental, true);
    assert.ok((await readViaSas(c.snapshot)).equals(await sb.emulator.readDisk(east, 'small')));
    await p.deleteSnapshot(c.snapshot);
  });

  test('a base snapshot of another disk makes the copy a full one, still correct', async () => {
    assert.ok(smallCopy);
    const other = await p.snapshot(vol);
    const s = await p.snapshot(small);
    const c = await p.copySnapshot(s, WEST, { previousCopy: smallCopy.snap, baseSnapshot: other });
    assert.equal(c.incremental, false);
    assert.equal(c.bytesTransferred, SMALL);
    assert.ok((await readViaSas(c.snapshot)).equals(await sb.emulator.readDisk(east, 'small')));
    await p.deleteSnapshot(c.snapshot);
    await p.deleteSnapshot(other);
  });

  test('a copy killed in the middle is cleaned up by the retry', async () => {
    const s = await p.snapshot(small);
    sb.emulator.setLroDelay(3000);
    const child = spawn(
      process.execPath,
      [path.resolve(import.meta.dirname, '../emulators/azure-compute/copy-child.ts')],
      {
        env: {
          ...process.env,
          TERN_AZ_CONFIG: JSON.stringify(sb.config),
          TERN_AZ_SNAPSHOT: JSON.stringify(s),
          TERN_AZ_TO: WEST,
        },
        stdio: ['ignore', 'pipe', 'inherit'],
      },
    );
    const exited = new Promise((r) => child.once('exit', r));
    // Kill once the VHD is staged (the import is then held by the LRO delay).
    let out = '';
    await new Promise<void>((resolve, reject) => {
      child.stdout.on('data', (d: Buffer) => {
        out += d.toString();
        if (out.includes(`"bytesTransferred":${SMALL}`)) resolve();
      });
      child.once('exit', () => reject(new Error(`child ended before staging: ${out}`)));
    });
    await new Promise((r) => setTimeout(r, 500));
    child.kill('SIGKILL');
    await exited;
    sb.emulator.setLroDelay(0);
    assert.ok((await vhds()).length > 0, 'the killed copy left its VHD');
    const c = await p.copySnapshot(s, WEST);
    assert.deepEqual(await vhds(), [], 'retry removed the leftover VHD');
    const name = `${s.details!['name']}-${WEST}`;
    assert.equal(sb.emulator.list('snapshots', west).filter((x) => x.name === name).length, 1);
    assert.ok((await readViaSas(c.snapshot)).equals(await sb.emulator.readDisk(east, 'small')));
  });

  test('copyMode copystart: Azure copies incremental snapshots across regions, only changes the second time', async (t) => {
    const cs = new AzurePlatform({ ...sb.config, copyMode: 'copystart' });
    const s1 = await cs.snapshot(vol);
    const x0 = sb.emulator.stats.crossRegionBytes;
    const c1 = await cs.copySnapshot(s1, WEST);
    const first = sb.emulator.stats.crossRegionBytes - x0;
    assert.equal(c1.snapshot.details?.['method'], 'CopyStart');
    assert.ok((await readViaSas(c1.snapshot)).equals(await sb.emulator.readDisk(east, 'db')));
    await changeOnePercent();
    const s2 = await cs.snapshot(vol);
    const x1 = sb.emulator.stats.crossRegionBytes;
    const c2 = await cs.copySnapshot(s2, WEST, { previousCopy: c1.snapshot });
    const second = sb.emulator.stats.crossRegionBytes - x1;
    assert.equal(c2.incremental, true);
    assert.ok((await readViaSas(c2.snapshot)).equals(await sb.emulator.readDisk(east, 'db')));
    assert.ok((await readViaSas(c1.snapshot)).length === SIZE);
    assert.equal(first, SIZE);
    assert.ok(second <= first * 0.05, `CopyStart moved ${second} of ${first}`);
    t.diagnostic(`AZURE CopyStart: first ${first} bytes, after a 1% change ${second} bytes (emulator count)`);
  });

  test('location profile validation: page blobs and the DR region', async () => {
    assert.equal(supportsPageBlobs('StorageV2', 'Standard_LRS'), true);
    assert.equal(supportsPageBlobs('BlockBlobStorage', 'Premium_LRS'), false);
    assert.equal(supportsPageBlobs('BlobStorage', 'Standard_LRS'), false);
    assert.deepEqual(
      locationProblems({ name: 'a', location: 'West US', kind: 'StorageV2', sku: 'Standard_ZRS' }, WEST),
      [],
    );
    assert.match(
      locationProblems({ name: 'a', location: EAST, kind: 'StorageV2', sku: 'Standard_LRS' }, WEST).join(),
      /not in the DR region/,
    );
    const facts = await p.validateTarget(WEST);
    assert.equal(facts.location, WEST);
    // A target whose staging account sits in the source region is refused before any copy.
    const wrong = new AzurePlatform({
      ...sb.config,
      targets: {
        [WEST]: {
          ...sb.config.targets![WEST]!,
          storageAccount: sb.storageAccounts[EAST]!.name,
          accountKey: sb.storageAccounts[EAST]!.key,
          storageResourceGroup: east,
        },
      },
    });
    await assert.rejects(
      wrong.validateTarget(WEST),
      (e: unknown) => e instanceof InputError && /DR region/.test(e.message),
    );
    // Profiles -> config: the secret comes from secrets only.
    const cfg = azureConfigFromProfiles(
      {
        settings: { tenant: 't', clientId: 'c', subscription: 's', resourceGroup: 'rg', region: EAST },
        secrets: { clientSecret: 'shh' },
      },
      [
        {
          settings: { region: WEST, resourceGroup: 'dr', storageAccount: 'drvhd' },
          secrets: { accountKey: 'k' },
        },
      ],
    );
    assert.equal(cfg.targets[WEST]?.storageAccount, 'drvhd');
    assert.throws(() => azureConfigFromProfiles({ settings: { tenant: 't' }, secrets: {} }), InputError);
  });
});

test('startAzureSandbox (for the demo) starts its own Azurite and serves the real SDK', async () => {
  const sb = await startAzureSandbox({ regions: ['northeurope', 'westeurope'] });
  try {
    const p = new AzurePlatform(sb.config);
    const rg = sb.resourceGroups['northeurope']!;
    await sb.emulator.createDisk(rg, 'vol', 'northeurope', 1 << 20);
    await sb.emulator.writeDisk(rg, 'vol', 1000, Buffer.from('hello'));
    const [v] = await p.listVolumes('northeurope');
    const s = await p.snapshot(v!);
    const c = await p.copySnapshot(s, 'westeurope');
    const rd = await p.openSnapshot(c.snapshot);
    assert.equal((await rd.read(1000, 5)).toString(), 'hello');
    await rd.close();
    assert.equal((await p.validateTarget('westeurope')).location, 'westeurope');
  } finally {
    await sb.stop();
  }
});
