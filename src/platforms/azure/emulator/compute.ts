/**
 * An Azure Resource Manager emulator for Microsoft.Compute disks and snapshots (and the storage accounts they
 * import from), following the Azure REST reference closely enough for the real `@azure/arm-compute` client:
 * PUT/GET/DELETE/list, createOption Empty/Copy/Import/CopyStart, incremental snapshots, beginGetAccess /
 * endGetAccess, long-running operations (201/202 + Azure-AsyncOperation/Location polling), 409 conflicts,
 * injected 429 + Retry-After, client-credential tokens and role checks per resource group.
 *
 * Disk and snapshot data are page blobs in Azurite, one backing account per region (like the managed-disk
 * storage behind real Azure); data moves for real between accounts when a copy crosses regions. Azurite cannot
 * diff page ranges, so the emulator records which pages changed between incremental snapshots of a disk.
 *
 * Test-only infrastructure; it lives under src/ because `tern demo --platform azure` starts it too.
 */
import crypto from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import {
  BlobSASPermissions,
  BlobServiceClient,
  StorageSharedKeyCredential,
  generateBlobSASQueryParameters,
} from '@azure/storage-blob';
import type { ContainerClient, PageBlobClient } from '@azure/storage-blob';
import { PAGE, alignToPages, mergeRanges, splitRanges, totalBytes } from '../ranges.ts';
import type { Range } from '../ranges.ts';
import { blobPath, startBlobFront } from './blobfront.ts';
import type { BlobFront } from './blobfront.ts';

export interface EmulatorStorageAccount {
  name: string;
  key: string;
  resourceGroup: string;
  location: string;
  /** StorageV2 (default), Storage, BlobStorage, BlockBlobStorage, FileStorage. */
  kind?: string;
  /** Standard_LRS (default), Premium_LRS… */
  sku?: string;
}

export interface EmulatorPrincipal {
  secret: string;
  /** scope ("/subscriptions/S" or "/subscriptions/S/resourceGroups/RG") -> role names. */
  roles: Record<string, string[]>;
}

export interface ComputeEmulatorOptions {
  /** Azurite blob endpoint (http://127.0.0.1:PORT, path-style accounts). */
  azurite: string;
  subscription: string;
  tenant: string;
  /** Region -> the Azurite account holding that region's disks and snapshots. */
  regions: Record<string, { account: string; key: string }>;
  /** Customer storage accounts (VHD import sources), served as Microsoft.Storage resources. */
  storageAccounts?: EmulatorStorageAccount[];
  /** Client id -> secret and roles. */
  principals: Record<string, EmulatorPrincipal>;
  /** Longest access SAS lifetime granted, whatever was asked (default 3600 s). */
  maxSasSeconds?: number;
  /** Extra time every long-running operation stays InProgress (default 0). */
  lroDelayMs?: number;
  now?: () => number;
}

type Kind = 'disks' | 'snapshots';

interface Resource {
  kind: Kind;
  id: string;
  rg: string;
  name: string;
  location: string;
  tags: Record<string, string>;
  sizeBytes: number;
  incremental: boolean;
  creationData: Record<string, unknown>;
  uniqueId: string;
  timeCreated: string;
  provisioningState: string;
  sku: string;
  /** Busy with a long-running operation: another write answers 409. */
  busy?: string;
  /** Disks: pages written since the last incremental snapshot ('all' until the first one). */
  dirty?: Range[] | 'all';
  snapSeq?: number;
  /** Incremental snapshots: family (source disk unique id) and position in it. */
  family?: string;
  seq?: number;
  grants: Set<string>;
}

interface Operation {
  id: string;
  status: 'InProgress' | 'Succeeded' | 'Failed';
  startTime: string;
  endTime?: string;
  result?: { status: number; body?: unknown };
  error?: { code: string; message: string };
}

class ArmError extends Error {
  readonly status: number;
  readonly code: string;
  constructor(status: number, code: string, message: string) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

const ROLE_ACTIONS: Record<string, string[]> = {
  Owner: ['*'],
  Contributor: ['*'],
  Reader: ['*/read'],
  'Disk Snapshot Contributor': [
    'Microsoft.Compute/snapshots/*',
    'Microsoft.Compute/disks/read',
    'Microsoft.Compute/disks/beginGetAccess/action',
    'Microsoft.Storage/storageAccounts/read',
    'Microsoft.Storage/storageAccounts/listKeys/action',
  ],
  'Virtual Machine Contributor': ['Microsoft.Compute/disks/*', 'Microsoft.Compute/snapshots/read'],
};

/** The built-in role an action needs, named in 403 messages. */
function roleFor(action: string): string {
  if (action.startsWith('Microsoft.Compute/snapshots/')) return 'Disk Snapshot Contributor';
  if (action.startsWith('Microsoft.Storage/')) return 'Disk Snapshot Contributor';
  if (action.endsWith('/read')) return 'Reader';
  return 'Virtual Machine Contributor';
}

function allows(role: string, action: string): boolean {
  return (ROLE_ACTIONS[role] ?? []).some((p) => {
    if (p === '*') return true;
    if (p === '*/read') return action.endsWith('/read');
    if (p.endsWith('/*')) return action.startsWith(p.slice(0, -1));
    return p.toLowerCase() === action.toLowerCase();
  });
}

const CONTAINER: Record<Kind, string> = { disks: 'disks', snapshots: 'snapshots' };

export interface ComputeEmulatorStats {
  armRequests: number;
  throttled: number;
  /** Bytes the emulator itself moved between regions (CopyStart). */
  crossRegionBytes: number;
  /** Bytes served by / written through the blob front (what clients moved). */
  blobBytesOut: number;
  blobBytesIn: number;
  /** Access SAS tokens issued by beginGetAccess. */
  grants: number;
}

export class ComputeEmulator {
  readonly options: ComputeEmulatorOptions;
  armEndpoint = '';
  blobEndpoint = '';
  readonly stats: ComputeEmulatorStats = {
    armRequests: 0,
    throttled: 0,
    crossRegionBytes: 0,
    blobBytesOut: 0,
    blobBytesIn: 0,
    grants: 0,
  };
  private server?: http.Server;
  private front?: BlobFront;
  private readonly resources = new Map<string, Resource>();
  private readonly byBlob = new Map<string, Resource>();
  private readonly ops = new Map<string, Operation>();
  private readonly tokens = new Map<string, { clientId: string; expires: number }>();
  /** SAS signature -> grant, for the blob front. */
  private readonly grants = new Map<string, { resource: string; expires: number; revoked: boolean }>();
  /** family|location -> seq -> pages changed since the previous member. */
  private readonly families = new Map<string, Map<number, Range[] | 'all'>>();
  private throttle = { remaining: 0, retryAfterSeconds: 1 };
  private readonly principals: Record<string, EmulatorPrincipal>;
  private readonly now: () => number;

