/**
 * AWS EBS. Volumes are EBS volumes, snapshots are EBS snapshots (tag `tern-volume`), regions are AWS regions:
 * the source region first, DR regions after it. A cross-region copy is CopySnapshot issued in the destination
 * region; EBS itself copies only the blocks that changed since the previous copy of the same lineage there, so
 * the client sees no byte counts: bytesTransferred is the snapshot's full size for a first copy and the size of
 * the changed blocks is not reported for later ones (0, with details.bytes = 'service-side').
 */
import {
  CopySnapshotCommand,
  CreateSnapshotCommand,
  CreateVolumeCommand,
  DeleteSnapshotCommand,
  DeleteVolumeCommand,
  DescribeSnapshotsCommand,
  DescribeVolumesCommand,
  EC2Client,
  paginateDescribeSnapshots,
  paginateDescribeVolumes,
} from '@aws-sdk/client-ec2';
import type { Snapshot, Tag, Volume } from '@aws-sdk/client-ec2';
import { z } from 'zod';
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
  parseInput,
  systemClock,
  throwIfAborted,
} from '../../core/index.ts';
import type { Clock, RunOptions } from '../../core/index.ts';
import type { CopyResult, Platform, PlatformInfo, SnapshotRef, VolumeRef } from '../types.ts';

export const AwsPlatformConfigSchema = z.object({
  /** Regions, the source region first (e.g. ["us-east-1", "us-west-2"]). */
  regions: z.array(z.string().regex(/^[a-z]{2}(-[a-z]+)+-\d+$/, 'an AWS region such as us-east-1')).min(1),
  /** Endpoint override (moto, LocalStack); default: AWS. */
  endpoint: z.url().optional(),
  accessKeyId: z.string().min(1).optional(),
  /** Secret. Without keys the SDK's default chain (env, profile, instance role) is used. */
  secretAccessKey: z.string().min(1).optional(),
  sessionToken: z.string().min(1).optional(),
  /** Availability zone per region for restored volumes (default "<region>a"). */
  availabilityZones: z.record(z.string(), z.string()).default({}),
  /** KMS key per DR region for encrypted copies. */
  kmsKeyIds: z.record(z.string(), z.string()).default({}),
  /** Poll interval while snapshots complete (default 5000 ms). */
  pollIntervalMs: z.number().int().positive().optional(),
  /** Give up waiting for a snapshot or volume after this long (default 6 h). */
  waitTimeoutMs: z.number().int().positive().optional(),
});
export type AwsPlatformConfig = z.input<typeof AwsPlatformConfigSchema>;
export type ParsedAwsConfig = z.infer<typeof AwsPlatformConfigSchema>;

export function parseAwsConfig(config: Record<string, unknown>): ParsedAwsConfig {
  return parseInput(AwsPlatformConfigSchema, config, 'aws platform config');
}

const TAG_VOLUME = 'tern-volume';
const TAG_VOLUME_ID = 'tern-volume-id';
const TAG_SOURCE = 'tern-source';
const TAG_PARENT = 'tern-parent';
/** Client time in ms: EC2 StartTime has one-second resolution, so two quick snapshots would tie. */
const TAG_CREATED = 'tern-created';
const GiB = 2 ** 30;

function tagsOf(tags: Tag[] | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const t of tags ?? []) if (t.Key !== undefined) out[t.Key] = t.Value ?? '';
  return out;
}

function toTags(tags: Record<string, string>): Tag[] {
  return Object.entries(tags).map(([Key, Value]) => ({ Key, Value }));
}

function nameOf(err: unknown): string {
  return err && typeof err === 'object' && 'name' in err && typeof err.name === 'string' ? err.name : '';
}

function httpStatus(err: unknown): number | undefined {
  const m =
    err && typeof err === 'object' && '$metadata' in err
      ? (err.$metadata as { httpStatusCode?: number })
      : undefined;
  return m?.httpStatusCode;
}

