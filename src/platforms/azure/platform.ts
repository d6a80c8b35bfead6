/**
 * Azure managed disks. Volumes are disks, snapshots are incremental managed snapshots (tag `tern-volume`),
 * regions are Azure locations: the source one from the infra profile, DR ones from Azure location profiles.
 *
 * Cross-region copy (the path used in the field):
 *   grantAccess (read SAS) on the source snapshot -> copy it as a page blob into `vhdcontainers` of the DR
 *   storage account -> snapshot in the DR resource group with createOption Import -> delete the VHD ->
 *   revokeAccess. With a previous copy in the DR region, only the pages that changed since its source snapshot
 *   (Get Page Ranges diff between the two incremental snapshots' SAS URLs) are read and written onto a clone of
 *   the previous copy's VHD; the rest is a server-side copy inside the DR region.
 * `copyMode: 'copystart'` uses Azure's own cross-region incremental copy instead.
 * The VHD name is derived from the source snapshot, so a retry after a crash removes what the crash left.
 */
import crypto from 'node:crypto';
import type { ComputeManagementClient, Disk, Snapshot } from '@azure/arm-compute';
import {
  AnonymousCredential,
  BlobServiceClient,
  PageBlobClient,
  StorageSharedKeyCredential,
} from '@azure/storage-blob';
import type { ContainerClient } from '@azure/storage-blob';
import {
  AuthError,
  CancelledError,
  ConflictError,
  ForbiddenError,
  InputError,
  NotFoundError,
  StorageError,
  TernError,
  UnavailableError,
  systemClock,
  throwIfAborted,
} from '../../core/index.ts';
import type { Clock, Progress, RunOptions } from '../../core/index.ts';
import type {
  ByteRangeList,
  CopyResult,
  Platform,
  PlatformInfo,
  SnapshotReader,
  SnapshotRef,
  VolumeRef,
} from '../types.ts';
import type { ClientSecretTokenCredential } from './client.ts';
import { createComputeClient } from './client.ts';
import { blobEndpointFor, locationProblems, normRegion, parseAzureConfig } from './config.ts';
import type { AzureTarget, ParsedAzureConfig, StorageAccountFacts } from './config.ts';
import { clipRanges, coalesceRanges, mergeRanges, splitRanges, totalBytes } from './ranges.ts';
import type { Range } from './ranges.ts';

export const VHD_CONTAINER = 'vhdcontainers';
const TAG_VOLUME = 'tern-volume';
const TAG_VOLUME_ID = 'tern-volume-id';
const TAG_SOURCE = 'tern-source';
const TAG_PARENT = 'tern-parent';
const PIECE = 4 << 20;
/** Changed ranges closer than this are read and written as one piece (the gap is counted as moved). */
const GAP = 64 << 10;
/** Ranged reads / page writes in flight during an incremental copy (config `concurrency` overrides). */
const IN_FLIGHT = 8;
const SNAPSHOT_ROLE = 'Disk Snapshot Contributor';

interface ResourceName {
  rg: string;
  name: string;
}

function parseResourceId(id: string, kind: 'snapshots' | 'disks'): ResourceName {
  const m = new RegExp(`/resourceGroups/([^/]+)/providers/Microsoft\\.Compute/${kind}/([^/]+)$`, 'i').exec(
    id,
  );
  if (!m) throw new InputError(`not an Azure ${kind.slice(0, -1)} resource id: "${id}"`);
  return { rg: m[1]!, name: m[2]! };
}

function statusOf(err: unknown): number | undefined {
  if (err && typeof err === 'object' && 'statusCode' in err && typeof err.statusCode === 'number')
    return err.statusCode;
  return undefined;
}

function codeOf(err: unknown): string | undefined {
  if (err && typeof err === 'object' && 'code' in err && typeof err.code === 'string') return err.code;
  return undefined;
}

function isAbort(err: unknown, signal?: AbortSignal): boolean {
  if (signal?.aborted) return true;
  return err instanceof Error && (err.name === 'AbortError' || err instanceof CancelledError);
}

/** A SAS that the storage service refuses: expired, revoked or not yet valid. */
function isSasRefusal(err: unknown): boolean {
  const s = statusOf(err);
  const c = codeOf(err) ?? '';
  return (
    s === 403 ||
    (s === 404 && c === 'CannotVerifyCopySource') ||
    /AuthenticationFailed|CannotVerifyCopySource|AuthorizationFailure/.test(c)
  );
}

function sasBlob(url: string): PageBlobClient {
  return new PageBlobClient(url, new AnonymousCredential());
}

/** The SDK reports page ranges as { offset, count } with count = end - start (end inclusive). */
function sdkRanges(xs: { offset: number; count?: number }[] | undefined): Range[] {
  return mergeRanges((xs ?? []).map((x) => ({ offset: x.offset, length: (x.count ?? 0) + 1 })));
}

