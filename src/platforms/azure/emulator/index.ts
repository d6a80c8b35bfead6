export { ComputeEmulator } from './compute.ts';
export type {
  ComputeEmulatorOptions,
  ComputeEmulatorStats,
  EmulatorPrincipal,
  EmulatorStorageAccount,
} from './compute.ts';
