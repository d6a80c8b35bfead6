export type * from './types.ts';
export { LocalStore } from './local.ts';
