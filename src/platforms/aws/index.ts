export { AwsPlatform, AwsPlatformConfigSchema, parseAwsConfig } from './platform.ts';
export type { AwsPlatformConfig, ParsedAwsConfig } from './platform.ts';
