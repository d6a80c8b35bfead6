/**
 * Maps a repository URL to an ObjectStore implementation. Adding a backend is one entry here.
 *   /path or file:///path          → LocalStore
 *   s3://bucket/prefix             → S3Store (endpoint/region/credentials from options or standard AWS env)
 *   azblob://account/container/pfx → AzureBlobStore (key, SAS or connection string; endpoint override for Azurite)
 */
import { InputError } from '../core/index.ts';
import { LocalStore } from './local.ts';
import type { ObjectStore } from './types.ts';

export interface StoreOptions {
  /** S3 */
  s3Endpoint?: string;
  s3Region?: string;
  s3ForcePathStyle?: boolean;
  /** Azure */
  azureEndpoint?: string;
  azureKey?: string;
  azureSas?: string;
  azureConnectionString?: string;
  env?: NodeJS.ProcessEnv;
}

export type StoreFactory = (url: URL, options: StoreOptions) => Promise<ObjectStore>;

const factories = new Map<string, StoreFactory>();

export function registerStore(scheme: string, factory: StoreFactory): void {
  factories.set(scheme, factory);
}

export async function openStore(location: string, options: StoreOptions = {}): Promise<ObjectStore> {
  if (!/^[a-z][a-z0-9+.-]*:\/\//i.test(location)) return new LocalStore(location);
  let url: URL;
  try {
    url = new URL(location);
  } catch (err) {
    throw new InputError(`invalid repository URL "${location}"`, { cause: err });
  }
  const scheme = url.protocol.replace(/:$/, '');
  if (scheme === 'file') return new LocalStore(decodeURIComponent(url.pathname));
  const factory = factories.get(scheme);
  if (!factory)
    throw new InputError(
      `unsupported repository URL scheme "${scheme}" (use a path, s3://bucket/prefix or azblob://account/container/prefix)`,
    );
  return factory(url, options);
}
