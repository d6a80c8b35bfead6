/**
 * The local platform: regions are directories (ideally separate filesystems) on this host.
 *   <region>/volumes/<name>                      block image (file) or directory tree (btrfs subvolume on btrfs)
 *   <region>/snapshots/<volume>/<id>             snapshot data (reflink clone, read-only btrfs snapshot or copy)
 *   <region>/snapshots/<volume>/<id>.json        sidecar, written last: a snapshot without it does not exist
 * Work in progress lives under `.tmp-*` names and is renamed into place before the sidecar is written,
 * so a killed snapshot or copy never shows up in listSnapshots.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { ConflictError, InputError, NotFoundError, StorageError, throwIfAborted } from '../../core/index.ts';
import type { RunOptions } from '../../core/index.ts';
import type {
  ByteRangeList,
  CopyResult,
  Platform,
  PlatformInfo,
  SnapshotReader,
  SnapshotRef,
  VolumeRef,
} from '../types.ts';
import { copyRanges, sparseCopy } from './copy.ts';
import { run } from './exec.ts';
import { compareRanges, fiemapRanges } from './extents.ts';
import { detectCaps, isBtrfsSubvolume, removePath } from './fsinfo.ts';
import type { RegionCaps, SnapshotMethod } from './fsinfo.ts';
import { syncTree, treeSize } from './treesync.ts';

export interface LocalPlatformOptions {
  regions: Record<string, string>;
}

interface Sidecar {
  version: 1;
  id: string;
  volume: string;
  kind: 'block' | 'fs';
  sizeBytes: number;
  createdAt: string;
  method: SnapshotMethod;
  parentId?: string;
  sourceSnapshotId?: string;
  tags?: Record<string, string>;
}

const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

function checkName(what: string, name: string): void {
  if (!NAME.test(name)) throw new InputError(`invalid ${what} name "${name}"`, { details: { field: what } });
}

function newId(): string {
  return `${new Date().toISOString().replace(/[-:.]/g, '').replace('T', '-').slice(0, 20)}-${crypto.randomBytes(4).toString('hex')}`;
}

async function exists(p: string): Promise<boolean> {
  return fs.promises
    .lstat(p)
    .then(() => true)
    .catch(() => false);
}

async function sameDevice(a: string, b: string): Promise<boolean> {
  const [sa, sb] = await Promise.all([fs.promises.stat(a), fs.promises.stat(b)]);
  return sa.dev === sb.dev;
}

export class LocalPlatform implements Platform {
  readonly provider = 'local';
  readonly regions: Readonly<Record<string, string>>;
  private readonly caps = new Map<string, Promise<RegionCaps>>();

  constructor(options: LocalPlatformOptions) {
    if (Object.keys(options.regions).length === 0)
      throw new InputError('local platform needs at least one region');
    for (const [name, dir] of Object.entries(options.regions)) {
      checkName('region', name);
      if (!path.isAbsolute(dir))
        throw new InputError(`region "${name}" must be an absolute path, got "${dir}"`);
    }
    this.regions = { ...options.regions };
  }

  private root(region: string): string {
    const dir = this.regions[region];
    if (!dir) throw new NotFoundError(`unknown region "${region}"`, { details: { region } });
    return dir;
  }

  private async regionCaps(region: string): Promise<RegionCaps> {
    let c = this.caps.get(region);
    if (!c) {
      const root = this.root(region);
      c = (async () => {
        await fs.promises.mkdir(path.join(root, 'volumes'), { recursive: true });
        await fs.promises.mkdir(path.join(root, 'snapshots'), { recursive: true });
        return detectCaps(root);
      })();
      c.catch(() => this.caps.delete(region));
      this.caps.set(region, c);
    }
    return c;
  }

  private volumePath(region: string, name: string): string {
    checkName('volume', name);
    return path.join(this.root(region), 'volumes', name);
  }

  private snapDir(region: string, volume: string): string {
    checkName('volume', volume);
    return path.join(this.root(region), 'snapshots', volume);
  }

  private parseSnapId(snap: SnapshotRef): { region: string; volume: string; id: string } {
    const parts = snap.id.split('/');
    if (parts.length !== 3) throw new InputError(`not a local snapshot id: "${snap.id}"`);
    const [region, volume, id] = parts as [string, string, string];
    checkName('region', region);
    checkName('volume', volume);
    checkName('snapshot', id);
    return { region, volume, id };
  }

  /** Path of a snapshot's data on this host. */
  snapshotPath(snap: SnapshotRef): string {
    const { region, volume, id } = this.parseSnapId(snap);
    return path.join(this.snapDir(region, volume), id);
  }

  async info(_opts?: RunOptions): Promise<PlatformInfo> {
    const regions = [];
    for (const name of Object.keys(this.regions)) {
      const c = await this.regionCaps(name);
      regions.push({
        name,
        snapshotMethod: c.fsMethod,
        details: {
          path: this.root(name),
          fsType: c.fsType,
          blockMethod: c.blockMethod,
          fsMethod: c.fsMethod,
          reflink: String(c.reflink),
        },
      });
    }
    return { provider: this.provider, regions };
  }

  /** Creates an empty volume (sparse file of sizeBytes, or a directory/subvolume). For tests and the demo. */
  async createVolume(
    region: string,
    name: string,
    spec: { kind: 'block' | 'fs'; sizeBytes?: number },
  ): Promise<VolumeRef> {
    const caps = await this.regionCaps(region);
    const p = this.volumePath(region, name);
    if (await exists(p)) throw new ConflictError(`volume "${name}" already exists in region "${region}"`);
    if (spec.kind === 'block') {
      const size = spec.sizeBytes ?? 0;
      if (!Number.isSafeInteger(size) || size < 0) throw new InputError(`invalid size ${size}`);
      const fh = await fs.promises.open(p, 'wx');
      await fh.truncate(size);
      await fh.close();
    } else if (caps.btrfs) {
      await run('btrfs', ['subvolume', 'create', p]);
    } else {
      await fs.promises.mkdir(p);
    }
    return this.volumeRef(region, name);
  }

  async deleteVolume(volume: VolumeRef): Promise<void> {
    await removePath(this.volumePath(volume.region, volume.name));
  }

  private async volumeRef(region: string, name: string): Promise<VolumeRef> {
    const p = this.volumePath(region, name);
    const st = await fs.promises.stat(p).catch((err: unknown) => {
      throw new NotFoundError(`volume "${name}" not found in region "${region}"`, { cause: err });
    });
    const kind = st.isDirectory() ? 'fs' : 'block';
    return {
      id: `${region}/${name}`,
      region,
      name,
      kind,
      sizeBytes: kind === 'block' ? st.size : await treeSize(p),
    };
  }

  /** A volume path on this host (the datamover reads it directly). */
  volumeDataPath(volume: VolumeRef): string {
    return this.volumePath(volume.region, volume.name);
  }

  async listVolumes(region: string, _opts?: RunOptions): Promise<VolumeRef[]> {
    await this.regionCaps(region);
    const names = (await fs.promises.readdir(path.join(this.root(region), 'volumes'))).filter((n) =>
      NAME.test(n),
    );
    names.sort();
    return Promise.all(names.map((n) => this.volumeRef(region, n)));
  }

  private async writeSidecar(dir: string, car: Sidecar): Promise<void> {
    const tmp = path.join(dir, `.tmp-${car.id}.json`);
    const fh = await fs.promises.open(tmp, 'w');
    await fh.writeFile(JSON.stringify(car, null, 2));
    await fh.sync();
    await fh.close();
    await fs.promises.rename(tmp, path.join(dir, `${car.id}.json`));
    const d = await fs.promises.open(dir, 'r');
    await d.sync().finally(() => d.close());
  }

  private toRef(region: string, car: Sidecar): SnapshotRef {
    const ref: SnapshotRef = {
      id: `${region}/${car.volume}/${car.id}`,
      volumeId: `${region}/${car.volume}`,
      region,
      sizeBytes: car.sizeBytes,
      createdAt: car.createdAt,
      kind: car.kind,
      details: {
        method: car.method,
        ...(car.sourceSnapshotId ? { sourceSnapshotId: car.sourceSnapshotId } : {}),
      },
    };
    if (car.parentId) ref.parentId = car.parentId;
    if (car.tags) for (const [k, v] of Object.entries(car.tags)) ref.details![`tag.${k}`] = v;
    return ref;
  }

  private async readSidecar(region: string, volume: string, id: string): Promise<Sidecar> {
    const file = path.join(this.snapDir(region, volume), `${id}.json`);
    const text = await fs.promises.readFile(file, 'utf8').catch((err: unknown) => {
      throw new NotFoundError(`snapshot "${region}/${volume}/${id}" not found`, { cause: err });
    });
    return JSON.parse(text) as Sidecar;
  }

  async snapshot(
    volume: VolumeRef,
    opts: RunOptions & { tags?: Record<string, string> } = {},
  ): Promise<SnapshotRef> {
    throwIfAborted(opts.signal);
    const caps = await this.regionCaps(volume.region);
    const src = this.volumePath(volume.region, volume.name);
    const v = await this.volumeRef(volume.region, volume.name);
    const dir = this.snapDir(volume.region, volume.name);
    await fs.promises.mkdir(dir, { recursive: true });
    const id = newId();
    const final = path.join(dir, id);
    const tmp = path.join(dir, `.tmp-${id}`);
    let method: SnapshotMethod;
    try {
      if (v.kind === 'block') {
        if (caps.reflink) {
          await fs.promises.copyFile(src, tmp, fs.constants.COPYFILE_FICLONE_FORCE);
          method = 'reflink';
        } else {
          await sparseCopy(src, tmp, { ...opts, phase: 'snapshot' });
          method = 'copy';
        }
        await fs.promises.rename(tmp, final);
      } else if (caps.btrfs && (await isBtrfsSubvolume(src))) {
        // A read-only subvolume snapshot is atomic; the sidecar still decides visibility.
        await run('btrfs', ['subvolume', 'snapshot', '-r', src, final], opts.signal);
        method = 'btrfs-subvolume';
      } else {
        await run('cp', ['-a', caps.reflink ? '--reflink=always' : '--sparse=always', src, tmp], opts.signal);
        await fs.promises.rename(tmp, final);
        method = caps.reflink ? 'reflink' : 'copy';
      }
      throwIfAborted(opts.signal);
      const car: Sidecar = {
        version: 1,
        id,
        volume: volume.name,
        kind: v.kind,
        sizeBytes: v.sizeBytes,
        createdAt: new Date().toISOString(),
        method,
      };
      if (opts.tags) car.tags = opts.tags;
      await this.writeSidecar(dir, car);
      return this.toRef(volume.region, car);
    } catch (err) {
      await removePath(tmp);
      await removePath(final);
      throw err;
    }
  }

  async listSnapshots(volume: VolumeRef, _opts?: RunOptions): Promise<SnapshotRef[]> {
    const dir = this.snapDir(volume.region, volume.name);
    const names = await fs.promises.readdir(dir).catch(() => [] as string[]);
    const out: SnapshotRef[] = [];
    for (const n of names) {
      if (n.startsWith('.') || !n.endsWith('.json')) continue;
      const id = n.slice(0, -5);
      if (!(await exists(path.join(dir, id)))) continue;
      try {
        out.push(this.toRef(volume.region, await this.readSidecar(volume.region, volume.name, id)));
      } catch {
        // unreadable sidecar: not a complete snapshot
      }
    }
    out.sort((a, b) => a.createdAt.localeCompare(b.createdAt) || a.id.localeCompare(b.id));
    return out;
  }

  async deleteSnapshot(snapshot: SnapshotRef, _opts?: RunOptions): Promise<void> {
    const { region, volume, id } = this.parseSnapId(snapshot);
    const dir = this.snapDir(region, volume);
    const car = path.join(dir, `${id}.json`);
    if (!(await exists(car))) throw new NotFoundError(`snapshot "${snapshot.id}" not found`);
    // Sidecar first: from here on the snapshot is gone even if removing the data is interrupted.
    await fs.promises.rm(car);
    await removePath(path.join(dir, id));
  }

  async changedRanges(base: SnapshotRef, target: SnapshotRef, opts: RunOptions = {}): Promise<ByteRangeList> {
    if (base.kind !== 'block' || target.kind !== 'block')
      throw new InputError('changed ranges are only defined for block snapshots');
    const bp = this.snapshotPath(base);
    const tp = this.snapshotPath(target);
    await Promise.all([
      this.readSidecar(...this.sidecarKey(base)),
      this.readSidecar(...this.sidecarKey(target)),
    ]);
    const [bc, tc] = await Promise.all([this.regionCaps(base.region), this.regionCaps(target.region)]);
    // Shared physical extents mean equal data whatever made the files; unshared ones are reported.
    if (bc.reflink && tc.reflink && (await sameDevice(bp, tp))) {
      try {
        return await fiemapRanges(bp, tp, opts);
      } catch (err) {
        if (opts.signal?.aborted) throw err;
        // FIEMAP unsupported here: the comparison below is always correct.
      }
    }
    return compareRanges(bp, tp, opts);
  }

  private sidecarKey(snap: SnapshotRef): [string, string, string] {
    const { region, volume, id } = this.parseSnapId(snap);
    return [region, volume, id];
  }

  async copySnapshot(
    snapshot: SnapshotRef,
    toRegion: string,
    opts: RunOptions & { previousCopy?: SnapshotRef; baseSnapshot?: SnapshotRef } = {},
  ): Promise<CopyResult> {
    const src = this.parseSnapId(snapshot);
    const srcCar = await this.readSidecar(src.region, src.volume, src.id);
    const caps = await this.regionCaps(toRegion);
    if (toRegion === src.region) throw new InputError('copySnapshot needs a different region');
    const srcPath = this.snapshotPath(snapshot);
    const dir = this.snapDir(toRegion, src.volume);
    await fs.promises.mkdir(dir, { recursive: true });
    const id = newId();
    const tmp = path.join(dir, `.tmp-${id}`);
    const final = path.join(dir, id);

    let prev: { ref: SnapshotRef; car: Sidecar; path: string } | undefined;
    if (opts.previousCopy) {
      const p = this.parseSnapId(opts.previousCopy);
      if (p.region !== toRegion) throw new InputError('previousCopy must be in the target region');
      const car = await this.readSidecar(p.region, p.volume, p.id);
      if (car.kind !== srcCar.kind) throw new InputError('previousCopy is of another volume kind');
      prev = { ref: opts.previousCopy, car, path: this.snapshotPath(opts.previousCopy) };
    }
    let base: SnapshotRef | undefined = opts.baseSnapshot;
    if (prev && !base && prev.car.sourceSnapshotId) {
      const b = prev.car.sourceSnapshotId.split('/');
      const key: [string, string, string] = [b[0] ?? '', b[1] ?? '', b[2] ?? ''];
      const car = await this.readSidecar(...key).catch(() => undefined);
      if (car) base = this.toRef(key[0], car);
    }

    let bytesTransferred: number;
    let incremental = false;
    let method: SnapshotMethod = 'copy';
    try {
      if (srcCar.kind === 'block') {
        if (prev && base) {
          // Clone of the previous copy (cheap on reflink filesystems) + the ranges that changed since.
          if (caps.reflink) {
            await fs.promises.copyFile(prev.path, tmp, fs.constants.COPYFILE_FICLONE_FORCE);
            method = 'reflink';
          } else {
            await sparseCopy(prev.path, tmp, { signal: opts.signal, phase: 'clone' });
          }
          const changed = await this.changedRanges(base, snapshot, { signal: opts.signal });
          bytesTransferred = await copyRanges(srcPath, tmp, changed.ranges, { ...opts, phase: 'copy' });
          incremental = true;
        } else {
          bytesTransferred = await sparseCopy(srcPath, tmp, { ...opts, phase: 'copy' });
        }
        await fs.promises.rename(tmp, final);
      } else {
        // fs volumes: a writable clone of the previous copy, then a size+mtime sync of the tree.
        await fs.promises.mkdir(tmp);
        const inner = path.join(tmp, 'data');
        if (prev && caps.btrfs && (await isBtrfsSubvolume(prev.path))) {
          await run('btrfs', ['subvolume', 'snapshot', prev.path, inner], opts.signal);
          incremental = true;
        } else if (prev) {
          await run(
            'cp',
            ['-a', caps.reflink ? '--reflink=always' : '--sparse=always', prev.path, inner],
            opts.signal,
          );
          incremental = true;
        } else if (caps.btrfs) {
          await run('btrfs', ['subvolume', 'create', inner], opts.signal);
        } else {
          await fs.promises.mkdir(inner);
        }
        bytesTransferred = await syncTree(srcPath, inner, opts);
        if (caps.btrfs) {
          // The copy becomes a read-only subvolume like a local snapshot; the temp one is dropped.
          await run('btrfs', ['subvolume', 'snapshot', '-r', inner, final], opts.signal);
          await removePath(tmp);
          method = 'btrfs-subvolume';
        } else {
          await fs.promises.rename(inner, final);
          await removePath(tmp);
          method = caps.reflink && prev ? 'reflink' : 'copy';
        }
      }
      throwIfAborted(opts.signal);
      const car: Sidecar = {
        version: 1,
        id,
        volume: src.volume,
        kind: srcCar.kind,
        sizeBytes: srcCar.sizeBytes,
        createdAt: new Date().toISOString(),
        method,
        sourceSnapshotId: snapshot.id,
      };
      if (prev) car.parentId = prev.ref.id;
      if (srcCar.tags) car.tags = srcCar.tags;
      await this.writeSidecar(dir, car);
      return { snapshot: this.toRef(toRegion, car), bytesTransferred, incremental };
    } catch (err) {
      await removePath(tmp);
      await removePath(final);
      throw err;
    }
  }

  async restoreVolume(
    snapshot: SnapshotRef,
    target: { name: string; region?: string; overwrite?: boolean },
    opts: RunOptions = {},
  ): Promise<VolumeRef> {
    const s = this.parseSnapId(snapshot);
    const car = await this.readSidecar(s.region, s.volume, s.id);
    const region = target.region ?? s.region;
    const caps = await this.regionCaps(region);
    const dst = this.volumePath(region, target.name);
    const srcPath = this.snapshotPath(snapshot);
    if ((await exists(dst)) && !target.overwrite)
      throw new ConflictError(`volume "${target.name}" exists in region "${region}" (use overwrite)`);
    const tmp = path.join(
      this.root(region),
      'volumes',
      `.tmp-${target.name}-${crypto.randomBytes(4).toString('hex')}`,
    );
    const same = await sameDevice(srcPath, path.join(this.root(region), 'volumes'));
    try {
      if (car.kind === 'block') {
        if (same && caps.reflink)
          await fs.promises.copyFile(srcPath, tmp, fs.constants.COPYFILE_FICLONE_FORCE);
        else await sparseCopy(srcPath, tmp, { ...opts, phase: 'restore' });
      } else if (same && caps.btrfs && (await isBtrfsSubvolume(srcPath))) {
        await run('btrfs', ['subvolume', 'snapshot', srcPath, tmp], opts.signal);
      } else if (caps.btrfs) {
        await run('btrfs', ['subvolume', 'create', tmp], opts.signal);
        await syncTree(srcPath, tmp, opts);
      } else {
        await run(
          'cp',
          ['-a', same && caps.reflink ? '--reflink=always' : '--sparse=always', srcPath, tmp],
          opts.signal,
        );
      }
      throwIfAborted(opts.signal);
      if (await exists(dst)) {
        const old = `${tmp}.old`;
        await fs.promises.rename(dst, old);
        await fs.promises.rename(tmp, dst);
        await removePath(old);
      } else {
        await fs.promises.rename(tmp, dst);
      }
    } catch (err) {
      await removePath(tmp);
      if (err instanceof Error && 'code' in err && err.code === 'ENOSPC')
        throw new StorageError('no space left while restoring', { cause: err });
      throw err;
    }
    return this.volumeRef(region, target.name);
  }

  async openSnapshot(snapshot: SnapshotRef, _opts?: RunOptions): Promise<SnapshotReader> {
    const s = this.parseSnapId(snapshot);
    const car = await this.readSidecar(s.region, s.volume, s.id);
    const p = this.snapshotPath(snapshot);
    if (car.kind !== 'block') {
      return {
        size: car.sizeBytes,
        path: p,
        read: () => Promise.reject(new InputError('fs snapshots are read through their path')),
        close: async () => {},
      };
    }
    const fh = await fs.promises.open(p, 'r');
    const size = (await fh.stat()).size;
    return {
      size,
      path: p,
      read: async (offset, length) => {
        const len = Math.max(0, Math.min(length, size - offset));
        const buf = Buffer.alloc(len);
        let done = 0;
        while (done < len) {
          const { bytesRead } = await fh.read(buf, done, len - done, offset + done);
          if (bytesRead === 0) break;
          done += bytesRead;
        }
        return buf.subarray(0, done);
      },
      close: () => fh.close(),
    };
  }
}
