/**
 * The control-plane domain: applications, profiles, policies, restore points and action runs.
 * Schemas validate every external input (API bodies, CLI flags, catalog rows); `parseInput`
 * turns a validation failure into one InputError that lists each bad field by its path.
 */
import { CronExpressionParser } from 'cron-parser';
import { z } from 'zod';
import { InputError } from './errors.ts';

/** Names used in URLs, CLI arguments and catalog keys. */
export const NameSchema = z
  .string()
  .min(1)
  .max(63)
  .regex(
    /^[a-z0-9]([a-z0-9-]*[a-z0-9])?$/,
    'lower-case letters, digits and "-", starting and ending alphanumeric',
  );

export const VolumeSchema = z.object({
  name: NameSchema,
  /** Platform-specific id of the volume (local: path inside the region). */
  ref: z.string().min(1),
  sizeBytes: z.number().int().nonnegative().optional(),
});
export type Volume = z.infer<typeof VolumeSchema>;

export const ApplicationSchema = z.object({
  name: NameSchema,
  /** Infra profile naming the platform and its credentials. */
  infraProfile: NameSchema,
  region: z.string().min(1),
  volumes: z.array(VolumeSchema).min(1),
  labels: z.record(z.string(), z.string()).default({}),
});
export type Application = z.infer<typeof ApplicationSchema>;

/** Secrets are separate fields so that the catalog can encrypt them and the API can leave them out. */
export const LocationProfileSchema = z.object({
  name: NameSchema,
  kind: z.literal('location'),
  /** Object store URL: file:///path, s3://bucket/prefix, azure://account/container/prefix. */
  url: z.string().min(1),
  /** Non-secret settings (endpoint, region, account name…). */
  settings: z.record(z.string(), z.string()).default({}),
  /** Secret values (keys, repository passphrase). Stored encrypted, never returned. */
  secrets: z.record(z.string(), z.string()).default({}),
});
export type LocationProfile = z.infer<typeof LocationProfileSchema>;

export const InfraProfileSchema = z.object({
  name: NameSchema,
  kind: z.literal('infra'),
  /** Platform provider name as known to the platform registry ('local', 'azure', 'aws'…). */
  platform: z.string().min(1),
  settings: z.record(z.string(), z.string()).default({}),
  secrets: z.record(z.string(), z.string()).default({}),
});
export type InfraProfile = z.infer<typeof InfraProfileSchema>;

export const ProfileSchema = z.discriminatedUnion('kind', [LocationProfileSchema, InfraProfileSchema]);
export type Profile = z.infer<typeof ProfileSchema>;

/** Profile as the API and CLI show it: secret names only. */
export type RedactedProfile = Omit<Profile, 'secrets'> & { secretNames: string[] };
export function redactProfile(p: Profile): RedactedProfile {
  const { secrets, ...rest } = p;
  return { ...rest, secretNames: Object.keys(secrets).sort() };
}

export function isValidCron(expr: string): boolean {
  try {
    CronExpressionParser.parse(expr, { tz: 'UTC' });
    return true;
  } catch {
    return false;
  }
}

const PRESETS = ['@hourly', '@daily', '@weekly', '@monthly', '@yearly'] as const;

/** "every day at 02:15" as data; converts to a cron expression. */
export const EverySchema = z
  .object({
    every: z.enum(['hour', 'day', 'week', 'month']),
    minute: z.number().int().min(0).max(59).default(0),
    hour: z.number().int().min(0).max(23).default(0),
    /** 0 = Sunday, for weekly. */
    weekday: z.number().int().min(0).max(6).default(0),
    /** 1–28, for monthly (29–31 do not exist every month). */
    day: z.number().int().min(1).max(28).default(1),
  })
  .strict();

