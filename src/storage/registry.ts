/**
 * Maps a repository URL to an ObjectStore implementation. Adding a backend is one entry here.
 *   /path or file:///path          → LocalStore
 *   s3://bucket/prefix             → S3Store (endpoint/region/credentials from options or standard AWS env)
 *   azblob://account/container/pfx → AzureBlobStore (key, SAS or connection string; endpoint override for Azurite)
 */
import { InputError } from '../core/base.ts';
import { LocalStore } from './local.ts';
import type { RetryPolicy } from './retry.ts';
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
  /** Where AWS_* / AZURE_STORAGE_* settings are read from (default process.env). */
  env?: NodeJS.ProcessEnv;
  /** Backoff for the cloud stores (tests shorten it). */
  retry?: Partial<RetryPolicy>;
}

export type StoreFactory = (url: URL, options: StoreOptions) => Promise<ObjectStore>;

const factories = new Map<string, StoreFactory>();

export function registerStore(scheme: string, factory: StoreFactory): void {
  factories.set(scheme, factory);
}

/** The path after the bucket/container, without slashes at either end. */
function prefixOf(parts: readonly string[]): string {
  return parts.filter((p) => p !== '').join('/');
}

// The SDKs load only when a URL of theirs is opened (a local repository never pays for them).
registerStore('s3', async (url, o) => {
  const env = o.env ?? process.env;
  const bucket = url.hostname;
  if (!bucket) throw new InputError('an S3 repository URL needs a bucket: s3://bucket/prefix');
  const endpoint = o.s3Endpoint ?? (env.AWS_ENDPOINT_URL_S3 || env.AWS_ENDPOINT_URL || undefined);
  const { S3Store } = await import('./s3.ts');
  return new S3Store({
    bucket,
    prefix: prefixOf(decodeURIComponent(url.pathname).split('/')),
    region: o.s3Region ?? (env.AWS_REGION || env.AWS_DEFAULT_REGION || 'us-east-1'),
    ...(endpoint ? { endpoint } : {}),
    // Custom endpoints (moto, MinIO, on-premises) rarely have wildcard DNS for virtual-hosted buckets.
    forcePathStyle: o.s3ForcePathStyle ?? endpoint !== undefined,
    ...(env.AWS_ACCESS_KEY_ID && env.AWS_SECRET_ACCESS_KEY
      ? {
          credentials: {
            accessKeyId: env.AWS_ACCESS_KEY_ID,
            secretAccessKey: env.AWS_SECRET_ACCESS_KEY,
            ...(env.AWS_SESSION_TOKEN ? { sessionToken: env.AWS_SESSION_TOKEN } : {}),
          },
        }
      : {}),
    ...(o.retry ? { retry: o.retry } : {}),
  });
});

registerStore('azblob', async (url, o) => {
  const env = o.env ?? process.env;
  const account = url.hostname;
  const [container, ...rest] = decodeURIComponent(url.pathname).replace(/^\/+/, '').split('/');
  if (!account || !container)
    throw new InputError(
      'an Azure repository URL needs an account and a container: azblob://account/container/prefix',
    );
  const endpoint = o.azureEndpoint ?? (env.AZURE_STORAGE_ENDPOINT || undefined);
  // Credentials given as options (a location profile) win as a whole over the environment.
  const explicit = o.azureConnectionString ?? o.azureKey ?? o.azureSas;
  const connectionString = explicit
    ? o.azureConnectionString
    : env.AZURE_STORAGE_CONNECTION_STRING || undefined;
  const key = explicit ? o.azureKey : env.AZURE_STORAGE_KEY || undefined;
  const sas = explicit ? o.azureSas : env.AZURE_STORAGE_SAS_TOKEN || undefined;
  const { AzureBlobStore } = await import('./azblob.ts');
  return new AzureBlobStore({
    account,
    container,
    prefix: prefixOf(rest),
    ...(endpoint ? { endpoint } : {}),
    ...(connectionString ? { connectionString } : key ? { key } : sas ? { sas } : {}),
    ...(o.retry ? { retry: o.retry } : {}),
  });
});

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