/** Azure RBAC action patterns ("*", "Microsoft.Compute/*", "*\/read") against one action. */
export function actionAllowed(
  action: string,
  grants: { actions: string[]; notActions: string[] }[],
): boolean {
  const re = (pattern: string) =>
    new RegExp(
      `^${pattern
        .split('*')
        .map((x) => x.replace(/[.+?^${}()|[\]\\/]/g, '\\$&'))
        .join('.*')}$`,
      'i',
    );
  return grants.some(
    (g) => g.actions.some((a) => re(a).test(action)) && !g.notActions.some((a) => re(a).test(action)),
  );
}

function safeName(s: string, max = 80): string {
  const clean = s.replace(/[^A-Za-z0-9_.-]/g, '-');
  if (clean.length <= max) return clean;
  const h = crypto.createHash('sha256').update(s).digest('hex').slice(0, 10);
  return `${clean.slice(0, max - 11)}-${h}`;
}

function stamp(now: Date): string {
  return `${now
    .toISOString()
    .replace(/[-:.TZ]/g, '')
    .slice(0, 17)}${crypto.randomBytes(2).toString('hex')}`;
}

/** A read SAS on a snapshot, re-granted when the service starts refusing it. */
class Access {
  url = '';
  private readonly p: AzurePlatform;
  readonly rg: string;
  readonly name: string;
  grants = 0;
  private regranting: Promise<string> | undefined;
  constructor(p: AzurePlatform, rg: string, name: string) {
    this.p = p;
    this.rg = rg;
    this.name = name;
  }
  async grant(signal?: AbortSignal): Promise<string> {
    this.url = await this.p.grantRead(this.rg, this.name, signal);
    this.grants++;
    return this.url;
  }
  blob(): PageBlobClient {
    return sasBlob(this.url);
  }
  /**
   * Runs `fn` with the current SAS; a refused SAS is re-granted (up to 3 times) and `fn` runs again. Concurrent
   * callers refused at once share one re-grant; one that failed on an already replaced SAS just retries.
   */
  async use<T>(fn: (url: string) => Promise<T>, signal?: AbortSignal): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      const url = this.url;
      try {
        return await fn(url);
      } catch (err) {
        if (isAbort(err, signal) || !isSasRefusal(err) || attempt >= 3) throw err;
        if (this.url === url) {
          this.regranting ??= this.grant(signal).finally(() => {
            this.regranting = undefined;
          });
          await this.regranting;
        }
      }
    }
  }
  async revoke(): Promise<void> {
    if (this.grants > 0) await this.p.revokeRead(this.rg, this.name).catch(() => {});
  }
}

export class AzurePlatform implements Platform {
  readonly provider = 'azure';
  readonly config: ParsedAzureConfig;
  readonly client: ComputeManagementClient;
  private readonly credential: ClientSecretTokenCredential;

  private readonly clock: Clock;

  constructor(config: ParsedAzureConfig | Record<string, unknown>, deps: { clock?: Clock } = {}) {
    this.config = parseAzureConfig(config as Record<string, unknown>);
    this.clock = deps.clock ?? systemClock;
    const c = createComputeClient(this.config);
    this.client = c.client;
    this.credential = c.credential;
  }

  private get poll(): { updateIntervalInMs: number } {
    return { updateIntervalInMs: this.config.pollIntervalMs ?? 2000 };
  }

  private regionNames(): string[] {
    return [this.config.region, ...Object.keys(this.config.targets)];
  }

  private target(region: string): AzureTarget {
    const t = Object.entries(this.config.targets).find(([r]) => normRegion(r) === normRegion(region))?.[1];
    if (!t)
      throw new NotFoundError(`no Azure location profile for DR region "${region}"`, { details: { region } });
    return t;
  }

  /** Resource group holding a region's disks and snapshots. */
  resourceGroup(region: string): string {
    if (normRegion(region) === normRegion(this.config.region)) return this.config.resourceGroup;
    return this.target(region).resourceGroup;
  }

  private scope(rg: string): string {
    return `/subscriptions/${this.config.subscription}/resourceGroups/${rg}`;
  }

