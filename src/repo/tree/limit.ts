/** Small concurrency helpers for the tree walkers. */

/** A counting semaphore with a FIFO queue. Never hold a slot while awaiting work that needs another slot. */
export class Semaphore {
  private free: number;
  private readonly waiters: (() => void)[] = [];

  constructor(slots: number) {
    this.free = Math.max(1, slots);
  }

  async acquire(): Promise<void> {
    if (this.free > 0) this.free--;
    else await new Promise<void>((resolve) => this.waiters.push(resolve));
  }

  release(): void {
    const next = this.waiters.shift();
    if (next) next();
    else this.free++;
  }

  async run<T>(fn: () => Promise<T>): Promise<T> {
    await this.acquire();
    try {
      return await fn();
    } finally {
      this.release();
    }
  }
}
