/**
 * Fires policy runs at their cron times (UTC) on an injected Clock. State is one timestamp per policy in the
 * catalog (`last_run_at`: the scheduled time of the last run), so a restart continues where it stopped.
 * However many scheduled times passed while the engine was down (or busy), a policy gets ONE catch-up run,
 * stamped with the latest missed time. Tests drive it with ManualClock: `advance` then `tick()`.
 */
import { CronExpressionParser } from 'cron-parser';
import type { Clock } from '../core/index.ts';
import { frequencyToCron, type Policy } from '../core/model.ts';
import type { Catalog } from '../catalog/index.ts';

/** The first cron time strictly after `after`. */
export function nextCronTime(cron: string, after: Date): Date {
  return CronExpressionParser.parse(cron, { currentDate: after, tz: 'UTC' }).next().toDate();
}

/** The latest cron time at or before `at`, or undefined when none is after `since`. */
export function latestDue(cron: string, since: Date, at: Date): Date | undefined {
  const first = nextCronTime(cron, since);
  if (first.getTime() > at.getTime()) return undefined;
  // Walk back from `at` (+1 ms so that a time exactly at `at` counts) to the previous fire time.
  const prev = CronExpressionParser.parse(cron, { currentDate: new Date(at.getTime() + 1), tz: 'UTC' })
    .prev()
    .toDate();
  return prev.getTime() > since.getTime() ? prev : first;
}

export interface SchedulerOptions {
  catalog: Catalog;
  clock: Clock;
  /** Starts one policy run; `scheduledAt` is the cron time it stands for. */
  fire: (policy: Policy, scheduledAt: Date) => void;
}

export class Scheduler {
  private readonly catalog: Catalog;
  private readonly clock: Clock;
  private readonly fire: SchedulerOptions['fire'];
  private loop: Promise<void> | undefined;
  private stop: AbortController | undefined;
  private wakeUp: (() => void) | undefined;
  private readonly nextCache = new Map<string, number>();

  constructor(o: SchedulerOptions) {
    this.catalog = o.catalog;
    this.clock = o.clock;
    this.fire = o.fire;
  }

  /** When the policy runs next (undefined when paused). */
  nextRun(policy: Policy, createdAt: string, lastRunAt?: string): Date | undefined {
    if (policy.paused) return undefined;
    return nextCronTime(frequencyToCron(policy.frequency), new Date(lastRunAt ?? createdAt));
  }

  /** Fires every policy that is due now (at most once each). Returns the names fired. */
  tick(): string[] {
    const now = this.clock.now();
    const fired: string[] = [];
    for (const row of this.catalog.listPolicies()) {
      if (row.policy.paused) continue;
      const cron = frequencyToCron(row.policy.frequency);
      const since = new Date(row.lastRunAt ?? row.createdAt);
      // Cache the next fire time per (policy, cron, last run): most ticks find nothing due without parsing cron.
      const key = `${row.policy.name}\0${cron}\0${since.toISOString()}`;
      let next = this.nextCache.get(key);
      if (next === undefined) {
        next = nextCronTime(cron, since).getTime();
        this.nextCache.set(key, next);
      }
      if (next > now.getTime()) continue;
      this.nextCache.delete(key);
      const due = latestDue(cron, since, now);
      if (!due) continue;
      this.catalog.setPolicyLastRun(row.policy.name, due.toISOString());
      this.fire(row.policy, due);
      fired.push(row.policy.name);
    }
    return fired;
  }

  /** Milliseconds until the earliest next run (capped at one hour so clock jumps are noticed). */
  private msToNext(): number {
    const now = this.clock.now().getTime();
    let best = now + 3_600_000;
    for (const row of this.catalog.listPolicies()) {
      const n = this.nextRun(row.policy, row.createdAt, row.lastRunAt);
      if (n && n.getTime() < best) best = n.getTime();
    }
    return Math.max(0, best - now);
  }

  /** Policies changed (created, resumed, frequency edited): recompute the next wake-up. */
  wake(): void {
    this.wakeUp?.();
  }

  start(): void {
    if (this.loop) return;
    const stop = new AbortController();
    this.stop = stop;
    this.loop = (async () => {
      while (!stop.signal.aborted) {
        try {
          this.tick();
        } catch (err) {
          process.emitWarning(`tern scheduler: ${(err as Error).message}`);
        }
        const ms = this.msToNext();
        await new Promise<void>((resolve) => {
          this.wakeUp = resolve;
          stop.signal.addEventListener('abort', () => resolve(), { once: true });
          this.clock.sleep(ms, stop.signal).then(resolve, () => resolve());
        });
        this.wakeUp = undefined;
      }
    })();
  }

  async close(): Promise<void> {
    this.stop?.abort();
    await this.loop;
    this.loop = undefined;
  }
}