  /** Turns an SDK failure into a typed error that names what to fix. */
  private fail(err: unknown, what: string, rg: string, role: string, signal?: AbortSignal): Error {
    if (isAbort(err, signal)) return new CancelledError(`${what}: cancelled`, { cause: err });
    if (err instanceof TernError) return err;
    const status = statusOf(err);
    const code = codeOf(err) ?? '';
    const msg = err instanceof Error ? err.message : String(err);
    const details = { status, code, resourceGroup: rg };
    if (code === 'AuthorizationFailed' || (status === 403 && !isSasRefusal(err))) {
      const scope = this.scope(rg);
      return new ForbiddenError(
        `${what}: Azure denied service principal "${this.config.clientId}" (${code || 'HTTP 403'}); it needs the "${role}" role on scope ${scope}`,
        { cause: err, details: { ...details, role, scope } },
      );
    }
    if (status === 403)
      return new ForbiddenError(
        `${what}: the storage service refused the access SAS (${code || 'HTTP 403'})`,
        {
          cause: err,
          details,
        },
      );
    if (status === 401)
      return new AuthError(`${what}: Azure rejected the credentials (${code})`, { cause: err, details });
    if (status === 404)
      return new NotFoundError(`${what}: not found (${code || msg})`, { cause: err, details });
    if (status === 409) return new ConflictError(`${what}: ${msg}`, { cause: err, details });
    if (status === 429 || (status !== undefined && status >= 500))
      return new UnavailableError(`${what}: Azure is throttling or unavailable (${code || status})`, {
        cause: err,
        details,
      });
    return new StorageError(`${what}: ${msg}`, { cause: err, details });
  }

  private async arm<T>(
    what: string,
    rg: string,
    role: string,
    fn: () => Promise<T>,
    signal?: AbortSignal,
  ): Promise<T> {
    throwIfAborted(signal);
    try {
      return await fn();
    } catch (err) {
      throw this.fail(err, what, rg, role, signal);
    }
  }

  private async armJson(
    path: string,
    signal?: AbortSignal,
  ): Promise<{ status: number; body: Record<string, unknown> }> {
    const token = await this.credential.getToken('https://management.azure.com/.default');
    const res = await fetch(
      `${(this.config.endpoint ?? 'https://management.azure.com').replace(/\/+$/, '')}${path}`,
      {
        headers: { authorization: `Bearer ${token.token}` },
        ...(signal ? { signal } : {}),
      },
    );
    return { status: res.status, body: (await res.json().catch(() => ({}))) as Record<string, unknown> };
  }

  /**
   * Fails fast, before any byte moves, when the service principal lacks an action on a resource group
   * (Permissions - List For Resource Group). If that API cannot be read the operation runs and fails on its own.
   */
  async checkPermissions(rg: string, actions: string[], role: string, signal?: AbortSignal): Promise<void> {
    let grants: { actions: string[]; notActions: string[] }[];
    try {
      const r = await this.armJson(
        `${this.scope(rg)}/providers/Microsoft.Authorization/permissions?api-version=2022-04-01`,
        signal,
      );
      if (r.status !== 200 || !Array.isArray(r.body['value'])) return;
      grants = (r.body['value'] as { actions?: string[]; notActions?: string[] }[]).map((g) => ({
        actions: g.actions ?? [],
        notActions: g.notActions ?? [],
      }));
    } catch (err) {
      if (signal?.aborted) throw new CancelledError('permission check cancelled', { cause: err });
      return;
    }
    const missing = actions.filter((a) => !actionAllowed(a, grants));
    if (missing.length > 0) {
      const scope = this.scope(rg);
      throw new ForbiddenError(
        `service principal "${this.config.clientId}" may not ${missing.join(', ')} on scope ${scope}: assign it the "${role}" role on ${scope}`,
        { details: { role, scope, missing } },
      );
    }
  }

  // ---- SAS -----------------------------------------------------------------------------------------------

  async grantRead(rg: string, name: string, signal?: AbortSignal): Promise<string> {
    const r = await this.arm(
      `grant read access to snapshot ${name}`,
      rg,
      SNAPSHOT_ROLE,
      () =>
        this.client.snapshots.beginGrantAccessAndWait(
          rg,
          name,
          { access: 'Read', durationInSeconds: this.config.sasSeconds ?? 3600 },
          { ...this.poll, ...(signal ? { abortSignal: signal } : {}) },
        ),
      signal,
    );
    if (!r.accessSAS) throw new StorageError(`grantAccess on snapshot ${name} returned no SAS`);
    return r.accessSAS;
  }

  async revokeRead(rg: string, name: string): Promise<void> {
    await this.arm(`revoke access to snapshot ${name}`, rg, SNAPSHOT_ROLE, () =>
      this.client.snapshots.beginRevokeAccessAndWait(rg, name, this.poll),
    );
  }

  // ---- Platform ------------------------------------------------------------------------------------------

  async info(_opts?: RunOptions): Promise<PlatformInfo> {
    return {
      provider: this.provider,
      regions: this.regionNames().map((name, i) => ({
        name,
        snapshotMethod: 'incremental-snapshot',
        details: {
          resourceGroup: this.resourceGroup(name),
          role: i === 0 ? 'source' : 'dr',
          ...(i > 0 ? { storageAccount: this.target(name).storageAccount } : {}),
          copyMode: this.config.copyMode ?? 'vhd',
        },
      })),
    };
  }

