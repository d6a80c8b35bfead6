/** Brings directory `dst` to the content of `src` by copying only files whose size or mtime differ. */
import fs from 'node:fs';
import path from 'node:path';
import { throwIfAborted } from '../../core/index.ts';
import type { RunOptions } from '../../core/index.ts';
import { removePath } from './fsinfo.ts';

export async function syncTree(src: string, dst: string, opts: RunOptions = {}): Promise<number> {
  let bytes = 0;
  const walk = async (s: string, d: string): Promise<void> => {
    throwIfAborted(opts.signal);
    const entries = await fs.promises.readdir(s, { withFileTypes: true });
    const seen = new Set<string>();
    for (const e of entries) {
      seen.add(e.name);
      const sp = path.join(s, e.name);
      const dp = path.join(d, e.name);
      const st = await fs.promises.lstat(sp);
      const dt = await fs.promises.lstat(dp).catch(() => null);
      if (dt && (dt.mode & 0o170000) !== (st.mode & 0o170000)) await removePath(dp);
      const have = dt && (dt.mode & 0o170000) === (st.mode & 0o170000) ? dt : null;
      if (st.isDirectory()) {
        if (!have) await fs.promises.mkdir(dp);
        await walk(sp, dp);
        await fs.promises.chmod(dp, st.mode & 0o7777);
        await fs.promises.utimes(dp, st.atimeMs / 1000, st.mtimeMs / 1000);
      } else if (st.isSymbolicLink()) {
        const target = await fs.promises.readlink(sp);
        if (!have || (await fs.promises.readlink(dp)) !== target) {
          await fs.promises.rm(dp, { force: true });
          await fs.promises.symlink(target, dp);
        }
      } else if (st.isFile()) {
        if (!have || have.size !== st.size || Math.abs(have.mtimeMs - st.mtimeMs) >= 1) {
          await fs.promises.rm(dp, { force: true });
          await fs.promises.copyFile(sp, dp);
          bytes += st.size;
          await fs.promises.chmod(dp, st.mode & 0o7777);
          await fs.promises.utimes(dp, st.atimeMs / 1000, st.mtimeMs / 1000);
        }
      }
    }
    for (const name of await fs.promises.readdir(d))
      if (!seen.has(name)) await removePath(path.join(d, name));
  };
  await walk(src, dst);
  opts.onProgress?.({ phase: 'sync', bytesRead: bytes, bytesTransferred: bytes });
  return bytes;
}

export async function treeSize(dir: string): Promise<number> {
  let total = 0;
  for (const e of await fs.promises.readdir(dir, { withFileTypes: true, recursive: true })) {
    if (e.isFile()) total += (await fs.promises.lstat(path.join(e.parentPath, e.name))).size;
  }
  return total;
}
