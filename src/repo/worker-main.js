/**
 * Entry of the crypto workers (pool.ts): turns on the compile cache the process uses, if any (bin/tern.js and
 * cli/main.ts enable it), then loads worker.ts. A worker thread does not inherit `module.enableCompileCache()`:
 * without this each worker type-stripped and compiled its modules anew on every run (two workers ready in
 * 96-110 ms with ~190 ms of CPU, with the cache 71-91 ms and ~140 ms).
 *
 * Plain JavaScript, the one module of the workers that is: a TypeScript entry is type-stripped before it can
 * turn the cache on, and that loads Node's TypeScript stripper (amaro) into every worker, ~25 ms of CPU each,
 * even when all the modules it loads next come from the cache (two workers ready 69-76 ms with 126-137 ms of
 * CPU from worker-main.ts, 36-41 ms with 69-72 ms from this file). Nothing to type-check: workerData is
 * `{ compileCacheDir?: string }` (pool.ts).
 */
import module from 'node:module';
import { workerData } from 'node:worker_threads';

const dir = workerData?.compileCacheDir;
if (typeof dir === 'string' && dir) module.enableCompileCache(dir);
await import('./worker.ts');