/** Snapshot ids carry their region: "<region>/<snap-…>" (EBS ids alone do not say where they live). */
function parseSnapId(id: string): { region: string; snapshotId: string } {
  const m = /^([a-z]{2}(?:-[a-z]+)+-\d+)\/(snap-[0-9a-f]+)$/.exec(id);
  if (!m) throw new InputError(`not a Tern EBS snapshot id ("<region>/snap-…"): "${id}"`);
  return { region: m[1]!, snapshotId: m[2]! };
}

export class AwsPlatform implements Platform {
  readonly provider = 'aws';
  readonly config: ParsedAwsConfig;
  private readonly clients = new Map<string, EC2Client>();

  private readonly clock: Clock;

  constructor(config: ParsedAwsConfig | Record<string, unknown>, deps: { clock?: Clock } = {}) {
    this.config = parseAwsConfig(config as Record<string, unknown>);
    this.clock = deps.clock ?? systemClock;
  }

  private region(name: string): string {
    if (!this.config.regions.includes(name))
      throw new NotFoundError(
        `region "${name}" is not configured (known: ${this.config.regions.join(', ')})`,
        {
          details: { region: name },
        },
      );
    return name;
  }

  ec2(region: string): EC2Client {
    let c = this.clients.get(this.region(region));
    if (!c) {
      const { accessKeyId, secretAccessKey, sessionToken, endpoint } = this.config;
      c = new EC2Client({
        region,
        maxAttempts: 8,
        ...(endpoint ? { endpoint } : {}),
        ...(accessKeyId && secretAccessKey
          ? { credentials: { accessKeyId, secretAccessKey, ...(sessionToken ? { sessionToken } : {}) } }
          : {}),
      });
      this.clients.set(region, c);
    }
    return c;
  }

  private fail(err: unknown, what: string, action: string, region: string, signal?: AbortSignal): Error {
    if (signal?.aborted || nameOf(err) === 'AbortError')
      return new CancelledError(`${what}: cancelled`, { cause: err });
    if (err instanceof TernError) return err;
    const code = nameOf(err);
    const msg = err instanceof Error ? err.message : String(err);
    const details = { code, region, action, status: httpStatus(err) };
    if (code.endsWith('.NotFound') || code.endsWith('.Malformed'))
      return new NotFoundError(`${what}: ${msg}`, { cause: err, details });
    if (code === 'UnauthorizedOperation' || code === 'AccessDenied' || code === 'AccessDeniedException')
      return new ForbiddenError(
        `${what}: the credentials may not ${action} in ${region} (IAM policy needs "${action}")`,
        {
          cause: err,
          details,
        },
      );
    if (code === 'AuthFailure' || code === 'InvalidClientTokenId' || code === 'SignatureDoesNotMatch')
      return new AuthError(`${what}: AWS rejected the credentials (${code})`, { cause: err, details });
    if (
      code === 'IncorrectState' ||
      code === 'VolumeInUse' ||
      code === 'InvalidSnapshot.InUse' ||
      code.endsWith('.Duplicate')
    )
      return new ConflictError(`${what}: ${msg}`, { cause: err, details });
    if (
      code === 'RequestLimitExceeded' ||
      code === 'SnapshotCreationPerVolumeRateExceeded' ||
      code === 'ResourceLimitExceeded'
    )
      return new UnavailableError(`${what}: AWS is throttling (${code})`, { cause: err, details });
    return new StorageError(`${what}: ${msg}`, { cause: err, details });
  }

  private async call<T>(
    what: string,
    action: string,
    region: string,
    fn: () => Promise<T>,
    signal?: AbortSignal,
  ): Promise<T> {
    throwIfAborted(signal);
    try {
      return await fn();
    } catch (err) {
      throw this.fail(err, what, action, region, signal);
    }
  }

  private async sleep(signal?: AbortSignal): Promise<void> {
    try {
      await this.clock.sleep(this.config.pollIntervalMs ?? 5000, signal);
    } catch (err) {
      throw new CancelledError('operation cancelled', { cause: err });
    }
  }

  async info(_opts?: RunOptions): Promise<PlatformInfo> {
    return {
      provider: this.provider,
      regions: this.config.regions.map((name, i) => ({
        name,
        snapshotMethod: 'ebs-snapshot',
        details: { role: i === 0 ? 'source' : 'dr', availabilityZone: this.az(name) },
      })),
    };
  }

