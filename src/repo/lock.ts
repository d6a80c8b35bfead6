/** Repository locks: `locks/<id>` JSON objects; shared (backup) or exclusive (prune), refreshed, stale after a timeout. */
import crypto from 'node:crypto';
import os from 'node:os';
import type { Clock } from '../core/base.ts';
import { LockedError, systemClock } from '../core/base.ts';
import type { ObjectStore } from '../storage/index.ts';

export interface LockInfo {
  host: string;
  pid: number;
  time: string;
  exclusive: boolean;
}

export const LOCK_STALE_MS = 5 * 60 * 1000;
const REFRESH_MS = 60 * 1000;

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as { code?: string }).code === 'EPERM';
  }
}

export function isStale(l: LockInfo, clock: Clock, staleMs = LOCK_STALE_MS): boolean {
  if (clock.now().getTime() - new Date(l.time).getTime() > staleMs) return true;
  return l.host === os.hostname() && !pidAlive(l.pid);
}

export async function listLocks(store: ObjectStore): Promise<{ key: string; info?: LockInfo }[]> {
  const out: { key: string; info?: LockInfo }[] = [];
  for await (const o of store.list('locks/')) {
    try {
      out.push({ key: o.key, info: JSON.parse((await store.get(o.key)).toString('utf8')) as LockInfo });
    } catch {
      out.push({ key: o.key });
    }
  }
  return out;
}

/** Removes stale locks; returns how many. */
export async function clearStaleLocks(store: ObjectStore, clock: Clock = systemClock): Promise<number> {
  let n = 0;
  for (const l of await listLocks(store)) {
    if (l.info && isStale(l.info, clock)) {
      await store.delete(l.key);
      n++;
    }
  }
  return n;
}

export class RepoLock {
  private timer: NodeJS.Timeout | undefined;
  private readonly store: ObjectStore;
  readonly key: string;
  private readonly info: LockInfo;
  private readonly clock: Clock;

  private constructor(store: ObjectStore, key: string, info: LockInfo, clock: Clock) {
    this.store = store;
    this.key = key;
    this.info = info;
    this.clock = clock;
  }

  static async acquire(
    store: ObjectStore,
    exclusive: boolean,
    clock: Clock = systemClock,
  ): Promise<RepoLock> {
    const conflict = async (own?: string): Promise<void> => {
      for (const l of await listLocks(store)) {
        if (l.key === own || !l.info) continue;
        if (isStale(l.info, clock)) {
          await store.delete(l.key);
          continue;
        }
        if (exclusive || l.info.exclusive) {
          if (own) await store.delete(own);
          throw new LockedError(
            `repository is locked ${l.info.exclusive ? 'exclusively' : ''} by ${l.info.host} pid ${l.info.pid} since ${l.info.time} (${l.key})`.replace(
              '  ',
              ' ',
            ),
            { details: { lock: l.key, host: l.info.host, pid: l.info.pid } },
          );
        }
      }
    };
    await conflict();
    const info: LockInfo = {
      host: os.hostname(),
      pid: process.pid,
      time: clock.now().toISOString(),
      exclusive,
    };
    const key = `locks/${crypto.randomBytes(16).toString('hex')}`;
    await store.put(key, Buffer.from(JSON.stringify(info)));
    // Two lockers may pass the first check at once: re-check after writing ours (both may back off; never both win).
    await conflict(key);
    const lock = new RepoLock(store, key, info, clock);
    lock.timer = setInterval(() => void lock.refresh().catch(() => undefined), REFRESH_MS);
    lock.timer.unref();
    return lock;
  }

  async refresh(): Promise<void> {
    this.info.time = this.clock.now().toISOString();
    await this.store.put(this.key, Buffer.from(JSON.stringify(this.info)));
  }

  async release(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    await this.store.delete(this.key);
  }
}
