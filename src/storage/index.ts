export type * from './types.ts';
export { LocalStore } from './local.ts';
export { openStore, registerStore, type StoreOptions } from './registry.ts';
