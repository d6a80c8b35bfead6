export * from './errors.ts';
export * from './clock.ts';
export * from './progress.ts';
export * from './units.ts';
export * from './export-details.ts';
export * from './model.ts';
export * from './retention.ts';
