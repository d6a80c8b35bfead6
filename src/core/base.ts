/**
 * The light part of the core: errors, clock, progress, units and retention, without the policy model and the
 * export-details token (which pull in zod, yaml and cron-parser: ~40 ms of start-up). The datamover (repo,
 * storage) and the repository CLI verbs import from here; everything else may use ./index.ts.
 */
export * from './errors.ts';
export * from './clock.ts';
export * from './progress.ts';
export * from './units.ts';
export * from './retention.ts';
