/**
 * The DR module's own small persistence while the engine's SQLite catalog is not wired in: one JSON manifest
 * per site, replaced atomically (temp + fsync + rename), so a kill leaves the previous or the next version,
 * never half of one. Writes within a process are serialized; one process per site writes at a time.
 */
import path from 'node:path';
import { z } from 'zod';
import { IntegrityError } from '../../core/index.ts';
import { ExportedRestorePointSchema, FrequencySchema, NameSchema } from '../../core/index.ts';
import { readJsonFile, writeFileAtomic } from './atomic.ts';
import { RestorePointRecordSchema, VolumeExportSchema } from './types.ts';

const SourceStreamSchema = z.object({
  id: z.string().min(1),
  app: z.string().min(1),
  kind: z.enum(['datamover', 'snapshot-copy']),
  last: z.array(VolumeExportSchema).optional(),
  restorePoints: z.array(ExportedRestorePointSchema).default([]),
});

const SourceStateSchema = z.object({
  v: z.literal(1),
  site: z.string().min(1),
  streams: z.record(z.string(), SourceStreamSchema).default({}),
});
export type SourceState = z.infer<typeof SourceStateSchema>;
export type SourceStream = z.infer<typeof SourceStreamSchema>;

export const ImportedRestorePointSchema = RestorePointRecordSchema.extend({
  importedAt: z.iso.datetime(),
  standby: z.object({ restoredAt: z.iso.datetime(), durationMs: z.number() }).optional(),
});
export type ImportedRestorePoint = z.infer<typeof ImportedRestorePointSchema>;

const ImportStreamSchema = z.object({
  id: z.string().min(1),
  app: z.string().min(1),
  kind: z.enum(['datamover', 'snapshot-copy']),
  sourceSite: z.string().min(1),
  /** The latest export details seen (the repository key inside stays wrapped). */
  token: z.string().min(1),
  location: z.object({ profile: z.string(), repository: z.string() }),
  records: z.string().min(1),
  /** Location profile of this site that holds the credentials for `records`/`location` (name only). */
  locationProfile: z.string().optional(),
  platform: z.object({ type: z.string(), config: z.record(z.string(), z.unknown()) }).optional(),
  keepLast: z.number().int().positive().optional(),
  lastImportAt: z.iso.datetime().optional(),
  restorePoints: z.array(ImportedRestorePointSchema).default([]),
  /** Restore points dropped by DR-side retention: never imported again. */
  forgotten: z.array(z.string()).default([]),
});
export type ImportStream = z.infer<typeof ImportStreamSchema>;

export const RestoreRunSchema = z.object({
  stream: z.string(),
  app: z.string(),
  restorePoint: z.string(),
  consistentAt: z.iso.datetime(),
  path: z.enum(['repository', 'snapshot-copy']),
  startedAt: z.iso.datetime(),
  durationMs: z.number().nonnegative(),
  bytesTransferred: z.number().int().nonnegative(),
  volumes: z.array(z.object({ volume: z.string(), restoredAs: z.string(), region: z.string() })),
});
export type RestoreRun = z.infer<typeof RestoreRunSchema>;

/** An import policy of the DR site: import a stream on a schedule, with retention and an optional standby. */
export const ImportPolicySchema = z.object({
  name: NameSchema,
  kind: z.literal('import').default('import'),
  /** Export details of the stream (its repository key stays wrapped). */
  token: z.string().min(1),
  frequency: FrequencySchema,
  keepLast: z.number().int().positive().optional(),
  /** Location profile of this site with the credentials for the export location (s3://, azblob://). */
  locationProfile: NameSchema.optional(),
  restoreAfterImport: z.boolean().default(false),
  /** Warm standby target: region and volume name prefix (default: the source volume names). */
  standby: z.object({ region: z.string().optional(), prefix: z.string().optional() }).optional(),
  paused: z.boolean().default(false),
  lastRunAt: z.iso.datetime().optional(),
  lastResult: z
    .object({
      at: z.iso.datetime(),
      imported: z.number().int().nonnegative(),
      error: z.string().optional(),
    })
    .optional(),
});
export type ImportPolicy = z.infer<typeof ImportPolicySchema>;

const DrStateSchema = z.object({
  v: z.literal(1),
  site: z.string().min(1),
  imports: z.record(z.string(), ImportStreamSchema).default({}),
  policies: z.record(z.string(), ImportPolicySchema).default({}),
  restores: z.array(RestoreRunSchema).default([]),
});
export type DrState = z.infer<typeof DrStateSchema>;

class JsonManifest<T> {
  private chain: Promise<unknown> = Promise.resolve();
  readonly file: string;
  private readonly schema: z.ZodType<T>;
  private readonly empty: () => T;

  constructor(file: string, schema: z.ZodType<T>, empty: () => T) {
    this.file = file;
    this.schema = schema;
    this.empty = empty;
  }

  async read(): Promise<T> {
    const raw = await readJsonFile(this.file).catch((err: unknown) => {
      throw new IntegrityError(`site manifest ${this.file} is unreadable`, { cause: err });
    });
    if (raw === undefined) return this.empty();
    const parsed = this.schema.safeParse(raw);
    if (!parsed.success)
      throw new IntegrityError(`site manifest ${this.file} does not match its schema`, {
        cause: parsed.error,
      });
    return parsed.data;
  }

  /** Read-modify-write, serialized in this process; the file is replaced atomically. */
  update<R>(fn: (state: T) => R | Promise<R>): Promise<R> {
    const next = this.chain.then(async () => {
      const s = await this.read();
      const r = await fn(s);
      await writeFileAtomic(this.file, JSON.stringify(s, null, 2));
      return r;
    });
    this.chain = next.catch(() => undefined);
    return next;
  }
}

export class SourceStateStore extends JsonManifest<SourceState> {
  constructor(dir: string, site: string) {
    super(path.join(dir, 'dr-source.json'), SourceStateSchema as z.ZodType<SourceState>, () => ({
      v: 1,
      site,
      streams: {},
    }));
  }
}

export class DrStateStore extends JsonManifest<DrState> {
  constructor(dir: string, site: string) {
    super(path.join(dir, 'dr-site.json'), DrStateSchema as z.ZodType<DrState>, () => ({
      v: 1,
      site,
      imports: {},
      policies: {},
      restores: [],
    }));
  }
}
