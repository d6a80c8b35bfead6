/** The reconcilers' loop: run a step, log its error, sleep, until stopped. */
import type { Clock } from '../../core/index.ts';
import { describeError } from '../../core/index.ts';

export class PollLoop {
  private readonly step: (signal: AbortSignal) => Promise<unknown>;
  private readonly intervalMs: number;
  private readonly clock: Clock;
  private readonly log: ((message: string) => void) | undefined;
  private readonly label: string;
  private loop: Promise<void> | undefined;
  private ac: AbortController | undefined;

  /** `label` prefixes logged errors; `clock` is what the loop sleeps on. */
  constructor(o: {
    label: string;
    step: (signal: AbortSignal) => Promise<unknown>;
    intervalMs: number;
    clock: Clock;
    log?: (message: string) => void;
  }) {
    this.label = o.label;
    this.step = o.step;
    this.intervalMs = o.intervalMs;
    this.clock = o.clock;
    this.log = o.log;
  }

  start(): void {
    this.ac = new AbortController();
    const signal = this.ac.signal;
    this.loop = (async () => {
      while (!signal.aborted) {
        try {
          await this.step(signal);
        } catch (err) {
          this.log?.(`${this.label}: ${describeError(err)}`);
        }
        await this.clock.sleep(this.intervalMs, signal).catch(() => undefined);
      }
    })();
  }

  async stop(): Promise<void> {
    this.ac?.abort(new Error('stopped'));
    await this.loop;
  }
}
