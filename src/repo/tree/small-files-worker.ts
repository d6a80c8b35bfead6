/** Worker thread of SmallFileWriter: writes each file of a batch synchronously (see small-files.ts). */
import { parentPort } from 'node:worker_threads';
import { writeSmallFileSync, type SmallFileFailure, type SmallFileJob } from './small-files.ts';

parentPort?.on('message', (m: { seq: number; jobs: SmallFileJob[] }) => {
  const failures: (SmallFileFailure | null)[] = m.jobs.map((job) => {
    try {
      writeSmallFileSync(job);
      return null;
    } catch (err) {
      const e = err as Error & { code?: unknown };
      return { code: typeof e.code === 'string' ? e.code : 'EIO', message: e.message };
    }
  });
  parentPort?.postMessage({ seq: m.seq, failures });
});
