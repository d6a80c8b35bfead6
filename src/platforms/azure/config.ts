/**
 * Azure platform configuration: the infra profile (service principal, subscription, source resource group)
 * and, per DR region, the location profile (resource group + a storage account that stages VHDs as page blobs).
 * Validation helpers check a storage account can hold page blobs and sits in the DR region, because the
 * VHD import path fails late (after the whole copy) when either is wrong.
 */
import { z } from 'zod';
import { InputError, parseInput } from '../../core/index.ts';

const Name = z.string().min(1).max(90);

export const AzureTargetSchema = z.object({
  /** Resource group that receives the DR snapshots and restored disks in that region. */
  resourceGroup: Name,
  /** Storage account in the DR region where VHDs are staged (container `vhdcontainers`). */
  storageAccount: z.string().regex(/^[a-z0-9]{3,24}$/, '3-24 lower-case letters and digits'),
  /** Secret: storage account key. */
  accountKey: z.string().min(1),
  /** Blob endpoint override (emulator: http://127.0.0.1:PORT/ACCOUNT); default https://ACCOUNT.blob.core.windows.net. */
  blobEndpoint: z.url().optional(),
  /** Resource group of the storage account when not the target group. */
  storageResourceGroup: Name.optional(),
});
export type AzureTarget = z.infer<typeof AzureTargetSchema>;

export const AzurePlatformConfigSchema = z.object({
  tenant: z.string().min(1),
  clientId: z.string().min(1),
  /** Secret. */
  clientSecret: z.string().min(1),
  subscription: z.string().min(1),
  /** Resource group of the protected disks (source region). */
  resourceGroup: Name,
  /** Source region (Azure location name, e.g. eastus). */
  region: z.string().min(1),
  /** ARM endpoint override (the emulator); default https://management.azure.com. */
  endpoint: z.url().optional(),
  /** Token endpoint host override; default https://login.microsoftonline.com. */
  authorityHost: z.url().optional(),
  /** Long-running operation poll interval (default 2000 ms, Azure's own advice). */
  pollIntervalMs: z.number().int().positive().optional(),
  /** Lifetime asked for access SAS tokens (default 3600 s). */
  sasSeconds: z.number().int().positive().optional(),
  /** Parallel range transfers in incremental copies (default 4). */
  concurrency: z.number().int().min(1).max(32).optional(),
  /**
   * How copies cross regions: 'vhd' (default) = SAS + VHD page blob + Import, changed pages only onto a clone
   * of the previous copy when there is one; 'copystart' = Azure's CopyStart for incremental snapshots.
   */
  copyMode: z.enum(['vhd', 'copystart']).optional(),
  /** DR regions: region -> target. */
  targets: z.record(z.string(), AzureTargetSchema).default({}),
});
export type AzurePlatformConfig = z.input<typeof AzurePlatformConfigSchema>;
export type ParsedAzureConfig = z.infer<typeof AzurePlatformConfigSchema>;

export function parseAzureConfig(config: Record<string, unknown>): ParsedAzureConfig {
  return parseInput(AzurePlatformConfigSchema, config, 'azure platform config');
}

/**
 * Platform config from profiles: the infra profile's settings/secrets and, per DR region, an Azure location
 * profile (settings: region, resourceGroup, storageAccount, blobEndpoint?; secrets: accountKey).
 */
export function azureConfigFromProfiles(
  infra: { settings: Record<string, string>; secrets: Record<string, string> },
  locations: { settings: Record<string, string>; secrets: Record<string, string> }[] = [],
): ParsedAzureConfig {
  const s = infra.settings;
  const targets: Record<string, unknown> = {};
  for (const l of locations) {
    const region = l.settings['region'];
    if (!region)
      throw new InputError('an Azure location profile needs settings.region', {
        details: { field: 'region' },
      });
    targets[region] = {
      resourceGroup: l.settings['resourceGroup'],
      storageAccount: l.settings['storageAccount'],
      accountKey: l.secrets['accountKey'],
      ...(l.settings['blobEndpoint'] ? { blobEndpoint: l.settings['blobEndpoint'] } : {}),
      ...(l.settings['storageResourceGroup']
        ? { storageResourceGroup: l.settings['storageResourceGroup'] }
        : {}),
    };
  }
  const num = (k: string) => (s[k] ? Number(s[k]) : undefined);
  const cfg: Record<string, unknown> = {
    tenant: s['tenant'],
    clientId: s['clientId'],
    clientSecret: infra.secrets['clientSecret'],
    subscription: s['subscription'],
    resourceGroup: s['resourceGroup'],
    region: s['region'],
    targets,
  };
  for (const k of ['endpoint', 'authorityHost', 'copyMode'] as const) if (s[k]) cfg[k] = s[k];
  for (const k of ['pollIntervalMs', 'sasSeconds', 'concurrency'] as const) if (s[k]) cfg[k] = num(k);
  return parseAzureConfig(cfg);
}

/** Storage account kinds/SKUs whose blob service stores page blobs (VHDs). */
export function supportsPageBlobs(kind: string, skuName: string): boolean {
  // BlockBlobStorage and FileStorage (premium) and BlobStorage (legacy blob-only) accounts hold no page blobs.
  if (!['StorageV2', 'Storage'].includes(kind)) return false;
  return /^(Standard|Premium)_(LRS|ZRS|GRS|RAGRS|GZRS|RAGZRS)$/.test(skuName);
}

export interface StorageAccountFacts {
  name: string;
  location: string;
  kind: string;
  sku: string;
}

/** Problems that make `account` unusable as the VHD staging account for `drRegion` (empty = fine). */
export function locationProblems(account: StorageAccountFacts, drRegion: string): string[] {
  const out: string[] = [];
  if (!supportsPageBlobs(account.kind, account.sku))
    out.push(
      `storage account "${account.name}" (${account.kind}, ${account.sku}) cannot hold page blobs: use a general-purpose v2 account (StorageV2, Standard_* or Premium_* LRS/ZRS)`,
    );
  if (normRegion(account.location) !== normRegion(drRegion))
    out.push(
      `storage account "${account.name}" is in "${account.location}", not in the DR region "${drRegion}": Azure imports a VHD only from its own region`,
    );
  return out;
}

export function normRegion(r: string): string {
  return r.toLowerCase().replace(/\s+/g, '');
}

export function blobEndpointFor(t: AzureTarget): string {
  return (t.blobEndpoint ?? `https://${t.storageAccount}.blob.core.windows.net`).replace(/\/+$/, '');
}
