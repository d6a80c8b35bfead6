/**
 * One contract for the Platform interface, run against every real implementation.
 * Adding a provider = one entry in `cases` that returns a platform with two regions and a way to make
 * a block volume and write to it (on the provider's own storage).
 */
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { CancelledError, ConflictError } from '../../src/core/index.ts';
import { AzurePlatform, LocalPlatform } from '../../src/platforms/index.ts';
import type { Platform, SnapshotRef, VolumeRef } from '../../src/platforms/index.ts';
import { startAzureCompute } from '../emulators/azure-compute/index.ts';
import { createLoopFs } from '../harness/loopfs.ts';

/** Volumes are megabytes: assert.deepEqual on mismatching buffers builds a diff of every byte (tens of GB). */
function assertSameBytes(actual: Buffer, expected: Buffer, what: string): void {
  if (actual.equals(expected)) return;
  let i = 0;
  while (i < Math.min(actual.length, expected.length) && actual[i] === expected[i]) i++;
  assert.fail(`${what}: differs at byte ${i} (lengths ${actual.length} vs ${expected.length})`);
}

interface Env {
  platform: Platform;
  regions: [string, string];
  createBlockVolume(region: string, name: string, sizeBytes: number): Promise<VolumeRef>;
  write(volume: VolumeRef, offset: number, data: Buffer): Promise<void>;
  readAll(
    snapshotOrVolume: { kind: 'volume'; ref: VolumeRef } | { kind: 'snapshot'; ref: SnapshotRef },
  ): Promise<Buffer>;
  cleanup(): Promise<void>;
}

type Case = { name: string; setup(): Promise<Env | { skip: string }> };

function localEnv(dirs: [string, string], cleanup: () => void | Promise<void>): Env {
  const p = new LocalPlatform({ regions: { east: dirs[0], west: dirs[1] } });
  return {
    platform: p,
    regions: ['east', 'west'],
    createBlockVolume: (region, name, size) =>
      p.createVolume(region, name, { kind: 'block', sizeBytes: size }),
    write: async (v, offset, data) => {
      const fh = await fs.promises.open(p.volumeDataPath(v), 'r+');
      await fh.write(data, 0, data.length, offset);
      await fh.close();
    },
    readAll: async (x) =>
      fs.promises.readFile(x.kind === 'volume' ? p.volumeDataPath(x.ref) : p.snapshotPath(x.ref)),
    cleanup: async () => {
      await cleanup();
    },
  };
}

function loopCase(type: 'btrfs' | 'xfs'): Case {
  return {
    name: `local on ${type}`,
    setup: async () => {
      const a = createLoopFs(type);
      if ('skip' in a) return a;
      const b = createLoopFs(type);
      if ('skip' in b) {
        a.cleanup();
        return b;
      }
      return localEnv([a.mountpoint, b.mountpoint], () => {
        a.cleanup();
        b.cleanup();
      });
    },
  };
}

export const cases: Case[] = [
  loopCase('btrfs'),
  loopCase('xfs'),
  {
    name: 'local on a plain directory',
    setup: async () => {
      const dir = await fs.promises.mkdtemp(path.join(os.tmpdir(), 'tern-plat-'));
      return localEnv([path.join(dir, 'east'), path.join(dir, 'west')], () =>
        fs.promises.rm(dir, { recursive: true, force: true }),
      );
    },
  },
  {
    // Azure compute emulator over Azurite, real SDK; volumes are written like a VM would (emulator.writeDisk).
    // AWS is not here: moto has no EBS data plane to write a volume's blocks or read a snapshot's.
    name: 'azure (compute emulator + Azurite)',
    setup: async () => {
      const sb = await startAzureCompute({ regions: ['eastus', 'westus'] });
      const p = new AzurePlatform(sb.config);
      const rg = (region: string) => sb.resourceGroups[region]!;
      return {
        platform: p,
        regions: ['eastus', 'westus'],
        createBlockVolume: async (region, name, size) => {
          await sb.emulator.createDisk(rg(region), name, region, size);
          return (await p.listVolumes(region)).find((v) => v.name === name)!;
        },
        write: (v, offset, data) => sb.emulator.writeDisk(rg(v.region), v.name, offset, data),
        readAll: (x) =>
          x.kind === 'volume'
            ? sb.emulator.readDisk(rg(x.ref.region), x.ref.name)
            : sb.emulator.readSnapshot(x.ref.details!['resourceGroup']!, x.ref.details!['name']!),
        cleanup: () => sb.stop(),
      };
    },
  },
];

const SIZE = 16 << 20;

/** Random data in 64 KiB islands over half the volume; the rest stays sparse. */
function fillPattern(seed: number): { offset: number; data: Buffer }[] {
  const out = [];
  for (let off = 0; off < SIZE; off += 128 << 10)
    out.push({ offset: off + (seed % 7) * 4096, data: crypto.randomBytes(64 << 10) });
  return out;
}

