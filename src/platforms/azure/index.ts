export { AzurePlatform, VHD_CONTAINER } from './platform.ts';
export {
  AzurePlatformConfigSchema,
  AzureTargetSchema,
  azureConfigFromProfiles,
  locationProblems,
  parseAzureConfig,
  supportsPageBlobs,
} from './config.ts';
export type { AzurePlatformConfig, AzureTarget, ParsedAzureConfig, StorageAccountFacts } from './config.ts';
export { ClientSecretTokenCredential } from './client.ts';