  constructor(options: ComputeEmulatorOptions) {
    this.options = options;
    this.principals = structuredClone(options.principals);
    this.now = options.now ?? Date.now;
  }

  async start(): Promise<void> {
    this.front = await startBlobFront(this.options.azurite, {
      sasRefusal: (sig) => {
        const g = this.grants.get(sig);
        if (!g) return undefined;
        if (g.revoked) return 'The access SAS was revoked (endGetAccess).';
        if (this.now() >= g.expires)
          return `Signed expiry time [${new Date(g.expires).toUTCString()}] must be after current time [${new Date(this.now()).toUTCString()}]`;
        return undefined;
      },
      diff: (target, previous) => this.diffBlobs(target, previous),
      afterCopy: (path) => this.dealias(path),
      onBytes: (dir, n) => {
        if (dir === 'out') this.stats.blobBytesOut += n;
        else this.stats.blobBytesIn += n;
      },
    });
    this.blobEndpoint = this.front.endpoint;
    for (const { account, key } of Object.values(this.options.regions)) {
      const svc = this.service(account, key);
      for (const c of Object.values(CONTAINER)) await svc.getContainerClient(c).createIfNotExists();
    }
    const server = http.createServer((req, res) => {
      void this.handle(req, res);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    this.server = server;
    this.armEndpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  }

  async stop(): Promise<void> {
    const s = this.server;
    if (s) {
      s.closeAllConnections();
      await new Promise<void>((resolve) => s.close(() => resolve()));
    }
    await this.front?.close();
  }

  // ---- test controls -------------------------------------------------------------------------------------

  /** The next `count` ARM requests answer 429 with Retry-After. */
  injectThrottling(count: number, retryAfterSeconds = 1): void {
    this.throttle = { remaining: count, retryAfterSeconds };
  }

  /** Every access SAS issued so far stops working (as if its lifetime had run out). */
  expireAccess(): void {
    for (const g of this.grants.values()) g.expires = Math.min(g.expires, this.now());
  }

  setRoles(clientId: string, scope: string, roles: string[]): void {
    const p = this.principals[clientId];
    if (!p) throw new Error(`unknown principal ${clientId}`);
    p.roles[scope] = roles;
  }

  setLroDelay(ms: number): void {
    this.options.lroDelayMs = ms;
  }

  rgScope(rg: string): string {
    return `/subscriptions/${this.options.subscription}/resourceGroups/${rg}`;
  }

  resourceId(kind: Kind, rg: string, name: string): string {
    return `${this.rgScope(rg)}/providers/Microsoft.Compute/${kind}/${name}`;
  }

  storageAccountId(name: string): string {
    const a = this.storageAccount(name);
    return `${this.rgScope(a.resourceGroup)}/providers/Microsoft.Storage/storageAccounts/${a.name}`;
  }

  /** Creates an empty disk of any size (real Azure sizes disks in GiB; tests want MiB). */
  async createDisk(rg: string, name: string, location: string, sizeBytes: number): Promise<string> {
    const r = this.newResource('disks', rg, name, location, { createOption: 'Empty' }, sizeBytes, false);
    await this.blobOf(r).create(sizeBytes);
    r.dirty = 'all';
    this.add(r);
    return r.id;
  }

  /** Writes into a disk as a VM would; pages written are remembered for the next incremental snapshot. */
  async writeDisk(rg: string, name: string, offset: number, data: Buffer): Promise<void> {
    const r = this.must('disks', rg, name);
    if (offset + data.length > r.sizeBytes) throw new Error('write past the end of the disk');
    const span = alignToPages({ offset, length: data.length });
    let buf = data;
    if (span.offset !== offset || span.length !== data.length) {
      buf = await this.blobOf(r).downloadToBuffer(span.offset, span.length);
      data.copy(buf, offset - span.offset);
    }
    for (const piece of splitRanges([span], 4 << 20))
      await this.blobOf(r).uploadPages(
        buf.subarray(piece.offset - span.offset, piece.offset - span.offset + piece.length),
        piece.offset,
        piece.length,
      );
    if (r.dirty !== 'all') r.dirty = mergeRanges([...(r.dirty ?? []), span]);
  }

  async readDisk(rg: string, name: string): Promise<Buffer> {
    const r = this.must('disks', rg, name);
    return this.blobOf(r).downloadToBuffer(0, r.sizeBytes);
  }

  async readSnapshot(rg: string, name: string): Promise<Buffer> {
    const r = this.must('snapshots', rg, name);
    return this.blobOf(r).downloadToBuffer(0, r.sizeBytes);
  }

  list(
    kind: Kind,
    rg?: string,
  ): { name: string; rg: string; location: string; tags: Record<string, string> }[] {
    return [...this.resources.values()]
      .filter((r) => r.kind === kind && (!rg || r.rg.toLowerCase() === rg.toLowerCase()))
      .map((r) => ({ name: r.name, rg: r.rg, location: r.location, tags: { ...r.tags } }));
  }

  /** Active (unrevoked, unexpired) access grants. */
  activeGrants(): number {
    let n = 0;
    for (const g of this.grants.values()) if (!g.revoked && g.expires > this.now()) n++;
    return n;
  }

  // ---- storage helpers -----------------------------------------------------------------------------------

  private service(account: string, key: string): BlobServiceClient {
    return new BlobServiceClient(
      `${this.blobEndpoint}/${account}`,
      new StorageSharedKeyCredential(account, key),
    );
  }

  private regionAccount(location: string): { account: string; key: string } {
    const a = this.options.regions[location.toLowerCase()] ?? this.options.regions[location];
    if (!a)
      throw new ArmError(400, 'LocationNotAvailableForResourceType', `location '${location}' is not served`);
    return a;
  }

  private container(location: string, kind: Kind): ContainerClient {
    const a = this.regionAccount(location);
    return this.service(a.account, a.key).getContainerClient(CONTAINER[kind]);
  }

  private blobOf(r: Resource): PageBlobClient {
    return this.container(r.location, r.kind).getPageBlobClient(r.uniqueId);
  }

  private blobKey(r: Resource): string {
    return `/${this.regionAccount(r.location).account}/${CONTAINER[r.kind]}/${r.uniqueId}`;
  }

  private sasUrl(
    blob: PageBlobClient,
    account: string,
    key: string,
    seconds: number,
  ): { url: string; sig: string } {
    const now = Date.now();
    const q = generateBlobSASQueryParameters(
      {
        containerName: blob.containerName,
        blobName: blob.name,
        permissions: BlobSASPermissions.parse('r'),
        startsOn: new Date(now - 5 * 60_000),
        expiresOn: new Date(now + seconds * 1000),
      },
      new StorageSharedKeyCredential(account, key),
    );
    return { url: `${blob.url}?${q.toString()}`, sig: q.signature };
  }

  private internalSas(r: Resource): string {
    const a = this.regionAccount(r.location);
    return this.sasUrl(this.blobOf(r), a.account, a.key, 3600).url;
  }

  private storageAccount(name: string): EmulatorStorageAccount {
    const a = (this.options.storageAccounts ?? []).find((x) => x.name.toLowerCase() === name.toLowerCase());
    if (!a) throw new ArmError(404, 'StorageAccountNotFound', `storage account '${name}' not found`);
    return a;
  }

  private keyFor(account: string): string | undefined {
    for (const r of Object.values(this.options.regions)) if (r.account === account) return r.key;
    return (this.options.storageAccounts ?? []).find((a) => a.name === account)?.key;
  }

  /**
   * Gives a freshly copied page blob its own page list (see blobfront.ts), metadata only: a blob snapshot of the
   * destination (Azurite's Create Snapshot copies the page-range array; its range entries are never mutated in
   * place, so a shallow copy is enough), the destination copied back from that snapshot (it then shares its list
   * only with the snapshot), the snapshot deleted. No page data is read or written, so a copy costs O(page ranges)
   * instead of a full rewrite of the blob. Talks to Azurite directly, so none of this counts as client traffic.
   */
  private async dealias(path: string): Promise<void> {
    const [, account, container, ...rest] = path.split('/');
    const key = account ? this.keyFor(account) : undefined;
    if (!account || !container || rest.length === 0 || !key) return;
    const cc = new BlobServiceClient(
      `${this.options.azurite}/${account}`,
      new StorageSharedKeyCredential(account, key),
    ).getContainerClient(container);
    const dest = cc.getPageBlobClient(rest.join('/'));
    const props = await dest.getProperties();
    if (props.blobType !== 'PageBlob') return;
    const { snapshot } = await dest.createSnapshot();
    if (!snapshot) throw new Error(`Azurite made no snapshot of ${path}`);
    const snap = dest.withSnapshot(snapshot);
    try {
      const poller = await dest.beginCopyFromURL(snap.url, { intervalInMs: 20 });
      await poller.pollUntilDone();
    } finally {
      await snap.deleteIfExists();
    }
  }

  // ---- changed ranges ------------------------------------------------------------------------------------

  private familyKey(family: string, location: string): string {
    return `${family}|${location.toLowerCase()}`;
  }

  /** Pages changed between two members of one family (older, newer]; undefined when it cannot tell. */
  private changedBetween(family: string, location: string, fromSeq: number, toSeq: number): Range[] | 'all' {
    const fam = this.families.get(this.familyKey(family, location));
    if (!fam || fromSeq >= toSeq) return 'all';
    const out: Range[] = [];
    for (let s = fromSeq + 1; s <= toSeq; s++) {
      const c = fam.get(s);
      if (c === undefined) continue; // a seq used in another region only
      if (c === 'all') return 'all';
      out.push(...c);
    }
    return mergeRanges(out);
  }

  private async allocated(r: Resource): Promise<Range[]> {
    const pr = await this.blobOf(r).getPageRanges(0, r.sizeBytes);
    // The SDK reports { offset, count } with count = end - start (end inclusive).
    return mergeRanges((pr.pageRange ?? []).map((x) => ({ offset: x.offset, length: (x.count ?? 0) + 1 })));
  }

  private async diffBlobs(
    target: string,
    previous: string,
  ): Promise<{ ranges: Range[]; size: number } | undefined> {
    const t = this.byBlob.get(target);
    const p = this.byBlob.get(previous);
    if (!t || !p || t.family === undefined || t.family !== p.family || t.location !== p.location)
      return undefined;
    if (t.seq === undefined || p.seq === undefined || p.seq >= t.seq) return undefined;
    const c = this.changedBetween(t.family, t.location, p.seq, t.seq);
    return { ranges: c === 'all' ? await this.allocated(t) : c, size: t.sizeBytes };
  }

  // ---- resources -----------------------------------------------------------------------------------------

  private key(kind: Kind, rg: string, name: string): string {
    return `${kind}|${rg.toLowerCase()}|${name.toLowerCase()}`;
  }

  private get(kind: Kind, rg: string, name: string): Resource | undefined {
    return this.resources.get(this.key(kind, rg, name));
  }

  private must(kind: Kind, rg: string, name: string): Resource {
    const r = this.get(kind, rg, name);
    if (!r)
      throw new ArmError(
        404,
        'ResourceNotFound',
        `The Resource 'Microsoft.Compute/${kind}/${name}' under resource group '${rg}' was not found.`,
      );
    return r;
  }

  private byId(id: string): Resource {
    const m = /\/resourceGroups\/([^/]+)\/providers\/Microsoft\.Compute\/(disks|snapshots)\/([^/]+)$/i.exec(
      id,
    );
    if (!m) throw new ArmError(400, 'InvalidParameter', `'${id}' is not a disk or snapshot resource id`);
    const kind = m[2]!.toLowerCase() as Kind;
    return this.must(kind, m[1]!, m[3]!);
  }

  private newResource(
    kind: Kind,
    rg: string,
    name: string,
    location: string,
    creationData: Record<string, unknown>,
    sizeBytes: number,
    incremental: boolean,
  ): Resource {
    if (!/^[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}$/.test(name))
      throw new ArmError(400, 'InvalidResourceName', `Resource name ${name} is invalid.`);
    return {
      kind,
      id: this.resourceId(kind, rg, name),
      rg,
      name,
      location: location.toLowerCase(),
      tags: {},
      sizeBytes,
      incremental,
      creationData,
      uniqueId: crypto.randomUUID(),
      timeCreated: new Date(this.now()).toISOString(),
      provisioningState: 'Succeeded',
      sku: kind === 'disks' ? 'Premium_LRS' : 'Standard_ZRS',
      grants: new Set(),
    };
  }

  private add(r: Resource): void {
    this.resources.set(this.key(r.kind, r.rg, r.name), r);
    this.byBlob.set(this.blobKey(r), r);
  }

  private async remove(r: Resource): Promise<void> {
    this.resources.delete(this.key(r.kind, r.rg, r.name));
    this.byBlob.delete(this.blobKey(r));
    await this.blobOf(r).deleteIfExists();
  }

  private view(r: Resource): Record<string, unknown> {
    const properties: Record<string, unknown> = {
      creationData: r.creationData,
      diskSizeGB: Math.ceil(r.sizeBytes / 2 ** 30),
      diskSizeBytes: r.sizeBytes,
      uniqueId: r.uniqueId,
      timeCreated: r.timeCreated,
      provisioningState: r.provisioningState,
      diskState: r.grants.size > 0 ? 'ActiveSAS' : r.kind === 'disks' ? 'Unattached' : 'Unattached',
    };
    if (r.kind === 'snapshots') {
      properties['incremental'] = r.incremental;
      if (r.family) properties['incrementalSnapshotFamilyId'] = r.family;
      if (r.incremental) properties['completionPercent'] = r.provisioningState === 'Succeeded' ? 100 : 0;
    }
    return {
      id: r.id,
      name: r.name,
      type: `Microsoft.Compute/${r.kind}`,
      location: r.location,
      tags: r.tags,
      sku: { name: r.sku },
      properties,
    };
  }

  // ---- HTTP ----------------------------------------------------------------------------------------------

  private send(
    res: http.ServerResponse,
    status: number,
    body?: unknown,
    headers: Record<string, string> = {},
  ): void {
    const text = body === undefined ? '' : JSON.stringify(body);
    res.writeHead(status, {
      ...(text ? { 'content-type': 'application/json; charset=utf-8' } : {}),
      'x-ms-request-id': crypto.randomUUID(),
      'content-length': String(Buffer.byteLength(text)),
      ...headers,
    });
    res.end(text);
  }

  private async body(req: http.IncomingMessage): Promise<Record<string, unknown>> {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const text = Buffer.concat(chunks).toString('utf8');
    if (!text) return {};
    if ((req.headers['content-type'] ?? '').includes('application/x-www-form-urlencoded'))
      return Object.fromEntries(new URLSearchParams(text));
    try {
      return JSON.parse(text) as Record<string, unknown>;
    } catch {
      throw new ArmError(
        400,
        'InvalidRequestContent',
        'The request content was invalid and could not be deserialized.',
      );
    }
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    try {
      const url = new URL(req.url ?? '/', this.armEndpoint);
      const p = url.pathname;
      const tokenMatch = /^\/([^/]+)\/oauth2\/v2\.0\/token$/.exec(p);
      if (tokenMatch && req.method === 'POST') return this.token(tokenMatch[1]!, await this.body(req), res);
      this.stats.armRequests++;
      if (this.throttle.remaining > 0) {
        this.throttle.remaining--;
        this.stats.throttled++;
        req.resume();
        return this.send(
          res,
          429,
          { error: { code: 'TooManyRequests', message: 'The request is being throttled.' } },
          { 'retry-after': String(this.throttle.retryAfterSeconds) },
        );
      }
      const clientId = this.authenticate(req);
      const sub = this.options.subscription;
      let m: RegExpExecArray | null;
      if (
        (m = new RegExp(
          `^/subscriptions/${sub}/providers/Microsoft\\.Compute/locations/([^/]+)/operations/([^/]+)$`,
          'i',
        ).exec(p))
      )
        return this.operation(m[2]!, url.searchParams.get('monitor') === 'true', res);
      if (
        (m = new RegExp(
          `^/subscriptions/${sub}/resourceGroups/([^/]+)/providers/Microsoft\\.Storage/storageAccounts/([^/]+)$`,
          'i',
        ).exec(p))
      ) {
        const a = this.storageAccount(m[2]!);
        if (a.resourceGroup.toLowerCase() !== m[1]!.toLowerCase())
          throw new ArmError(404, 'ResourceNotFound', `storage account '${m[2]}' not found in '${m[1]}'`);
        this.authorize(clientId, 'Microsoft.Storage/storageAccounts/read', a.resourceGroup, p);
        return this.send(res, 200, {
          id: this.storageAccountId(a.name),
          name: a.name,
          type: 'Microsoft.Storage/storageAccounts',
          location: a.location,
          kind: a.kind ?? 'StorageV2',
          sku: {
            name: a.sku ?? 'Standard_LRS',
            tier: (a.sku ?? 'Standard_LRS').startsWith('Premium') ? 'Premium' : 'Standard',
          },
          properties: {
            primaryEndpoints: { blob: `${this.blobEndpoint}/${a.name}/` },
            provisioningState: 'Succeeded',
          },
        });
      }
      if (
        (m = new RegExp(
          `^/subscriptions/${sub}/resourceGroups/([^/]+)/providers/Microsoft\\.Authorization/permissions$`,
          'i',
        ).exec(p))
      ) {
        // Permissions - List For Resource Group: what the caller may do there (any principal may ask).
        const scopes = [`/subscriptions/${sub}`, this.rgScope(m[1]!)].map((s) => s.toLowerCase());
        const roles = Object.entries(this.principals[clientId]?.roles ?? {})
          .filter(([scope]) => scopes.includes(scope.toLowerCase()))
          .flatMap(([, r]) => r);
        return this.send(res, 200, {
          value: roles.map((r) => ({
            actions: ROLE_ACTIONS[r] ?? [],
            notActions: [],
            dataActions: [],
            notDataActions: [],
          })),
        });
      }
      if (
        (m = new RegExp(
          `^/subscriptions/${sub}(?:/resourceGroups/([^/]+))?/providers/Microsoft\\.Compute/(disks|snapshots)$`,
          'i',
        ).exec(p))
      ) {
        if (req.method !== 'GET') throw new ArmError(405, 'MethodNotAllowed', 'use GET');
        const kind = m[2]!.toLowerCase() as Kind;
        const rg = m[1];
        if (rg) this.authorize(clientId, `Microsoft.Compute/${kind}/read`, rg, p);
        const value = [...this.resources.values()]
          .filter((r) => r.kind === kind && (!rg || r.rg.toLowerCase() === rg.toLowerCase()))
          .filter((r) => {
            if (rg) return true;
            try {
              this.authorize(clientId, `Microsoft.Compute/${kind}/read`, r.rg, r.id);
              return true;
            } catch {
              return false;
            }
          })
          .map((r) => this.view(r));
        return this.send(res, 200, { value });
      }
      if (
        (m = new RegExp(
          `^/subscriptions/${sub}/resourceGroups/([^/]+)/providers/Microsoft\\.Compute/(disks|snapshots)/([^/]+)(?:/(beginGetAccess|endGetAccess))?$`,
          'i',
        ).exec(p))
      ) {
        const kind = m[2]!.toLowerCase() as Kind;
        const rg = m[1]!;
        const name = m[3]!;
        const verb = m[4]?.toLowerCase();
        const body = await this.body(req);
        if (verb === 'begingetaccess' && req.method === 'POST')
          return this.grantAccess(clientId, kind, rg, name, body, res);
        if (verb === 'endgetaccess' && req.method === 'POST')
          return this.revokeAccess(clientId, kind, rg, name, res);
        if (verb) throw new ArmError(405, 'MethodNotAllowed', `${req.method} ${verb}`);
        if (req.method === 'GET') {
          this.authorize(clientId, `Microsoft.Compute/${kind}/read`, rg, p);
          return this.send(res, 200, this.view(this.must(kind, rg, name)));
        }
        if (req.method === 'PUT') return await this.put(clientId, kind, rg, name, body, res);
        if (req.method === 'DELETE') return await this.delete(clientId, kind, rg, name, res);
        throw new ArmError(405, 'MethodNotAllowed', `${req.method} is not supported here`);
      }
      throw new ArmError(404, 'NotFound', `no route for ${req.method} ${p}`);
    } catch (err) {
      if (!res.headersSent) {
        if (err instanceof ArmError)
          this.send(res, err.status, { error: { code: err.code, message: err.message } });
        else this.send(res, 500, { error: { code: 'InternalServerError', message: String(err) } });
      }
    }
  }

  private token(tenant: string, form: Record<string, unknown>, res: http.ServerResponse): void {
    const clientId = String(form['client_id'] ?? '');
    const p = this.principals[clientId];
    if (tenant !== this.options.tenant)
      return this.send(res, 400, {
        error: 'invalid_request',
        error_description: `AADSTS90002: Tenant '${tenant}' not found.`,
      });
    if (!p || form['client_secret'] !== p.secret)
      return this.send(res, 401, {
        error: 'invalid_client',
        error_description: 'AADSTS7000215: Invalid client secret provided.',
      });
    const token = `emu.${crypto.randomBytes(24).toString('base64url')}`;
    this.tokens.set(token, { clientId, expires: this.now() + 3600_000 });
    this.send(res, 200, {
      token_type: 'Bearer',
      expires_in: 3599,
      ext_expires_in: 3599,
      access_token: token,
    });
  }

  private authenticate(req: http.IncomingMessage): string {
    const h = req.headers.authorization ?? '';
    const t = h.startsWith('Bearer ') ? this.tokens.get(h.slice(7)) : undefined;
    if (!t || t.expires <= this.now())
      throw new ArmError(
        401,
        'InvalidAuthenticationToken',
        'The access token is missing, invalid or expired.',
      );
    return t.clientId;
  }

  private authorize(clientId: string, action: string, rg: string, resource: string): void {
    const p = this.principals[clientId];
    const sub = `/subscriptions/${this.options.subscription}`;
    const scopes = [sub, this.rgScope(rg)].map((s) => s.toLowerCase());
    const roles = Object.entries(p?.roles ?? {})
      .filter(([scope]) => scopes.includes(scope.toLowerCase()))
      .flatMap(([, r]) => r);
    if (roles.some((r) => allows(r, action))) return;
    throw new ArmError(
      403,
      'AuthorizationFailed',
      `The client '${clientId}' with object id '${clientId}' does not have authorization to perform action '${action}' over scope '${resource}' or the scope is invalid. ` +
        `Assign the role '${roleFor(action)}' on scope '${this.rgScope(rg)}'. If access was recently granted, please refresh your credentials.`,
    );
  }

  private operation(id: string, monitor: boolean, res: http.ServerResponse): void {
    const op = this.ops.get(id);
    if (!op) throw new ArmError(404, 'OperationNotFound', `operation ${id} not found`);
    if (monitor) {
      if (op.status === 'InProgress')
        return this.send(res, 202, undefined, { location: this.opUrl(id, true) });
      if (op.status === 'Failed') return this.send(res, 400, { error: op.error });
      return this.send(res, op.result?.status ?? 200, op.result?.body);
    }
    const body: Record<string, unknown> = { name: id, status: op.status, startTime: op.startTime };
    if (op.endTime) body['endTime'] = op.endTime;
    if (op.error) body['error'] = op.error;
    if (op.status === 'Succeeded' && op.result?.body !== undefined)
      body['properties'] = { output: op.result.body };
    this.send(res, 200, body);
  }

  private opUrl(id: string, monitor: boolean, location = 'local'): string {
    return `${this.armEndpoint}/subscriptions/${this.options.subscription}/providers/Microsoft.Compute/locations/${location}/operations/${id}?${monitor ? 'monitor=true&' : ''}api-version=2025-01-02`;
  }

  /** Starts `work` as a long-running operation and answers with the polling headers. */
  private lro(
    res: http.ServerResponse,
    status: number,
    body: unknown,
    work: () => Promise<{ status: number; body?: unknown }>,
    onDone?: () => void,
  ): void {
    const id = crypto.randomUUID();
    const op: Operation = { id, status: 'InProgress', startTime: new Date(this.now()).toISOString() };
    this.ops.set(id, op);
    void (async () => {
      try {
        const delay = this.options.lroDelayMs ?? 0;
        if (delay > 0) await new Promise((r) => setTimeout(r, delay));
        op.result = await work();
        op.status = 'Succeeded';
      } catch (err) {
        op.status = 'Failed';
        op.error =
          err instanceof ArmError
            ? { code: err.code, message: err.message }
            : { code: 'InternalOperationError', message: err instanceof Error ? err.message : String(err) };
      } finally {
        op.endTime = new Date(this.now()).toISOString();
        onDone?.();
      }
    })();
    this.send(res, status, body, {
      'azure-asyncoperation': this.opUrl(id, false),
      ...(status === 202 ? { location: this.opUrl(id, true) } : {}),
    });
  }

  private async put(
    clientId: string,
    kind: Kind,
    rg: string,
    name: string,
    body: Record<string, unknown>,
    res: http.ServerResponse,
  ): Promise<void> {
    const path = this.resourceId(kind, rg, name);
    this.authorize(clientId, `Microsoft.Compute/${kind}/write`, rg, path);
    const location = typeof body['location'] === 'string' ? body['location'].toLowerCase() : '';
    if (!location)
      throw new ArmError(400, 'LocationRequired', 'The location property is required for this definition.');
    this.regionAccount(location);
    const props = (body['properties'] ?? {}) as Record<string, unknown>;
    const cd = (props['creationData'] ?? {}) as Record<string, unknown>;
    const tags = (body['tags'] ?? {}) as Record<string, string>;
    const existing = this.get(kind, rg, name);
    if (existing) {
      if (existing.busy)
        throw new ArmError(
          409,
          'OperationNotAllowed',
          `Another operation (${existing.busy}) is in progress on ${kind} '${name}'.`,
        );
      if (
        String(cd['createOption'] ?? '') !== String(existing.creationData['createOption'] ?? '') ||
        String(cd['sourceResourceId'] ?? '') !== String(existing.creationData['sourceResourceId'] ?? '') ||
        String(cd['sourceUri'] ?? '') !== String(existing.creationData['sourceUri'] ?? '')
      )
        throw new ArmError(
          409,
          'PropertyChangeNotAllowed',
          `Changing property 'creationData' is not allowed for existing ${kind} '${name}'.`,
        );
      existing.tags = { ...tags };
      return this.send(res, 200, this.view(existing));
    }
    const option = String(cd['createOption'] ?? '');
    const incremental = props['incremental'] === true;
    let prepare: () => Promise<{ size: number; after?: (r: Resource) => Promise<void> | void }>;
    const sourceId = typeof cd['sourceResourceId'] === 'string' ? cd['sourceResourceId'] : undefined;

    if (option === 'Empty') {
      if (kind !== 'disks') throw new ArmError(400, 'InvalidParameter', 'createOption Empty is for disks');
      const bytes = Number(props['diskSizeBytes'] ?? 0) || Number(props['diskSizeGB'] ?? 0) * 2 ** 30;
      if (!bytes || bytes % PAGE)
        throw new ArmError(
          400,
          'InvalidParameter',
          'diskSizeGB (or diskSizeBytes, a multiple of 512) is required',
        );
      prepare = async () => ({ size: bytes, after: async (r) => void (await this.blobOf(r).create(bytes)) });
    } else if (option === 'Copy' || option === 'CopyStart') {
      if (!sourceId)
        throw new ArmError(
          400,
          'InvalidParameter',
          `creationData.sourceResourceId is required for ${option}`,
        );
      const src = this.byId(sourceId);
      const srcRg = src.rg;
      this.authorize(clientId, `Microsoft.Compute/${src.kind}/read`, srcRg, src.id);
      if (option === 'Copy' && src.location !== location)
        throw new ArmError(
          400,
          'InvalidParameter',
          `The source ${src.kind.slice(0, -1)} is in '${src.location}'; Copy works within one region (use CopyStart for incremental snapshots).`,
        );
      if (option === 'CopyStart') {
        if (kind !== 'snapshots' || src.kind !== 'snapshots' || !src.incremental || !incremental)
          throw new ArmError(
            400,
            'InvalidParameter',
            'CopyStart copies an incremental snapshot into an incremental snapshot.',
          );
        if (src.location === location)
          throw new ArmError(400, 'InvalidParameter', 'CopyStart is for copying to another region.');
      }
      if (src.busy) throw new ArmError(409, 'OperationNotAllowed', `The source is busy (${src.busy}).`);
      prepare = async () => ({
        size: src.sizeBytes,
        after: (r) => (option === 'CopyStart' ? this.copyStart(src, r) : this.copyLocal(src, r)),
      });
    } else if (option === 'Import') {
      const sourceUri = typeof cd['sourceUri'] === 'string' ? cd['sourceUri'] : '';
      const accountId = typeof cd['storageAccountId'] === 'string' ? cd['storageAccountId'] : '';
      if (!sourceUri || !accountId)
        throw new ArmError(
          400,
          'InvalidParameter',
          'Import needs creationData.sourceUri and creationData.storageAccountId',
        );
      const am = /\/resourceGroups\/([^/]+)\/providers\/Microsoft\.Storage\/storageAccounts\/([^/]+)$/i.exec(
        accountId,
      );
      if (!am)
        throw new ArmError(
          400,
          'InvalidParameter',
          `storageAccountId '${accountId}' is not a storage account id`,
        );
      const acct = this.storageAccount(am[2]!);
      this.authorize(clientId, 'Microsoft.Storage/storageAccounts/listKeys/action', am[1]!, accountId);
      if (acct.location.toLowerCase() !== location)
        throw new ArmError(
          400,
          'InvalidParameter',
          `Storage account '${acct.name}' is in '${acct.location}'; a VHD is imported from a storage account in the ${kind.slice(0, -1)}'s region '${location}'.`,
        );
      const u = new URL(sourceUri);
      const [, uAcct, container, ...rest] = blobPath(u).split('/');
      if (uAcct?.toLowerCase() !== acct.name.toLowerCase() || !container || rest.length === 0)
        throw new ArmError(
          400,
          'InvalidParameter',
          `sourceUri '${sourceUri}' is not a blob of storage account '${acct.name}'`,
        );
      const src = this.service(acct.name, acct.key)
        .getContainerClient(container)
        .getPageBlobClient(rest.join('/'));
      const propsResp = await src.getProperties().catch((err: unknown) => {
        throw new ArmError(
          400,
          'InvalidParameter',
          `sourceUri '${sourceUri}' cannot be read: ${String(err)}`,
        );
      });
      if (propsResp.blobType !== 'PageBlob')
        throw new ArmError(
          400,
          'InvalidParameter',
          `sourceUri '${sourceUri}' is a ${propsResp.blobType}; a VHD must be a page blob`,
        );
      const size = propsResp.contentLength ?? 0;
      prepare = async () => ({
        size,
        after: async (r) => {
          const sas = this.sasUrl(src, acct.name, acct.key, 3600).url;
          const poller = await this.blobOf(r).beginCopyFromURL(sas, { intervalInMs: 50 });
          await poller.pollUntilDone();
          if (kind === 'disks') r.dirty = 'all';
          else if (incremental) this.joinNewFamily(r);
        },
      });
    } else {
      throw new ArmError(
        400,
        'InvalidParameter',
        `createOption '${option}' is not supported by this emulator`,
      );
    }

    const { size, after } = await prepare();
    const r = this.newResource(kind, rg, name, location, cd, size, kind === 'snapshots' && incremental);
    r.tags = { ...tags };
    r.provisioningState = 'Creating';
    r.busy = 'create';
    this.add(r);
    this.lro(
      res,
      201,
      this.view(r),
      async () => {
        try {
          await after?.(r);
          r.provisioningState = 'Succeeded';
          return { status: 200, body: this.view(r) };
        } catch (err) {
          await this.remove(r).catch(() => {});
          throw err;
        }
      },
      () => {
        delete r.busy;
      },
    );
  }

  private joinNewFamily(r: Resource): void {
    r.family = r.uniqueId;
    r.seq = 1;
    this.families.set(this.familyKey(r.family, r.location), new Map([[1, 'all']]));
  }

  /** Copy within a region (snapshot of a disk, disk from a snapshot…): server-side in Azurite. */
  private async copyLocal(src: Resource, r: Resource): Promise<void> {
    const poller = await this.blobOf(r).beginCopyFromURL(this.internalSas(src), { intervalInMs: 50 });
    await poller.pollUntilDone();
    if (r.kind === 'disks') {
      r.dirty = 'all';
      return;
    }
    if (!r.incremental) return;
    if (src.kind === 'disks') {
      // The new member of the disk's family records the pages written since the previous member.
      src.snapSeq = (src.snapSeq ?? 0) + 1;
      r.family = src.uniqueId;
      r.seq = src.snapSeq;
      const k = this.familyKey(r.family, r.location);
      const fam = this.families.get(k) ?? new Map<number, Range[] | 'all'>();
      fam.set(r.seq, src.dirty ?? 'all');
      this.families.set(k, fam);
      src.dirty = [];
    } else {
      this.joinNewFamily(r);
    }
  }

  /** Cross-region copy of an incremental snapshot: only what changed since the last copy in that region. */
  private async copyStart(src: Resource, r: Resource): Promise<void> {
    if (src.family === undefined || src.seq === undefined)
      throw new ArmError(400, 'InvalidParameter', 'source is not incremental');
    r.family = src.family;
    r.seq = src.seq;
    const prev = [...this.resources.values()]
      .filter(
        (x) =>
          x.kind === 'snapshots' &&
          x !== r &&
          x.family === src.family &&
          x.location === r.location &&
          x.provisioningState === 'Succeeded' &&
          (x.seq ?? 0) < src.seq!,
      )
      .sort((a, b) => (b.seq ?? 0) - (a.seq ?? 0))[0];
    const changed = prev ? this.changedBetween(src.family, src.location, prev.seq!, src.seq) : 'all';
    const dest = this.blobOf(r);
    if (prev && changed !== 'all') {
      const clone = await dest.beginCopyFromURL(this.internalSas(prev), { intervalInMs: 50 });
      await clone.pollUntilDone();
      if (r.sizeBytes !== prev.sizeBytes) await dest.resize(r.sizeBytes);
      for (const piece of splitRanges(changed, 4 << 20)) {
        const data = await this.blobOf(src).downloadToBuffer(piece.offset, piece.length);
        await dest.uploadPages(data, piece.offset, piece.length);
        this.stats.crossRegionBytes += piece.length;
      }
    } else {
      const poller = await dest.beginCopyFromURL(this.internalSas(src), { intervalInMs: 50 });
      await poller.pollUntilDone();
      this.stats.crossRegionBytes += totalBytes(await this.allocated(src));
    }
    const k = this.familyKey(r.family, r.location);
    const fam = this.families.get(k) ?? new Map<number, Range[] | 'all'>();
    fam.set(r.seq, changed);
    this.families.set(k, fam);
  }

  private async delete(
    clientId: string,
    kind: Kind,
    rg: string,
    name: string,
    res: http.ServerResponse,
  ): Promise<void> {
    const path = this.resourceId(kind, rg, name);
    this.authorize(clientId, `Microsoft.Compute/${kind}/delete`, rg, path);
    const r = this.get(kind, rg, name);
    if (!r) return this.send(res, 204);
    if (r.busy)
      throw new ArmError(
        409,
        'OperationNotAllowed',
        `Another operation (${r.busy}) is in progress on ${kind} '${name}'.`,
      );
    if (r.grants.size > 0)
      throw new ArmError(
        409,
        'OperationNotAllowed',
        `${kind === 'disks' ? 'Disk' : 'Snapshot'} '${name}' has an active SAS (state ActiveSAS); revoke access before deleting.`,
      );
    r.busy = 'delete';
    this.lro(res, 202, undefined, async () => {
      await this.remove(r);
      return { status: 200 };
    });
  }

  private grantAccess(
    clientId: string,
    kind: Kind,
    rg: string,
    name: string,
    body: Record<string, unknown>,
    res: http.ServerResponse,
  ): void {
    this.authorize(
      clientId,
      `Microsoft.Compute/${kind}/beginGetAccess/action`,
      rg,
      this.resourceId(kind, rg, name),
    );
    const r = this.must(kind, rg, name);
    if (r.provisioningState !== 'Succeeded' || r.busy)
      throw new ArmError(
        409,
        'OperationNotAllowed',
        `${kind} '${name}' is ${r.busy ?? r.provisioningState}; try again later.`,
      );
    if (body['access'] !== 'Read')
      throw new ArmError(
        400,
        'InvalidParameter',
        `access '${String(body['access'])}' is not supported (Read only)`,
      );
    const asked = Number(body['durationInSeconds'] ?? 3600);
    const seconds = Math.max(1, Math.min(asked, this.options.maxSasSeconds ?? 3600));
    const a = this.regionAccount(r.location);
    // Azurite checks the real expiry; the front checks the emulator's (which tests can move).
    const { url, sig } = this.sasUrl(this.blobOf(r), a.account, a.key, seconds + 300);
    this.grants.set(sig, { resource: r.id, expires: this.now() + seconds * 1000, revoked: false });
    r.grants.add(sig);
    this.stats.grants++;
    this.lro(res, 202, undefined, async () => ({ status: 200, body: { accessSAS: url } }));
  }

  private revokeAccess(
    clientId: string,
    kind: Kind,
    rg: string,
    name: string,
    res: http.ServerResponse,
  ): void {
    this.authorize(
      clientId,
      `Microsoft.Compute/${kind}/endGetAccess/action`,
      rg,
      this.resourceId(kind, rg, name),
    );
    const r = this.must(kind, rg, name);
    for (const sig of r.grants) {
      const g = this.grants.get(sig);
      if (g) g.revoked = true;
    }
    r.grants.clear();
    this.lro(res, 202, undefined, async () => ({ status: 200 }));
  }
}
