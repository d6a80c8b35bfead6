/** Local platform on real btrfs and XFS loop filesystems and a plain directory: methods, FIEMAP, fs volumes. */
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';
import { InputError } from '../../src/core/index.ts';
import { LocalPlatform, openPlatform } from '../../src/platforms/index.ts';
import { createLoopFs } from '../harness/loopfs.ts';

const SIZE = 32 << 20;

async function writeAt(file: string, parts: { offset: number; data: Buffer }[]): Promise<void> {
  const fh = await fs.promises.open(file, 'r+');
  for (const p of parts) await fh.write(p.data, 0, p.data.length, p.offset);
  await fh.close();
}

for (const type of ['btrfs', 'xfs'] as const) {
  describe(`local platform on ${type}`, () => {
    test('reports its methods, FIEMAP finds a 1% change, fs volumes snapshot and copy', async (t) => {
      const a = createLoopFs(type);
      if ('skip' in a) return t.skip(a.skip);
      const b = createLoopFs(type);
      if ('skip' in b) {
        a.cleanup();
        return t.skip(b.skip);
      }
      try {
        const p = new LocalPlatform({ regions: { east: a.mountpoint, west: b.mountpoint } });
        const info = await p.info();
        for (const r of info.regions) {
          assert.equal(r.details?.fsType, type);
          assert.equal(r.details?.blockMethod, 'reflink');
          assert.equal(r.snapshotMethod, type === 'btrfs' ? 'btrfs-subvolume' : 'reflink');
        }

        const v = await p.createVolume('east', 'disk', { kind: 'block', sizeBytes: SIZE });
        await writeAt(p.volumeDataPath(v), [{ offset: 0, data: crypto.randomBytes(SIZE) }]);
        const s1 = await p.snapshot(v);
        assert.equal(s1.details?.method, 'reflink');
        // 1% scattered: 82 writes of 4 KiB.
        const changes = Array.from({ length: Math.round(SIZE / 100 / 4096) }, (_, i) => ({
          offset: Math.floor(((i + 0.5) * SIZE) / 82 / 4096) * 4096,
          data: crypto.randomBytes(4096),
        }));
        await writeAt(p.volumeDataPath(v), changes);
        const s2 = await p.snapshot(v);
        const cr = await p.changedRanges(s1, s2);
        assert.equal(cr.method, 'fiemap');
        const covered = cr.ranges.reduce((n, r) => n + r.length, 0);
        const changed = changes.length * 4096;
        assert.ok(covered >= changed, `ranges ${covered} < changed ${changed}`);
        assert.ok(covered <= changed * 4, `ranges ${covered} vs changed ${changed}: not ~1%`);
        for (const ch of changes)
          assert.ok(cr.ranges.some((r) => r.offset <= ch.offset && ch.offset + 4096 <= r.offset + r.length));

        const c1 = await p.copySnapshot(s1, 'west');
        const c2 = await p.copySnapshot(s2, 'west', { previousCopy: c1.snapshot });
        assert.ok(
          c2.bytesTransferred <= c1.bytesTransferred * 0.05,
          `${c2.bytesTransferred} vs ${c1.bytesTransferred}`,
        );
        // The incremental copy was a clone + ranges: in west it shares extents with the first copy.
        const wr = await p.changedRanges(c1.snapshot, c2.snapshot);
        assert.equal(wr.method, 'fiemap');
        assert.ok(wr.ranges.reduce((n, r) => n + r.length, 0) <= changed * 4);
        const restored = await p.restoreVolume(c2.snapshot, { name: 'disk' });
        assert.ok(
          (await fs.promises.readFile(p.volumeDataPath(restored))).equals(
            await fs.promises.readFile(p.volumeDataPath(v)),
          ),
        );

        // fs volumes: btrfs subvolume (read-only snapshot) or reflinked tree.
        const f = await p.createVolume('east', 'files', { kind: 'fs' });
        const root = p.volumeDataPath(f);
        await fs.promises.mkdir(path.join(root, 'sub'));
        await fs.promises.writeFile(path.join(root, 'sub', 'a.txt'), 'alpha');
        await fs.promises.symlink('sub/a.txt', path.join(root, 'link'));
        const fs1 = await p.snapshot(f);
        assert.equal(fs1.details?.method, type === 'btrfs' ? 'btrfs-subvolume' : 'reflink');
        if (type === 'btrfs')
          await assert.rejects(
            fs.promises.writeFile(path.join(p.snapshotPath(fs1), 'x'), 'no'),
            /EROFS|read-only/i,
          );
        const fc1 = await p.copySnapshot(fs1, 'west');
        await fs.promises.writeFile(path.join(root, 'b.txt'), 'beta');
        await fs.promises.rm(path.join(root, 'sub', 'a.txt'));
        const fs2 = await p.snapshot(f);
        const fc2 = await p.copySnapshot(fs2, 'west', { previousCopy: fc1.snapshot });
        assert.equal(fc2.incremental, true);
        assert.equal(fc2.bytesTransferred, 4);
        const fr = await p.restoreVolume(fc2.snapshot, { name: 'files' });
        const dst = p.volumeDataPath(fr);
        assert.equal(await fs.promises.readFile(path.join(dst, 'b.txt'), 'utf8'), 'beta');
        assert.equal(fs.existsSync(path.join(dst, 'sub', 'a.txt')), false);
        assert.equal(await fs.promises.readlink(path.join(dst, 'link')), 'sub/a.txt');
        await p.deleteSnapshot(fs1);
        assert.equal((await p.listSnapshots(f)).length, 1);
      } finally {
        a.cleanup();
        b.cleanup();
      }
    });
  });
}