  private volumeRef(d: Disk, region: string): VolumeRef {
    return {
      id: d.id ?? '',
      region,
      name: d.name ?? '',
      sizeBytes: d.diskSizeBytes ?? (d.diskSizeGB ?? 0) * 2 ** 30,
      kind: 'block',
    };
  }

  async listVolumes(region: string, opts: RunOptions = {}): Promise<VolumeRef[]> {
    const rg = this.resourceGroup(region);
    return this.arm(
      `list disks in ${rg}`,
      rg,
      'Reader',
      async () => {
        const out: VolumeRef[] = [];
        for await (const d of this.client.disks.listByResourceGroup(rg))
          if (normRegion(d.location) === normRegion(region)) out.push(this.volumeRef(d, region));
        return out.sort((a, b) => a.name.localeCompare(b.name));
      },
      opts.signal,
    );
  }

  toRef(s: Snapshot): SnapshotRef {
    const tags = s.tags ?? {};
    const { rg, name } = parseResourceId(s.id ?? '', 'snapshots');
    const ref: SnapshotRef = {
      id: s.id ?? '',
      volumeId: tags[TAG_VOLUME_ID] ?? s.creationData?.sourceResourceId ?? '',
      region: s.location,
      sizeBytes: s.diskSizeBytes ?? (s.diskSizeGB ?? 0) * 2 ** 30,
      createdAt: (s.timeCreated ?? new Date(0)).toISOString(),
      kind: 'block',
      details: {
        resourceGroup: rg,
        name,
        method: s.creationData?.createOption ?? '',
        incremental: String(s.incremental ?? false),
        ...(tags[TAG_SOURCE] ? { sourceSnapshotId: tags[TAG_SOURCE] } : {}),
        ...Object.fromEntries(
          Object.entries(tags)
            .filter(([k]) => !k.startsWith('tern-'))
            .map(([k, v]) => [`tag.${k}`, v]),
        ),
      },
    };
    if (tags[TAG_PARENT]) ref.parentId = tags[TAG_PARENT];
    return ref;
  }

  async snapshot(
    volume: VolumeRef,
    opts: RunOptions & { tags?: Record<string, string> } = {},
  ): Promise<SnapshotRef> {
    const rg = this.resourceGroup(volume.region);
    const name = safeName(`${volume.name}-${stamp(this.clock.now())}`);
    const s = await this.arm(
      `snapshot disk ${volume.name}`,
      rg,
      SNAPSHOT_ROLE,
      () =>
        this.client.snapshots.beginCreateOrUpdateAndWait(
          rg,
          name,
          {
            location: volume.region,
            incremental: true,
            creationData: { createOption: 'Copy', sourceResourceId: volume.id },
            tags: { ...opts.tags, [TAG_VOLUME]: volume.name, [TAG_VOLUME_ID]: volume.id },
          },
          { ...this.poll, ...(opts.signal ? { abortSignal: opts.signal } : {}) },
        ),
      opts.signal,
    );
    return this.toRef(s);
  }

  async listSnapshots(volume: VolumeRef, opts: RunOptions = {}): Promise<SnapshotRef[]> {
    const rg = this.resourceGroup(volume.region);
    return this.arm(
      `list snapshots in ${rg}`,
      rg,
      SNAPSHOT_ROLE,
      async () => {
        const out: Snapshot[] = [];
        for await (const s of this.client.snapshots.listByResourceGroup(rg))
          if (
            s.tags?.[TAG_VOLUME] === volume.name &&
            normRegion(s.location) === normRegion(volume.region) &&
            s.provisioningState === 'Succeeded'
          )
            out.push(s);
        return out
          .map((s) => this.toRef(s))
          .sort((a, b) => a.createdAt.localeCompare(b.createdAt) || a.id.localeCompare(b.id));
      },
      opts.signal,
    );
  }

  private async getSnapshot(rg: string, name: string, signal?: AbortSignal): Promise<Snapshot> {
    return this.arm(
      `read snapshot ${name}`,
      rg,
      SNAPSHOT_ROLE,
      () => this.client.snapshots.get(rg, name),
      signal,
    );
  }

  private async deleteByName(rg: string, name: string): Promise<void> {
    await this.arm(`delete snapshot ${name}`, rg, SNAPSHOT_ROLE, () =>
      this.client.snapshots.beginDeleteAndWait(rg, name, this.poll),
    );
  }

  async deleteSnapshot(snapshot: SnapshotRef, opts: RunOptions = {}): Promise<void> {
    const { rg, name } = parseResourceId(snapshot.id, 'snapshots');
    await this.getSnapshot(rg, name, opts.signal);
    await this.deleteByName(rg, name);
  }

