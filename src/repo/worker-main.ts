/**
 * Entry of the crypto workers (pool.ts): turns on the compile cache the process uses, if any (cli/main.ts
 * enables it), then loads worker.ts. A worker thread does not inherit `module.enableCompileCache()`: without
 * this each worker type-stripped and compiled its modules anew on every run, while scrypt needs the same two
 * cores (two workers ready in 96-110 ms with ~190 ms of CPU, with the cache 71-91 ms and ~140 ms; a 4 MiB
 * restore 0.29-0.32 s -> 0.27-0.28 s).
 */
import module from 'node:module';
import { workerData } from 'node:worker_threads';

const dir = (workerData as { compileCacheDir?: string } | null | undefined)?.compileCacheDir;
if (dir) module.enableCompileCache(dir);
await import('./worker.ts');