  private az(region: string): string {
    return this.config.availabilityZones[region] ?? `${region}a`;
  }

  private volumeRef(v: Volume, region: string): VolumeRef {
    return {
      id: v.VolumeId ?? '',
      region,
      name: tagsOf(v.Tags)['Name'] ?? v.VolumeId ?? '',
      sizeBytes: (v.Size ?? 0) * GiB,
      kind: 'block',
    };
  }

  async listVolumes(region: string, opts: RunOptions = {}): Promise<VolumeRef[]> {
    return this.call(
      `list volumes in ${region}`,
      'ec2:DescribeVolumes',
      region,
      async () => {
        const out: VolumeRef[] = [];
        for await (const page of paginateDescribeVolumes({ client: this.ec2(region) }, {}))
          for (const v of page.Volumes ?? []) out.push(this.volumeRef(v, region));
        return out.sort((a, b) => a.name.localeCompare(b.name) || a.id.localeCompare(b.id));
      },
      opts.signal,
    );
  }

  toRef(s: Snapshot, region: string): SnapshotRef {
    const tags = tagsOf(s.Tags);
    const ref: SnapshotRef = {
      id: `${region}/${s.SnapshotId ?? ''}`,
      volumeId: tags[TAG_VOLUME_ID] ?? s.VolumeId ?? '',
      region,
      sizeBytes: (s.VolumeSize ?? 0) * GiB,
      createdAt: (s.StartTime ?? new Date(0)).toISOString(),
      kind: 'block',
      details: {
        snapshotId: s.SnapshotId ?? '',
        state: s.State ?? '',
        ...(tags[TAG_CREATED] ? { created: tags[TAG_CREATED] } : {}),
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

  private async describe(region: string, snapshotId: string, signal?: AbortSignal): Promise<Snapshot> {
    const r = await this.call(
      `describe snapshot ${snapshotId}`,
      'ec2:DescribeSnapshots',
      region,
      () =>
        this.ec2(region).send(new DescribeSnapshotsCommand({ SnapshotIds: [snapshotId] }), {
          abortSignal: signal,
        }),
      signal,
    );
    const s = r.Snapshots?.[0];
    if (!s) throw new NotFoundError(`snapshot ${snapshotId} not found in ${region}`);
    return s;
  }

  /** Polls until the snapshot completes; an error state or the timeout fails the operation. */
  private async waitCompleted(
    region: string,
    snapshotId: string,
    opts: RunOptions,
    bytesTotal: number,
  ): Promise<Snapshot> {
    const deadline = Date.now() + (this.config.waitTimeoutMs ?? 6 * 3600_000);
    for (;;) {
      const s = await this.describe(region, snapshotId, opts.signal);
      const pct = Number.parseInt(s.Progress ?? '0', 10) || 0;
      opts.onProgress?.({
        phase: 'snapshot',
        bytesRead: Math.round((bytesTotal * pct) / 100),
        bytesTotal,
        bytesTransferred: 0,
      });
      if (s.State === 'completed') return s;
      if (s.State === 'error' || s.State === 'recoverable')
        throw new StorageError(`snapshot ${snapshotId} in ${region} failed: ${s.StateMessage ?? s.State}`);
      if (Date.now() > deadline)
        throw new UnavailableError(
          `snapshot ${snapshotId} in ${region} still ${s.State} after the wait limit`,
        );
      await this.sleep(opts.signal);
    }
  }

  async snapshot(
    volume: VolumeRef,
    opts: RunOptions & { tags?: Record<string, string> } = {},
  ): Promise<SnapshotRef> {
    const region = this.region(volume.region);
    const created = await this.call(
      `snapshot volume ${volume.name}`,
      'ec2:CreateSnapshot',
      region,
      () =>
        this.ec2(region).send(
          new CreateSnapshotCommand({
            VolumeId: volume.id,
            Description: `tern snapshot of ${volume.name}`,
            TagSpecifications: [
              {
                ResourceType: 'snapshot',
                Tags: toTags({
                  ...opts.tags,
                  [TAG_VOLUME]: volume.name,
                  [TAG_VOLUME_ID]: volume.id,
                  [TAG_CREATED]: this.clock.now().toISOString(),
                }),
              },
            ],
          }),
          { abortSignal: opts.signal },
        ),
      opts.signal,
    );
    const id = created.SnapshotId ?? '';
    try {
      return this.toRef(await this.waitCompleted(region, id, opts, volume.sizeBytes), region);
    } catch (err) {
      // A snapshot the caller never learns about would be paid for forever.
      await this.ec2(region)
        .send(new DeleteSnapshotCommand({ SnapshotId: id }))
        .catch(() => {});
      throw err;
    }
  }

  async listSnapshots(volume: VolumeRef, opts: RunOptions = {}): Promise<SnapshotRef[]> {
    const region = this.region(volume.region);
    return this.call(
      `list snapshots in ${region}`,
      'ec2:DescribeSnapshots',
      region,
      async () => {
        const out: SnapshotRef[] = [];
        for await (const page of paginateDescribeSnapshots(
          { client: this.ec2(region) },
          { OwnerIds: ['self'], Filters: [{ Name: `tag:${TAG_VOLUME}`, Values: [volume.name] }] },
        ))
          for (const s of page.Snapshots ?? []) if (s.State === 'completed') out.push(this.toRef(s, region));
        const key = (r: SnapshotRef) => r.details?.['created'] ?? r.createdAt;
        return out.sort((a, b) => key(a).localeCompare(key(b)) || a.id.localeCompare(b.id));
      },
      opts.signal,
    );
  }

  async deleteSnapshot(snapshot: SnapshotRef, opts: RunOptions = {}): Promise<void> {
    const { region, snapshotId } = parseSnapId(snapshot.id);
    await this.call(
      `delete snapshot ${snapshotId}`,
      'ec2:DeleteSnapshot',
      region,
      () =>
        this.ec2(region).send(new DeleteSnapshotCommand({ SnapshotId: snapshotId }), {
          abortSignal: opts.signal,
        }),
      opts.signal,
    );
  }

  async copySnapshot(
    snapshot: SnapshotRef,
    toRegion: string,
    opts: RunOptions & { previousCopy?: SnapshotRef; baseSnapshot?: SnapshotRef } = {},
  ): Promise<CopyResult> {
    const src = parseSnapId(snapshot.id);
    this.region(toRegion);
    if (toRegion === src.region) throw new InputError('copySnapshot needs a different region');
    const s = await this.describe(src.region, src.snapshotId, opts.signal);
    if (s.State !== 'completed')
      throw new ConflictError(`snapshot ${src.snapshotId} is ${s.State}, not completed`);
    if (opts.previousCopy) {
      const p = parseSnapId(opts.previousCopy.id);
      if (p.region !== toRegion) throw new InputError('previousCopy must be in the target region');
      await this.describe(p.region, p.snapshotId, opts.signal);
    }
    const tags: Record<string, string> = {
      ...tagsOf(s.Tags),
      [TAG_SOURCE]: snapshot.id,
      [TAG_CREATED]: this.clock.now().toISOString(),
    };
    if (opts.previousCopy) tags[TAG_PARENT] = opts.previousCopy.id;
    const kms = this.config.kmsKeyIds[toRegion];
    const r = await this.call(
      `copy snapshot ${src.snapshotId} to ${toRegion}`,
      'ec2:CopySnapshot',
      toRegion,
      () =>
        this.ec2(toRegion).send(
          new CopySnapshotCommand({
            SourceRegion: src.region,
            SourceSnapshotId: src.snapshotId,
            Description: `tern copy of ${snapshot.id}`,
            TagSpecifications: [{ ResourceType: 'snapshot', Tags: toTags(tags) }],
            ...(kms ? { Encrypted: true, KmsKeyId: kms } : {}),
          }),
          { abortSignal: opts.signal },
        ),
      opts.signal,
    );
    const copyId = r.SnapshotId ?? '';
    const size = (s.VolumeSize ?? 0) * GiB;
    try {
      const done = await this.waitCompleted(toRegion, copyId, opts, size);
      throwIfAborted(opts.signal);
      const ref = this.toRef(done, toRegion);
      const incremental = Boolean(opts.previousCopy);
      ref.details = { ...ref.details, bytes: incremental ? 'service-side' : 'full' };
      const full = s.FullSnapshotSizeInBytes ?? size;
      opts.onProgress?.({
        phase: 'copy',
        bytesRead: full,
        bytesTotal: full,
        bytesTransferred: incremental ? 0 : full,
      });
      return { snapshot: ref, bytesTransferred: incremental ? 0 : full, incremental };
    } catch (err) {
      // Cancelled or failed: the half-made copy must not be left at DR.
      await this.ec2(toRegion)
        .send(new DeleteSnapshotCommand({ SnapshotId: copyId }))
        .catch(() => {});
      throw err;
    }
  }

  private async findVolume(region: string, name: string, signal?: AbortSignal): Promise<Volume | undefined> {
    const r = await this.call(
      `find volume ${name}`,
      'ec2:DescribeVolumes',
      region,
      () =>
        this.ec2(region).send(
          new DescribeVolumesCommand({ Filters: [{ Name: 'tag:Name', Values: [name] }] }),
          {
            abortSignal: signal,
          },
        ),
      signal,
    );
    return r.Volumes?.find((v) => v.State !== 'deleting' && v.State !== 'deleted');
  }

  async restoreVolume(
    snapshot: SnapshotRef,
    target: { name: string; region?: string; overwrite?: boolean },
    opts: RunOptions = {},
  ): Promise<VolumeRef> {
    const { region: snapRegion, snapshotId } = parseSnapId(snapshot.id);
    const region = target.region ?? snapRegion;
    if (region !== snapRegion)
      throw new InputError(`a volume is made from a snapshot in its region (${snapRegion}); copy it first`);
    const existing = await this.findVolume(region, target.name, opts.signal);
    if (existing) {
      if (!target.overwrite)
        throw new ConflictError(
          `volume "${target.name}" exists in ${region} (${existing.VolumeId}); use overwrite`,
        );
      if ((existing.Attachments ?? []).length > 0 || existing.State === 'in-use')
        throw new ConflictError(
          `volume "${target.name}" (${existing.VolumeId}) is attached; detach it first`,
        );
      await this.call(
        `delete volume ${existing.VolumeId}`,
        'ec2:DeleteVolume',
        region,
        () =>
          this.ec2(region).send(new DeleteVolumeCommand({ VolumeId: existing.VolumeId }), {
            abortSignal: opts.signal,
          }),
        opts.signal,
      );
    }
    const v = await this.call(
      `create volume ${target.name} from ${snapshotId}`,
      'ec2:CreateVolume',
      region,
      () =>
        this.ec2(region).send(
          new CreateVolumeCommand({
            SnapshotId: snapshotId,
            AvailabilityZone: this.az(region),
            VolumeType: 'gp3',
            TagSpecifications: [
              { ResourceType: 'volume', Tags: toTags({ Name: target.name, [TAG_SOURCE]: snapshot.id }) },
            ],
          }),
          { abortSignal: opts.signal },
        ),
      opts.signal,
    );
    const id = v.VolumeId ?? '';
    const deadline = Date.now() + (this.config.waitTimeoutMs ?? 6 * 3600_000);
    for (;;) {
      const d = await this.call(
        `describe volume ${id}`,
        'ec2:DescribeVolumes',
        region,
        () =>
          this.ec2(region).send(new DescribeVolumesCommand({ VolumeIds: [id] }), {
            abortSignal: opts.signal,
          }),
        opts.signal,
      );
      const cur = d.Volumes?.[0];
      if (cur?.State === 'available' || cur?.State === 'in-use') return this.volumeRef(cur, region);
      if (cur?.State === 'error') throw new StorageError(`volume ${id} from ${snapshotId} failed`);
      if (Date.now() > deadline)
        throw new UnavailableError(`volume ${id} still ${cur?.State} after the wait limit`);
      await this.sleep(opts.signal);
    }
  }
}