  private async diff(
    target: Access,
    base: Access,
    size: number,
    signal?: AbortSignal,
  ): Promise<{ changed: Range[]; cleared: Range[] }> {
    const r = await base.use(
      (baseUrl) =>
        target.use(
          (url) =>
            sasBlob(url).getPageRangesDiffForManagedDisks(0, size, baseUrl, {
              ...(signal ? { abortSignal: signal } : {}),
            }),
          signal,
        ),
      signal,
    );
    return {
      changed: clipRanges(sdkRanges(r.pageRange), size),
      cleared: clipRanges(sdkRanges(r.clearRange), size),
    };
  }

  async changedRanges(base: SnapshotRef, target: SnapshotRef, opts: RunOptions = {}): Promise<ByteRangeList> {
    const b = parseResourceId(base.id, 'snapshots');
    const t = parseResourceId(target.id, 'snapshots');
    const [bs, ts] = await Promise.all([this.getSnapshot(b.rg, b.name), this.getSnapshot(t.rg, t.name)]);
    const size = ts.diskSizeBytes ?? target.sizeBytes;
    const ba = new Access(this, b.rg, b.name);
    const ta = new Access(this, t.rg, t.name);
    try {
      await ba.grant(opts.signal);
      await ta.grant(opts.signal);
      try {
        const d = await this.diff(ta, ba, size, opts.signal);
        return { ranges: mergeRanges([...d.changed, ...d.cleared]), method: 'page-ranges' };
      } catch (err) {
        if (isAbort(err, opts.signal)) throw err;
        // Not of one family (restored disk, imported copy): everything allocated in either may differ.
        void bs;
        const all = await ta.use((u) => sasBlob(u).getPageRanges(0, size));
        const old = await ba.use((u) => sasBlob(u).getPageRanges(0, size));
        return {
          ranges: clipRanges(mergeRanges([...sdkRanges(all.pageRange), ...sdkRanges(old.pageRange)]), size),
          method: 'full',
        };
      }
    } catch (err) {
      throw this.fail(err, 'changed ranges', t.rg, SNAPSHOT_ROLE, opts.signal);
    } finally {
      await ta.revoke();
      await ba.revoke();
    }
  }

  private container(t: AzureTarget): ContainerClient {
    return new BlobServiceClient(
      blobEndpointFor(t),
      new StorageSharedKeyCredential(t.storageAccount, t.accountKey),
    ).getContainerClient(VHD_CONTAINER);
  }

  private storageAccountId(t: AzureTarget): string {
    return `${this.scope(t.storageResourceGroup ?? t.resourceGroup)}/providers/Microsoft.Storage/storageAccounts/${t.storageAccount}`;
  }

  /** Reads the DR storage account from ARM and checks it can stage VHDs for `region`. */
  async validateTarget(region: string, opts: RunOptions = {}): Promise<StorageAccountFacts> {
    const t = this.target(region);
    const id = this.storageAccountId(t);
    const rg = t.storageResourceGroup ?? t.resourceGroup;
    const body = await this.arm(
      `read storage account ${t.storageAccount}`,
      rg,
      'Reader',
      async () => {
        const { status, body: parsed } = await this.armJson(`${id}?api-version=2023-05-01`, opts.signal);
        if (status >= 400) {
          const e = (parsed['error'] ?? {}) as { code?: string; message?: string };
          throw Object.assign(new Error(e.message ?? `HTTP ${status}`), { statusCode: status, code: e.code });
        }
        return parsed;
      },
      opts.signal,
    );
    const facts: StorageAccountFacts = {
      name: String(body['name'] ?? t.storageAccount),
      location: String(body['location'] ?? ''),
      kind: String(body['kind'] ?? ''),
      sku: String((body['sku'] as { name?: string } | undefined)?.name ?? ''),
    };
    const problems = locationProblems(facts, region);
    if (problems.length > 0)
      throw new InputError(problems.join('; '), { details: { field: 'storageAccount', region } });
    return facts;
  }

