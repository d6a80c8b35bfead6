/** What a region's filesystem can do: its type, whether it clones files (reflink), btrfs subvolumes. */
import fs from 'node:fs';
import path from 'node:path';
import { run } from './exec.ts';

export type SnapshotMethod = 'btrfs-subvolume' | 'reflink' | 'copy';

export interface RegionCaps {
  fsType: string;
  reflink: boolean;
  btrfs: boolean;
  /** Method used for block volumes (files) and for fs volumes (directories). */
  blockMethod: SnapshotMethod;
  fsMethod: SnapshotMethod;
}

export async function fsType(p: string): Promise<string> {
  return (await run('stat', ['-f', '-c', '%T', p])).trim();
}

/** Tries a forced clone of a tiny file: the only reliable test (XFS without reflink=1, overlay, NFS…). */
export async function probeReflink(dir: string): Promise<boolean> {
  const a = path.join(dir, `.reflink-probe-${process.pid}-${Date.now()}`);
  const b = `${a}.clone`;
  try {
    await fs.promises.writeFile(a, 'tern');
    await fs.promises.copyFile(a, b, fs.constants.COPYFILE_FICLONE_FORCE);
    return true;
  } catch {
    return false;
  } finally {
    await fs.promises.rm(a, { force: true });
    await fs.promises.rm(b, { force: true });
  }
}

export async function detectCaps(dir: string): Promise<RegionCaps> {
  const type = await fsType(dir);
  const reflink = await probeReflink(dir);
  const btrfs = type === 'btrfs';
  return {
    fsType: type,
    reflink,
    btrfs,
    blockMethod: reflink ? 'reflink' : 'copy',
    fsMethod: btrfs ? 'btrfs-subvolume' : reflink ? 'reflink' : 'copy',
  };
}

/** On btrfs a subvolume's root directory has inode 256. */
export async function isBtrfsSubvolume(p: string): Promise<boolean> {
  try {
    const st = await fs.promises.stat(p);
    if (!st.isDirectory() || st.ino !== 256) return false;
    return (await fsType(p)) === 'btrfs';
  } catch {
    return false;
  }
}

/** Removes a file, directory or btrfs subvolume (read-only snapshots cannot be removed with rm). */
export async function removePath(p: string): Promise<void> {
  if (await isBtrfsSubvolume(p)) {
    await run('btrfs', ['subvolume', 'delete', p]);
    return;
  }
  // Subvolumes nested inside a plain directory (a temp dir around a snapshot) go first.
  try {
    const st = await fs.promises.lstat(p);
    if (st.isDirectory()) {
      for (const e of await fs.promises.readdir(p, { withFileTypes: true })) {
        if (e.isDirectory()) await removePath(path.join(p, e.name));
      }
    }
  } catch {
    return;
  }
  await fs.promises.rm(p, { recursive: true, force: true });
}
