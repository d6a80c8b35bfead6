/**
 * A tree restore is on disk when it returns (src/repo/tree/flush.ts), checked on a real ext4 on a loop device
 * through the device's own counter of written sectors: ext4 allocates a file's blocks only when writing it
 * back, and below the kernel's dirty thresholds that starts ~30 s after the write, so without the flush
 * (the control) the device has seen almost none of the data when the restore returns.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { restoreTree } from '../../src/repo/tree/index.ts';
import { createLoopFs, loopFsUnavailable } from '../harness/loopfs.ts';
import { backedUp } from '../unit/tree-fixtures.ts';

/** Bytes written to a block device so far (/sys/block/<dev>/stat, field 7: sectors written). */
function writtenBytes(device: string): number {
  const fields = fs
    .readFileSync(`/sys/block/${path.basename(device)}/stat`, 'utf8')
    .trim()
    .split(/\s+/);
  return Number(fields[6]) * 512;
}

const DATA = 24 * 1024 * 1024;

test(
  'a tree restore has its data on the device when it returns; without the flush it has not (control)',
  { skip: loopFsUnavailable('ext4') ?? false },
  async (t) => {
    const loop = createLoopFs('ext4', 256 << 20);
    if ('skip' in loop) return t.skip(loop.skip);
    t.after(() => loop.cleanup());
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-tree-flush-'));
    t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
    const src = path.join(dir, 'src');
    for (let i = 0; i < 96; i++) {
      fs.mkdirSync(path.join(src, `d${i % 8}`), { recursive: true });
      fs.writeFileSync(path.join(src, `d${i % 8}`, `f${i}.bin`), randomBytes(DATA / 96));
    }
    const { repo, tree } = await backedUp(dir, src);
    t.after(() => repo.close());

    const start = writtenBytes(loop.device);
    await restoreTree(repo, tree, path.join(loop.mountpoint, 'unflushed'), { flush: false });
    const unflushed = writtenBytes(loop.device) - start;
    assert.ok(unflushed < DATA / 2, `control: ${unflushed} bytes reached the device without the flush`);

    const before = writtenBytes(loop.device);
    const r = await restoreTree(repo, tree, path.join(loop.mountpoint, 'flushed'));
    const flushed = writtenBytes(loop.device) - before;
    assert.equal(r.files, 96);
    assert.deepEqual(r.warnings, []);
    assert.ok(flushed >= DATA, `${flushed} bytes reached the device, the tree holds ${DATA}`);
  },
);