  async copySnapshot(
    snapshot: SnapshotRef,
    toRegion: string,
    opts: RunOptions & { previousCopy?: SnapshotRef; baseSnapshot?: SnapshotRef } = {},
  ): Promise<CopyResult> {
    const { signal } = opts;
    if (normRegion(toRegion) === normRegion(snapshot.region))
      throw new InputError('copySnapshot needs a different region');
    const t = this.target(toRegion);
    const src = parseResourceId(snapshot.id, 'snapshots');
    const srcSnap = await this.getSnapshot(src.rg, src.name, signal);
    const size = srcSnap.diskSizeBytes ?? snapshot.sizeBytes;
    await this.checkPermissions(
      t.resourceGroup,
      [
        'Microsoft.Compute/snapshots/read',
        'Microsoft.Compute/snapshots/write',
        'Microsoft.Compute/snapshots/delete',
        'Microsoft.Compute/snapshots/beginGetAccess/action',
        'Microsoft.Compute/snapshots/endGetAccess/action',
      ],
      SNAPSHOT_ROLE,
      signal,
    );
    await this.checkPermissions(
      src.rg,
      [
        'Microsoft.Compute/snapshots/beginGetAccess/action',
        'Microsoft.Compute/snapshots/endGetAccess/action',
      ],
      SNAPSHOT_ROLE,
      signal,
    );
    const drName = safeName(`${src.name}-${toRegion}`);
    const tags: Record<string, string> = {
      ...(srcSnap.tags ?? {}),
      [TAG_SOURCE]: snapshot.id,
    };
    if (opts.previousCopy) tags[TAG_PARENT] = opts.previousCopy.id;

    // A crash in an earlier attempt of this very copy may have left its VHD or an unfinished snapshot.
    const vhd = this.container(t).getPageBlobClient(`${drName}.vhd`);
    await this.arm(`remove leftovers of an earlier copy ${drName}`, t.resourceGroup, SNAPSHOT_ROLE, () =>
      this.cleanup(t, drName, true),
    );

    if (this.config.copyMode === 'copystart')
      return this.copyStart(snapshot, srcSnap, t, toRegion, drName, tags, opts);

    let prev: { snap: Snapshot; rg: string; name: string } | undefined;
    let base: ResourceName | undefined;
    if (opts.previousCopy) {
      const p = parseResourceId(opts.previousCopy.id, 'snapshots');
      if (normRegion(opts.previousCopy.region) !== normRegion(toRegion))
        throw new InputError('previousCopy must be in the target region');
      prev = { snap: await this.getSnapshot(p.rg, p.name, signal), ...p };
      const baseId = opts.baseSnapshot?.id ?? prev.snap.tags?.[TAG_SOURCE];
      if (!baseId)
        throw new NotFoundError(`previous copy ${p.name} does not say which snapshot it was copied from`);
      base = parseResourceId(baseId, 'snapshots');
      await this.getSnapshot(base.rg, base.name, signal);
    }

    const srcAccess = new Access(this, src.rg, src.name);
    const extra: Access[] = [];
    let created = false;
    const progress = (p: Omit<Progress, 'phase'> & { phase?: string }) =>
      opts.onProgress?.({ phase: 'copy', ...p });
    try {
      await this.container(t).createIfNotExists({ ...(signal ? { abortSignal: signal } : {}) });
      await srcAccess.grant(signal);
      let moved: number;
      let incremental = false;
      let d: { changed: Range[]; cleared: Range[] } | undefined;
      if (prev && base) {
        const baseAccess = new Access(this, base.rg, base.name);
        extra.push(baseAccess);
        await baseAccess.grant(signal);
        try {
          d = await this.diff(srcAccess, baseAccess, size, signal);
        } catch (err) {
          // Not an earlier snapshot of the same disk (disk re-created, base restored elsewhere): copy in full.
          if (isAbort(err, signal) || statusOf(err) === 403) throw err;
        }
        await baseAccess.revoke();
      }
      if (prev && d) {
        const prevAccess = new Access(this, prev.rg, prev.name);
        extra.push(prevAccess);
        const toMove = totalBytes(coalesceRanges(d.changed, GAP, PIECE));
        progress({ phase: 'clone', bytesRead: 0, bytesTotal: toMove, bytesTransferred: 0 });
        // Inside the DR region: the previous copy becomes the starting VHD (server-side, no cross-region bytes).
        await prevAccess.grant(signal);
        await this.serverCopy(vhd, prevAccess, signal);
        await prevAccess.revoke();
        const prevSize = prev.snap.diskSizeBytes ?? 0;
        if (prevSize !== size) await vhd.resize(size, { ...(signal ? { abortSignal: signal } : {}) });
        moved = await this.copyPieces(srcAccess, vhd, d.changed, opts);
        for (const c of splitRanges(d.cleared, PIECE)) await vhd.clearPages(c.offset, c.length);
        incremental = true;
      } else {
        const allocated = await srcAccess.use((u) => sasBlob(u).getPageRanges(0, size));
        moved = totalBytes(clipRanges(sdkRanges(allocated.pageRange), size));
        progress({ bytesRead: 0, bytesTotal: moved, bytesTransferred: 0 });
        await this.serverCopy(vhd, srcAccess, signal, (done) =>
          progress({ bytesRead: done, bytesTotal: moved, bytesTransferred: done }),
        );
        progress({ bytesRead: moved, bytesTotal: moved, bytesTransferred: moved });
      }
      throwIfAborted(signal);
      created = true;
      const copy = await this.arm(
        `import snapshot ${drName} in ${t.resourceGroup}`,
        t.resourceGroup,
        SNAPSHOT_ROLE,
        () =>
          this.client.snapshots.beginCreateOrUpdateAndWait(
            t.resourceGroup,
            drName,
            {
              location: toRegion,
              incremental: false,
              creationData: {
                createOption: 'Import',
                sourceUri: vhd.url,
                storageAccountId: this.storageAccountId(t),
              },
              tags,
            },
            { ...this.poll, ...(signal ? { abortSignal: signal } : {}) },
          ),
        signal,
      );
      return { snapshot: this.toRef(copy), bytesTransferred: moved, incremental };
    } catch (err) {
      await this.cleanup(t, drName, created).catch(() => {});
      throw this.fail(
        err,
        `copy snapshot ${src.name} to ${toRegion}`,
        t.resourceGroup,
        SNAPSHOT_ROLE,
        signal,
      );
    } finally {
      await vhd.deleteIfExists().catch(() => {});
      await srcAccess.revoke();
      for (const a of extra) await a.revoke();
    }
  }