test('plain directory: copy method, compare ranges, half-written copies are invisible, registry', async () => {
  const dir = await fs.promises.mkdtemp(path.join(os.tmpdir(), 'tern-plat-'));
  try {
    const p = await openPlatform('local', {
      regions: { east: path.join(dir, 'e'), west: path.join(dir, 'w') },
    });
    assert.ok(p instanceof LocalPlatform);
    await assert.rejects(openPlatform('nope', {}), InputError);
    await assert.rejects(openPlatform('local', { regions: 'x' }), InputError);
    const info = await p.info();
    if (info.regions[0]!.details?.reflink === 'false') assert.equal(info.regions[0]!.snapshotMethod, 'copy');
    const v = await p.createVolume('east', 'd', { kind: 'block', sizeBytes: 8 << 20 });
    await writeAt(p.volumeDataPath(v), [{ offset: 1 << 20, data: crypto.randomBytes(1 << 20) }]);
    const s1 = await p.snapshot(v);
    await writeAt(p.volumeDataPath(v), [{ offset: (1 << 20) + 5000, data: Buffer.from('changed') }]);
    const s2 = await p.snapshot(v);
    const cr = await p.changedRanges(s1, s2);
    if (cr.method === 'compare') assert.deepEqual(cr.ranges, [{ offset: (1 << 20) + 4096, length: 4096 }]);
    // Sparse-aware: the 7 MiB of zeros are not copied.
    const c1 = await p.copySnapshot(s1, 'west');
    assert.equal(c1.bytesTransferred, 1 << 20);
    // A copy killed before its sidecar: data present, no sidecar; a temp dir from another kill.
    const wdir = path.join(dir, 'w', 'snapshots', 'd');
    await fs.promises.copyFile(p.snapshotPath(s2), path.join(wdir, '20990101-000000000Z-deadbeef'));
    await fs.promises.writeFile(path.join(wdir, '.tmp-20990101-000000000Z-cafecafe'), 'half');
    const listed = await p.listSnapshots({ ...v, id: 'west/d', region: 'west' });
    assert.deepEqual(
      listed.map((s) => s.id),
      [c1.snapshot.id],
    );
    await assert.rejects(p.snapshot({ ...v, name: '../x' }), InputError);

    // Directory volumes on a plain directory: copied trees, incremental sync by size+mtime.
    const lp = p as LocalPlatform;
    const f = await lp.createVolume('east', 'tree', { kind: 'fs' });
    const root = lp.volumeDataPath(f);
    await fs.promises.writeFile(path.join(root, 'a'), 'alpha');
    const f1 = await lp.snapshot(f);
    const fc1 = await lp.copySnapshot(f1, 'west');
    assert.equal(fc1.bytesTransferred, 5);
    await fs.promises.writeFile(path.join(root, 'b'), 'beta');
    const f2 = await lp.snapshot(f);
    const fc2 = await lp.copySnapshot(f2, 'west', { previousCopy: fc1.snapshot });
    assert.equal(fc2.bytesTransferred, 4);
    const fr = await lp.restoreVolume(fc2.snapshot, { name: 'tree' });
    assert.deepEqual((await fs.promises.readdir(lp.volumeDataPath(fr))).sort(), ['a', 'b']);
    assert.equal(fr.sizeBytes, 9);
  } finally {
    await fs.promises.rm(dir, { recursive: true, force: true });
  }
});
