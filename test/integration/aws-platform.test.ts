/** AWS EBS platform against a real moto server (PyPI, scripts/peers.d/20-moto.sh) with the real EC2 client. */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { CreateVolumeCommand, DescribeSnapshotsCommand, DescribeVolumesCommand } from '@aws-sdk/client-ec2';
import { CancelledError, ConflictError, InputError, NotFoundError } from '../../src/core/index.ts';
import type { AwsPlatform } from '../../src/platforms/aws/index.ts';
import { openPlatform, platformTypes } from '../../src/platforms/index.ts';
import type { VolumeRef } from '../../src/platforms/index.ts';
import { motoServerBin, startMoto } from '../harness/moto.ts';
import type { Moto } from '../harness/moto.ts';

const EAST = 'us-east-1';
const WEST = 'us-west-2';

describe(
  'AWS platform (moto, real EC2 client)',
  { skip: motoServerBin() ? false : 'moto not installed' },
  () => {
    let moto: Moto;
    let p: AwsPlatform;
    let vol: VolumeRef;

    before(async () => {
      moto = await startMoto({ region: EAST });
      p = (await openPlatform('aws', {
        regions: [EAST, WEST],
        endpoint: moto.endpoint,
        accessKeyId: moto.accessKeyId,
        secretAccessKey: moto.secretAccessKey,
        pollIntervalMs: 50,
      })) as AwsPlatform;
      const v = await p.ec2(EAST).send(
        new CreateVolumeCommand({
          AvailabilityZone: `${EAST}a`,
          Size: 4,
          TagSpecifications: [{ ResourceType: 'volume', Tags: [{ Key: 'Name', Value: 'db' }] }],
        }),
      );
      vol = (await p.listVolumes(EAST)).find((x) => x.id === v.VolumeId)!;
    });
    after(async () => {
      await moto?.stop();
    });

    test('registered, regions from the config', async () => {
      assert.ok(platformTypes().includes('aws'));
      const info = await p.info();
      assert.deepEqual(
        info.regions.map((r) => r.name),
        [EAST, WEST],
      );
      assert.equal(vol.name, 'db');
      assert.equal(vol.sizeBytes, 4 * 2 ** 30);
      await assert.rejects(openPlatform('aws', { regions: ['mars'] }), InputError);
    });

    test('snapshot, copy to the DR region twice, list, restore, delete', async () => {
      const s1 = await p.snapshot(vol, { tags: { app: 'shop' } });
      assert.equal(s1.region, EAST);
      assert.match(s1.id, /^us-east-1\/snap-/);
      assert.equal(s1.details?.['tag.app'], 'shop');
      const s2 = await p.snapshot(vol);
      assert.deepEqual(
        (await p.listSnapshots(vol)).map((s) => s.id),
        [s1.id, s2.id],
      );

      const c1 = await p.copySnapshot(s1, WEST);
      assert.equal(c1.snapshot.region, WEST);
      assert.equal(c1.incremental, false);
      assert.equal(c1.bytesTransferred, 4 * 2 ** 30);
      assert.equal(c1.snapshot.details?.['sourceSnapshotId'], s1.id);
      const c2 = await p.copySnapshot(s2, WEST, { previousCopy: c1.snapshot });
      assert.equal(c2.incremental, true);
      assert.equal(c2.snapshot.parentId, c1.snapshot.id);
      // The copy really is in the other region, with its lineage recorded by EC2.
      const d = await p
        .ec2(WEST)
        .send(new DescribeSnapshotsCommand({ SnapshotIds: [c2.snapshot.details!['snapshotId']!] }));
      assert.equal(d.Snapshots?.[0]?.State, 'completed');
      const westVol = { ...vol, id: 'x', region: WEST };
      assert.deepEqual(
        (await p.listSnapshots(westVol)).map((s) => s.id),
        [c1.snapshot.id, c2.snapshot.id],
      );
      await assert.rejects(p.copySnapshot(s1, EAST), InputError);

      const r = await p.restoreVolume(c2.snapshot, { name: 'db-restored' });
      assert.equal(r.region, WEST);
      assert.equal(r.sizeBytes, 4 * 2 ** 30);
      const dv = await p.ec2(WEST).send(new DescribeVolumesCommand({ VolumeIds: [r.id] }));
      assert.equal(dv.Volumes?.[0]?.SnapshotId, c2.snapshot.details!['snapshotId']);
      await assert.rejects(p.restoreVolume(c1.snapshot, { name: 'db-restored' }), ConflictError);
      const r2 = await p.restoreVolume(c1.snapshot, { name: 'db-restored', overwrite: true });
      assert.notEqual(r2.id, r.id);
      assert.equal((await p.listVolumes(WEST)).filter((v) => v.name === 'db-restored').length, 1);
      await assert.rejects(p.restoreVolume(c1.snapshot, { name: 'x', region: EAST }), InputError);

      await p.deleteSnapshot(s1);
      assert.deepEqual(
        (await p.listSnapshots(vol)).map((s) => s.id),
        [s2.id],
      );
      await assert.rejects(p.deleteSnapshot(s1), NotFoundError);
      await assert.rejects(p.copySnapshot(s1, WEST), NotFoundError);
    });

    test('a copy cancelled after EC2 started it is deleted at DR', async () => {
      const s = await p.snapshot(vol);
      const all = async () =>
        (await p.ec2(WEST).send(new DescribeSnapshotsCommand({ OwnerIds: ['self'] }))).Snapshots ?? [];
      const before = (await all()).length;
      const ac = new AbortController();
      let started = false;
      await assert.rejects(
        p.copySnapshot(s, WEST, {
          signal: ac.signal,
          onProgress: () => {
            started = true;
            ac.abort();
          },
        }),
        CancelledError,
      );
      assert.ok(started, 'the copy had started');
      assert.equal((await all()).length, before, 'nothing left in the DR region');
    });
  },
);