  /** Removes a copy's staging VHD and, when asked, a DR snapshot of that name (unfinished or orphaned). */
  private async cleanup(t: AzureTarget, drName: string, snapshotToo: boolean): Promise<void> {
    const vhd = this.container(t).getPageBlobClient(`${drName}.vhd`);
    try {
      const p = await vhd.getProperties();
      if (p.copyStatus === 'pending' && p.copyId) await vhd.abortCopyFromURL(p.copyId).catch(() => {});
    } catch {
      // no VHD
    }
    await vhd.deleteIfExists().catch(() => {});
    if (!snapshotToo) return;
    // An import still running for a killed attempt answers 409 to everything: let it finish, then drop it.
    const deadline = Date.now() + 10 * 60_000;
    for (;;) {
      let s: Snapshot;
      try {
        s = await this.client.snapshots.get(t.resourceGroup, drName);
      } catch (err) {
        if (statusOf(err) === 404) return;
        throw err;
      }
      if (
        ['Creating', 'Updating', 'Pending', 'Deleting'].includes(s.provisioningState ?? '') &&
        Date.now() < deadline
      ) {
        await this.clock.sleep(this.config.pollIntervalMs ?? 2000);
        continue;
      }
      break;
    }
    await this.client.snapshots.beginRevokeAccessAndWait(t.resourceGroup, drName, this.poll).catch(() => {});
    await this.client.snapshots.beginDeleteAndWait(t.resourceGroup, drName, this.poll);
  }

  /** Server-side copy of a snapshot (via its SAS) into `dest`; a refused SAS is re-granted and the copy restarted. */
  private async serverCopy(
    dest: PageBlobClient,
    access: Access,
    signal?: AbortSignal,
    onBytes?: (done: number) => void,
  ): Promise<void> {
    await access.use(async (url) => {
      const poller = await dest.beginCopyFromURL(url, {
        intervalInMs: this.config.pollIntervalMs ?? 2000,
        ...(signal ? { abortSignal: signal } : {}),
        onProgress: (state) => {
          const m = /^(\d+)\/(\d+)$/.exec(state.copyProgress ?? '');
          if (m && onBytes) onBytes(Number(m[1]));
        },
      });
      const r = await poller.pollUntilDone();
      if (r.copyStatus && r.copyStatus !== 'success')
        throw Object.assign(new Error(`copy ${r.copyStatus}: see the VHD blob's copy status`), {
          statusCode: 403,
          code: 'CannotVerifyCopySource',
        });
    }, signal);
  }

  /**
   * Reads `ranges` from the source SAS and writes them into `dest` at the same offsets: nearby ranges coalesced
   * (gaps under GAP joined, pieces of at most 4 MiB, the Put Page maximum), several pieces in flight. Returns
   * the bytes actually read from the source region (the pieces, gaps included).
   */
  private async copyPieces(
    src: Access,
    dest: PageBlobClient,
    ranges: Range[],
    opts: RunOptions,
  ): Promise<number> {
    const pieces = coalesceRanges(ranges, GAP, PIECE);
    const total = totalBytes(pieces);
    const abort = opts.signal ? { abortSignal: opts.signal } : {};
    // One client per SAS (a new client per request builds a new pipeline for every piece).
    const readers = new Map<string, PageBlobClient>();
    const reader = (u: string) => {
      let c = readers.get(u);
      if (!c) readers.set(u, (c = sasBlob(u)));
      return c;
    };
    let next = 0;
    let done = 0;
    opts.onProgress?.({ phase: 'copy', bytesRead: 0, bytesTotal: total, bytesTransferred: 0 });
    const worker = async () => {
      try {
        while (next < pieces.length) {
          throwIfAborted(opts.signal);
          const p = pieces[next++]!;
          const data = await src.use(
            (u) => reader(u).downloadToBuffer(p.offset, p.length, abort),
            opts.signal,
          );
          if (data.length !== p.length)
            throw new Error(`short read at ${p.offset}: ${data.length} of ${p.length} bytes`);
          await dest.uploadPages(data, p.offset, p.length, abort);
          done += p.length;
          opts.onProgress?.({ phase: 'copy', bytesRead: done, bytesTotal: total, bytesTransferred: done });
        }
      } catch (err) {
        next = pieces.length; // the other workers stop after their current piece
        throw err;
      }
    };
    const n = Math.min(this.config.concurrency ?? IN_FLIGHT, pieces.length);
    // Settled, not all: nothing may still be writing into `dest` once this returns (the caller deletes it).
    const failed = (await Promise.allSettled(Array.from({ length: n }, worker))).find(
      (r) => r.status === 'rejected',
    );
    if (failed) throw failed.reason;
    return done;
  }