for (const c of cases) {
  describe(`Platform contract: ${c.name}`, () => {
    let env: Env | undefined;
    let skip: string | undefined;
    const ready = (async () => {
      const r = await c.setup();
      if ('skip' in r) skip = r.skip;
      else env = r;
    })();
    after(async () => {
      await ready;
      await env?.cleanup();
    });

    test('snapshot, changed ranges, incremental copy, restore, delete', async (t) => {
      await ready;
      if (!env) return t.skip(skip);
      const { platform: p, regions } = env;
      const [east, west] = regions;
      const info = await p.info();
      assert.deepEqual(info.regions.map((r) => r.name).sort(), [...regions].sort());

      const v = await env.createBlockVolume(east, 'data', SIZE);
      for (const { offset, data } of fillPattern(1)) await env.write(v, offset, data);
      const s1 = await p.snapshot(v, { tags: { app: 'demo' } });
      assert.equal(s1.kind, 'block');
      assert.equal(s1.sizeBytes, SIZE);
      const v1 = await env.readAll({ kind: 'volume', ref: v });

      // Scattered changes, some inside data, some inside holes, one at the very end.
      const changes = [
        { offset: 4096, data: crypto.randomBytes(100) },
        { offset: (5 << 20) + 70000, data: crypto.randomBytes(5000) },
        { offset: (9 << 20) + (100 << 10), data: crypto.randomBytes(4096) },
        { offset: SIZE - 10, data: crypto.randomBytes(10) },
      ];
      for (const ch of changes) await env.write(v, ch.offset, ch.data);
      const s2 = await p.snapshot(v);
      const v2 = await env.readAll({ kind: 'volume', ref: v });
      assertSameBytes(await env.readAll({ kind: 'snapshot', ref: s1 }), v1, 'first snapshot unchanged');

      const listed = await p.listSnapshots(v);
      assert.deepEqual(
        listed.map((s) => s.id),
        [s1.id, s2.id],
      );

      if (p.changedRanges) {
        const cr = await p.changedRanges(s1, s2);
        for (let i = 0; i < v1.length; i++) {
          if (v1[i] === v2[i]) continue;
          assert.ok(
            cr.ranges.some((r) => r.offset <= i && i < r.offset + r.length),
            `changed byte ${i} not covered (${cr.method})`,
          );
        }
        const covered = cr.ranges.reduce((n, r) => n + r.length, 0);
        assert.ok(covered <= SIZE / 4, `ranges cover ${covered} bytes, too many for 4 small writes`);
      }

      const c1 = await p.copySnapshot(s1, west);
      assert.equal(c1.incremental, false);
      assert.equal(c1.snapshot.region, west);
      assert.ok(c1.bytesTransferred > 0 && c1.bytesTransferred <= SIZE);
      const c2 = await p.copySnapshot(s2, west, { previousCopy: c1.snapshot });
      assert.equal(c2.incremental, true);
      assert.ok(c2.bytesTransferred < c1.bytesTransferred / 4, `incremental moved ${c2.bytesTransferred}`);
      assert.equal(c2.snapshot.parentId, c1.snapshot.id);

      const westVol = { ...v, id: `${west}/data`, region: west };
      const westSnaps = await p.listSnapshots(westVol);
      assert.deepEqual(
        westSnaps.map((s) => s.id),
        [c1.snapshot.id, c2.snapshot.id],
      );

      // Restore at DR from the copies: byte for byte.
      const r2 = await p.restoreVolume(c2.snapshot, { name: 'data' });
      assert.equal(r2.region, west);
      assertSameBytes(await env.readAll({ kind: 'volume', ref: r2 }), v2, 'restore of the incremental copy');
      await assert.rejects(p.restoreVolume(c1.snapshot, { name: 'data' }), ConflictError);
      const r1 = await p.restoreVolume(c1.snapshot, { name: 'data', overwrite: true });
      assertSameBytes(await env.readAll({ kind: 'volume', ref: r1 }), v1, 'restore of the first copy');

      if (p.openSnapshot) {
        const rd = await p.openSnapshot(c2.snapshot);
        try {
          assert.equal(rd.size, SIZE);
          assert.deepEqual(await rd.read(SIZE - 10, 100), changes[3]!.data);
        } finally {
          await rd.close();
        }
      }

      await p.deleteSnapshot(s1);
      assert.deepEqual(
        (await p.listSnapshots(v)).map((s) => s.id),
        [s2.id],
      );
    });

    test('a cancelled copy leaves nothing visible', async (t) => {
      await ready;
      if (!env) return t.skip(skip);
      const { platform: p, regions } = env;
      const v = await env.createBlockVolume(regions[0], 'cancel', SIZE);
      for (const { offset, data } of fillPattern(2)) await env.write(v, offset, data);
      const s = await p.snapshot(v);
      const ac = new AbortController();
      const copy = p.copySnapshot(s, regions[1], {
        signal: ac.signal,
        onProgress: (pr) => {
          if (pr.bytesRead > 0) ac.abort();
        },
      });
      await assert.rejects(copy, CancelledError);
      assert.deepEqual(await p.listSnapshots({ ...v, id: `${regions[1]}/cancel`, region: regions[1] }), []);
    });
  });
}
