/**
 * Real btrfs / XFS / ext4 filesystems on loop devices for tests (root only). Each call creates a sparse backing
 * file, attaches it with losetup, formats and mounts it in a temp dir. Cleanup unmounts and detaches,
 * also at process exit when a test failed before its own cleanup ran.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export type LoopFsType = 'btrfs' | 'xfs' | 'ext4';

export interface LoopFs {
  type: LoopFsType;
  mountpoint: string;
  device: string;
  cleanup(): void;
}

const live = new Set<LoopFs>();
let hooked = false;

function sh(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

function hasTool(name: string): boolean {
  try {
    sh('sh', ['-c', `command -v ${name}`]);
    return true;
  } catch {
    return false;
  }
}

/** Why loop filesystems of this type cannot be made here, or null when they can (checked cheaply). */
export function loopFsUnavailable(type: LoopFsType): string | null {
  if (process.platform !== 'linux') return 'loop filesystems need Linux';
  if (process.getuid?.() !== 0) return 'loop filesystems need root (losetup, mount)';
  const mkfs = `mkfs.${type}`;
  for (const t of ['losetup', 'mount', 'umount', mkfs]) if (!hasTool(t)) return `${t} is not installed`;
  return null;
}

/**
 * Creates and mounts a filesystem. Returns { skip: reason } instead when loop devices or mount are not
 * allowed here, so callers can `t.skip(reason)`. XFS needs ≥ 300 MiB; the backing file is sparse.
 */
export function createLoopFs(type: LoopFsType, sizeBytes = 512 << 20): LoopFs | { skip: string } {
  const why = loopFsUnavailable(type);
  if (why) return { skip: why };
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `tern-${type}-`));
  const image = path.join(dir, 'backing.img');
  const mountpoint = path.join(dir, 'mnt');
  fs.mkdirSync(mountpoint);
  fs.writeFileSync(image, '');
  fs.truncateSync(image, sizeBytes);
  let device = '';
  let mounted = false;
  try {
    device = sh('losetup', ['-f', '--show', image]).trim();
    if (type === 'btrfs') sh('mkfs.btrfs', ['-q', '-f', device]);
    else if (type === 'ext4') sh('mkfs.ext4', ['-q', '-F', device]);
    else sh('mkfs.xfs', ['-q', '-f', '-m', 'reflink=1', device]);
    sh('mount', [device, mountpoint]);
    mounted = true;
  } catch (err) {
    if (mounted) tryRun('umount', [mountpoint]);
    if (device) tryRun('losetup', ['-d', device]);
    fs.rmSync(dir, { recursive: true, force: true });
    const e = err as { stderr?: string; message: string };
    return {
      skip: `cannot create a ${type} loop filesystem: ${(e.stderr || e.message).trim().split('\n')[0]}`,
    };
  }
  const loop: LoopFs = {
    type,
    mountpoint,
    device,
    cleanup: () => {
      if (!live.delete(loop)) return;
      detach(mountpoint, device);
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
  live.add(loop);
  if (!hooked) {
    hooked = true;
    process.on('exit', () => {
      for (const l of [...live]) l.cleanup();
    });
  }
  return loop;
}

function tryRun(cmd: string, args: string[]): boolean {
  try {
    sh(cmd, args);
    return true;
  } catch {
    return false;
  }
}

function detach(mountpoint: string, device: string): void {
  // A reader that just closed can keep the fs busy for a moment; retry, then detach lazily.
  let ok = false;
  for (let i = 0; i < 10 && !ok; i++) {
    ok = tryRun('umount', [mountpoint]);
    if (!ok) execFileSync('sleep', ['0.2']);
  }
  if (!ok) tryRun('umount', ['-l', mountpoint]);
  tryRun('losetup', ['-d', device]);
}
