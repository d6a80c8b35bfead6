export { LocalPlatform } from './platform.ts';
export type { LocalPlatformOptions } from './platform.ts';
export type { RegionCaps, SnapshotMethod } from './fsinfo.ts';
