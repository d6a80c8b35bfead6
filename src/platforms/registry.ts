/**
 * Maps an infra profile type to a Platform implementation. Adding a provider is one register line below.
 */
import { InputError } from '../core/index.ts';
import { AwsPlatform, parseAwsConfig } from './aws/index.ts';
import { AzurePlatform, parseAzureConfig } from './azure/index.ts';
import { LocalPlatform } from './local/index.ts';
import type { Platform } from './types.ts';

export type PlatformFactory = (config: Record<string, unknown>) => Promise<Platform>;

const factories = new Map<string, PlatformFactory>();

export function registerPlatform(type: string, factory: PlatformFactory): void {
  factories.set(type, factory);
}

export function platformTypes(): string[] {
  return [...factories.keys()].sort();
}

export async function openPlatform(type: string, config: Record<string, unknown>): Promise<Platform> {
  const f = factories.get(type);
  if (!f) throw new InputError(`unknown platform type "${type}" (known: ${platformTypes().join(', ')})`);
  return f(config);
}

registerPlatform('local', (config) => {
  const regions = config['regions'];
  if (!regions || typeof regions !== 'object' || Array.isArray(regions))
    throw new InputError('local platform config needs regions: { name: "/abs/path" }', {
      details: { field: 'regions' },
    });
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(regions)) {
    if (typeof v !== 'string')
      throw new InputError(`region "${k}" must be a path`, { details: { field: `regions.${k}` } });
    out[k] = v;
  }
  return Promise.resolve(new LocalPlatform({ regions: out }));
});

registerPlatform('azure', (config) => Promise.resolve(new AzurePlatform(parseAzureConfig(config))));
registerPlatform('aws', (config) => Promise.resolve(new AwsPlatform(parseAwsConfig(config))));
