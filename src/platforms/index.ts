export type * from './types.ts';
export { openPlatform, registerPlatform, platformTypes } from './registry.ts';
export type { PlatformFactory } from './registry.ts';
export { LocalPlatform } from './local/index.ts';
export type { LocalPlatformOptions } from './local/index.ts';
export {
  AzurePlatform,
  azureConfigFromProfiles,
  locationProblems,
  supportsPageBlobs,
} from './azure/index.ts';
export type { AzurePlatformConfig, AzureTarget } from './azure/index.ts';
export { AwsPlatform } from './aws/index.ts';
export type { AwsPlatformConfig } from './aws/index.ts';