export const FrequencySchema = z.union([
  z.enum(PRESETS),
  z
    .string()
    .min(1)
    .refine((s) => !s.startsWith('@') && isValidCron(s), {
      message: 'not a valid cron expression or preset',
    }),
  EverySchema,
]);
export type Frequency = z.infer<typeof FrequencySchema>;

/** One cron expression (UTC) for any frequency form. */
export function frequencyToCron(f: Frequency): string {
  if (typeof f === 'string') {
    switch (f) {
      case '@hourly':
        return '0 * * * *';
      case '@daily':
        return '0 0 * * *';
      case '@weekly':
        return '0 0 * * 0';
      case '@monthly':
        return '0 0 1 * *';
      case '@yearly':
        return '0 0 1 1 *';
      default:
        return f;
    }
  }
  switch (f.every) {
    case 'hour':
      return `${f.minute} * * * *`;
    case 'day':
      return `${f.minute} ${f.hour} * * *`;
    case 'week':
      return `${f.minute} ${f.hour} * * ${f.weekday}`;
    case 'month':
      return `${f.minute} ${f.hour} ${f.day} * *`;
  }
}

const keep = z.number().int().min(0).max(100_000);
/** Grandfather-father-son: how many of the newest points to keep per period. */
export const RetentionSchema = z
  .object({
    hourly: keep.default(0),
    daily: keep.default(0),
    weekly: keep.default(0),
    monthly: keep.default(0),
    yearly: keep.default(0),
    /** The newest N are always kept, whatever their period. */
    latest: keep.default(1),
  })
  .strict();
export type Retention = z.infer<typeof RetentionSchema>;

export const ExportActionSchema = z.discriminatedUnion('mode', [
  z.object({
    mode: z.literal('datamover'),
    locationProfile: NameSchema,
    repositoryPath: z.string().default(''),
  }),
  z.object({ mode: z.literal('snapshot-copy'), region: z.string().min(1) }),
]);
export type ExportAction = z.infer<typeof ExportActionSchema>;

export const PolicySchema = z.object({
  name: NameSchema,
  app: NameSchema,
  frequency: FrequencySchema,
  /** Retention of the local snapshots. */
  retention: RetentionSchema,
  export: ExportActionSchema.optional(),
  /** Separate retention for what export produced; defaults to the local one. */
  exportRetention: RetentionSchema.optional(),
  paused: z.boolean().default(false),
});
export type Policy = z.infer<typeof PolicySchema>;

/** Where the data of one volume's point-in-time copy lives. */
export const LocalTierSchema = z.object({
  kind: z.literal('local'),
  region: z.string(),
  /** Snapshot id per volume name. */
  snapshots: z.record(z.string(), z.string()),
  expiredAt: z.string().optional(),
});
export const RepositoryTierSchema = z.object({
  kind: z.literal('repository'),
  locationProfile: NameSchema,
  repositoryPath: z.string(),
  /** Repository snapshot id per volume name. */
  snapshots: z.record(z.string(), z.string()),
  bytesTransferred: z.number().int().nonnegative().default(0),
  expiredAt: z.string().optional(),
});
export const RegionCopyTierSchema = z.object({
  kind: z.literal('region-copy'),
  region: z.string(),
  snapshots: z.record(z.string(), z.string()),
  expiredAt: z.string().optional(),
});
export const TierSchema = z.discriminatedUnion('kind', [
  LocalTierSchema,
  RepositoryTierSchema,
  RegionCopyTierSchema,
]);
export type Tier = z.infer<typeof TierSchema>;

export const RestorePointSchema = z.object({
  id: z.string(),
  app: NameSchema,
  policy: NameSchema.optional(),
  /** When the data was consistent (snapshot time). ISO 8601. */
  consistentAt: z.string(),
  /** When the off-site copy (export or region copy) completed. */
  exportCompletedAt: z.string().optional(),
  sizeBytes: z.number().int().nonnegative(),
  tiers: z.array(TierSchema),
});
export type RestorePoint = z.infer<typeof RestorePointSchema>;

