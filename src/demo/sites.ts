/**
 * Sites for the demo, each on its own filesystem: a btrfs filesystem in a sparse loop file when this host
 * allows it (root, losetup, mkfs.btrfs), else a plain directory (with a notice). `destroy()` is the disaster:
 * unmount, detach and delete, so nothing of the site survives.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

export interface Site {
  name: string;
  /** Root directory of the site (a mountpoint for a loop filesystem). */
  path: string;
  fsType: string;
  loop: boolean;
  /** Loop device backing the site, when there is one. */
  device?: string;
  destroy(): void;
}

function sh(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

function tryRun(cmd: string, args: string[]): boolean {
  try {
    sh(cmd, args);
    return true;
  } catch {
    return false;
  }
}

/** Why a loop filesystem cannot be used here, or null. */
export function loopUnavailable(): string | null {
  if (process.platform !== 'linux') return 'not Linux';
  if (process.getuid?.() !== 0) return 'not root';
  for (const t of ['losetup', 'mount', 'umount', 'mkfs.btrfs'])
    if (!tryRun('sh', ['-c', `command -v ${t}`])) return `${t} is not installed`;
  return null;
}

const live = new Set<Site>();
let hooked = false;

function track(site: Site): Site {
  live.add(site);
  if (!hooked) {
    hooked = true;
    process.on('exit', () => {
      for (const s of [...live]) s.destroy();
    });
  }
  return site;
}

/** Forget a site at exit (for --keep). */
export function keepSite(site: Site): void {
  live.delete(site);
}

export function createSite(
  workDir: string,
  name: string,
  sizeBytes: number,
  useLoop: boolean,
): { site: Site; notice?: string } {
  const dir = path.join(workDir, name);
  fs.mkdirSync(dir, { recursive: true });
  const why = useLoop ? loopUnavailable() : 'disabled';
  if (!why) {
    const image = path.join(workDir, `${name}.img`);
    fs.writeFileSync(image, '');
    fs.truncateSync(image, sizeBytes);
    let device = '';
    try {
      device = sh('losetup', ['-f', '--show', image]).trim();
      sh('mkfs.btrfs', ['-q', '-f', device]);
      sh('mount', [device, dir]);
      const site: Site = {
        name,
        path: dir,
        fsType: 'btrfs',
        loop: true,
        device,
        destroy: () => {
          if (!live.delete(site)) return;
          let ok = false;
          for (let i = 0; i < 10 && !ok; i++) {
            ok = tryRun('umount', [dir]);
            if (!ok) execFileSync('sleep', ['0.2']);
          }
          if (!ok) tryRun('umount', ['-l', dir]);
          tryRun('losetup', ['-d', device]);
          fs.rmSync(image, { force: true });
          fs.rmSync(dir, { recursive: true, force: true });
        },
      };
      return { site: track(site) };
    } catch (err) {
      if (device) tryRun('losetup', ['-d', device]);
      fs.rmSync(image, { force: true });
      const e = err as { stderr?: string; message: string };
      return {
        site: plainSite(name, dir),
        notice: `site ${name}: no loop filesystem (${(e.stderr || e.message).trim().split('\n')[0]}); using a plain directory`,
      };
    }
  }
  return {
    site: plainSite(name, dir),
    ...(useLoop
      ? {
          notice: `site ${name}: no loop filesystem (${why}); using a plain directory on the same filesystem`,
        }
      : {}),
  };
}

function plainSite(name: string, dir: string): Site {
  const site: Site = {
    name,
    path: dir,
    fsType: 'directory',
    loop: false,
    destroy: () => {
      if (!live.delete(site)) return;
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
  return track(site);
}