  private async copyStart(
    snapshot: SnapshotRef,
    srcSnap: Snapshot,
    t: AzureTarget,
    toRegion: string,
    drName: string,
    tags: Record<string, string>,
    opts: RunOptions & { previousCopy?: SnapshotRef },
  ): Promise<CopyResult> {
    if (!srcSnap.incremental) throw new InputError('CopyStart copies incremental snapshots only');
    opts.onProgress?.({ phase: 'copy', bytesRead: 0, bytesTransferred: 0, bytesTotal: snapshot.sizeBytes });
    try {
      const copy = await this.arm(
        `CopyStart snapshot ${drName} in ${t.resourceGroup}`,
        t.resourceGroup,
        SNAPSHOT_ROLE,
        () =>
          this.client.snapshots.beginCreateOrUpdateAndWait(
            t.resourceGroup,
            drName,
            {
              location: toRegion,
              incremental: true,
              creationData: { createOption: 'CopyStart', sourceResourceId: snapshot.id },
              tags,
            },
            { ...this.poll, ...(opts.signal ? { abortSignal: opts.signal } : {}) },
          ),
        opts.signal,
      );
      // Azure moves the bytes; the client does not see how many.
      return { snapshot: this.toRef(copy), bytesTransferred: 0, incremental: Boolean(opts.previousCopy) };
    } catch (err) {
      await this.cleanup(t, drName, true).catch(() => {});
      throw err;
    }
  }

  async restoreVolume(
    snapshot: SnapshotRef,
    target: { name: string; region?: string; overwrite?: boolean },
    opts: RunOptions = {},
  ): Promise<VolumeRef> {
    const region = target.region ?? snapshot.region;
    if (normRegion(region) !== normRegion(snapshot.region))
      throw new InputError(
        `a disk is made from a snapshot in the snapshot's region (${snapshot.region}); copy it first`,
      );
    const rg = this.resourceGroup(region);
    const role = 'Virtual Machine Contributor';
    const existing = await this.client.disks.get(rg, target.name).catch((err: unknown) => {
      if (statusOf(err) === 404) return undefined;
      throw this.fail(err, `read disk ${target.name}`, rg, role, opts.signal);
    });
    if (existing) {
      if (!target.overwrite)
        throw new ConflictError(`disk "${target.name}" exists in ${rg} (use overwrite)`, {
          details: { disk: existing.id },
        });
      if (existing.managedBy)
        throw new ConflictError(
          `disk "${target.name}" is attached to ${existing.managedBy}; detach it first`,
        );
      await this.arm(`delete disk ${target.name}`, rg, role, () =>
        this.client.disks.beginDeleteAndWait(rg, target.name, this.poll),
      );
    }
    const d = await this.arm(
      `create disk ${target.name} from snapshot`,
      rg,
      role,
      () =>
        this.client.disks.beginCreateOrUpdateAndWait(
          rg,
          target.name,
          { location: region, creationData: { createOption: 'Copy', sourceResourceId: snapshot.id } },
          { ...this.poll, ...(opts.signal ? { abortSignal: opts.signal } : {}) },
        ),
      opts.signal,
    );
    return this.volumeRef(d, region);
  }

  async openSnapshot(snapshot: SnapshotRef, opts: RunOptions = {}): Promise<SnapshotReader> {
    const { rg, name } = parseResourceId(snapshot.id, 'snapshots');
    const s = await this.getSnapshot(rg, name, opts.signal);
    const size = s.diskSizeBytes ?? snapshot.sizeBytes;
    const access = new Access(this, rg, name);
    await access.grant(opts.signal);
    return {
      size,
      read: async (offset, length) => {
        const len = Math.max(0, Math.min(length, size - offset));
        if (len === 0) return Buffer.alloc(0);
        return access.use((u) => sasBlob(u).downloadToBuffer(offset, len));
      },
      close: () => access.revoke(),
    };
  }
}