export const ACTION_TYPES = ['backup', 'export', 'import', 'restore', 'retire', 'retention'] as const;
export type ActionType = (typeof ACTION_TYPES)[number];
export const ACTION_STATES = [
  'Pending',
  'Running',
  'AttemptFailed',
  'Complete',
  'Failed',
  'Cancelled',
] as const;
export type ActionState = (typeof ACTION_STATES)[number];

/** Allowed state changes; the engine refuses anything else. */
export const ACTION_TRANSITIONS: Readonly<Record<ActionState, readonly ActionState[]>> = {
  Pending: ['Running', 'Cancelled'],
  Running: ['AttemptFailed', 'Complete', 'Failed', 'Cancelled'],
  AttemptFailed: ['Running', 'Failed', 'Cancelled'],
  Complete: [],
  Failed: [],
  Cancelled: [],
};
export function isTerminal(s: ActionState): boolean {
  return ACTION_TRANSITIONS[s].length === 0;
}
export function assertTransition(from: ActionState, to: ActionState): void {
  if (!ACTION_TRANSITIONS[from].includes(to)) {
    throw new InputError(`action cannot go from ${from} to ${to}`, { details: { from, to } });
  }
}

export const PhaseSchema = z.object({
  name: z.string(),
  startedAt: z.string(),
  endedAt: z.string().optional(),
});
export type Phase = z.infer<typeof PhaseSchema>;

/** An error as stored: message, machine code, then each cause. */
export type ErrorRecord = { code: string; message: string; cause?: ErrorRecord };
export const ErrorRecordSchema: z.ZodType<ErrorRecord> = z.lazy(() =>
  z.object({ code: z.string(), message: z.string(), cause: ErrorRecordSchema.optional() }),
);

export const ActionRunSchema = z.object({
  id: z.string(),
  type: z.enum(ACTION_TYPES),
  state: z.enum(ACTION_STATES),
  app: z.string().optional(),
  policy: z.string().optional(),
  restorePoint: z.string().optional(),
  createdAt: z.string(),
  startedAt: z.string().optional(),
  endedAt: z.string().optional(),
  attempt: z.number().int().nonnegative(),
  maxAttempts: z.number().int().positive(),
  phases: z.array(PhaseSchema),
  bytesRead: z.number().int().nonnegative(),
  bytesTransferred: z.number().int().nonnegative(),
  /** 0–1, or undefined when unknown. */
  progress: z.number().min(0).max(1).optional(),
  error: ErrorRecordSchema.optional(),
  /** Action-specific input (restore target, selected volumes…). */
  params: z.record(z.string(), z.unknown()).default({}),
});
export type ActionRun = z.infer<typeof ActionRunSchema>;

/** Turns an error and its cause chain into a storable record (at most 8 deep). */
export function errorRecord(err: unknown, depth = 0): ErrorRecord {
  if (err instanceof Error) {
    const code = (err as { code?: unknown }).code;
    const rec: ErrorRecord = { code: typeof code === 'string' ? code : err.name, message: err.message };
    if (err.cause !== undefined && depth < 8) rec.cause = errorRecord(err.cause, depth + 1);
    return rec;
  }
  return { code: 'UNKNOWN', message: String(err) };
}

/** Field path → message, as API 400 bodies carry them. */
export type FieldErrors = { path: string; message: string }[];

/** Validates external input; failures become one InputError listing every bad field. */
export function parseInput<S extends z.ZodType>(schema: S, value: unknown, what: string): z.infer<S> {
  const r = schema.safeParse(value);
  if (r.success) return r.data;
  const fields: FieldErrors = r.error.issues.map((i) => ({
    path: i.path.map(String).join('.') || '(root)',
    message: i.message,
  }));
  const summary = fields.map((f) => `${f.path}: ${f.message}`).join('; ');
  throw new InputError(`invalid ${what}: ${summary}`, { details: { fields } });
}
