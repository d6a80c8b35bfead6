/**
 * Request/response shapes of the HTTP API that are not domain objects themselves. Bodies are checked with
 * these (and the domain schemas in core/model.ts) before the service is called; the OpenAPI document is
 * generated from the same schemas, so the two cannot drift apart.
 */
import { z } from 'zod';
import {
  ACTION_STATES,
  ACTION_TYPES,
  ActionRunSchema,
  ApplicationSchema,
  ErrorRecordSchema,
  ExportActionSchema,
  FrequencySchema,
  InfraProfileSchema,
  LocationProfileSchema,
  NameSchema,
  PolicySchema,
  ProfileSchema,
  RestorePointSchema,
  RetentionSchema,
} from '../core/index.ts';
import { DR_REQUEST_COMPONENTS, DR_RESPONSE_COMPONENTS } from './dr-schemas.ts';

export const TIER_KINDS = ['local', 'repository', 'region-copy'] as const;

/** PATCH /v1/policies/{name}: any field but name and app. */
export const PolicyPatchSchema = z
  .object({
    frequency: FrequencySchema,
    retention: RetentionSchema,
    export: ExportActionSchema,
    exportRetention: RetentionSchema,
    paused: z.boolean(),
  })
  .partial()
  .strict();

export const RestoreRequestSchema = z
  .object({
    restorePoint: z.string().min(1),
    source: z.enum(['snapshot', 'repository', 'auto']).default('auto'),
    targetApp: NameSchema.optional(),
    volumes: z.array(NameSchema).min(1).optional(),
    dryRun: z.boolean().default(false),
  })
  .strict();

export const RedactedProfileSchema = z.discriminatedUnion('kind', [
  LocationProfileSchema.omit({ secrets: true }).extend({ secretNames: z.array(z.string()) }),
  InfraProfileSchema.omit({ secrets: true }).extend({ secretNames: z.array(z.string()) }),
]);

export const PolicyViewSchema = PolicySchema.extend({
  cron: z.string(),
  nextRunAt: z.string().optional(),
  lastRunAt: z.string().optional(),
});

export const RestorePlanSchema = z.object({
  restorePoint: z.string(),
  app: z.string(),
  targetApp: z.string(),
  inPlace: z.boolean(),
  source: z.enum(['snapshot', 'repository']),
  consistentAt: z.string(),
  volumes: z.array(
    z.object({
      volume: z.string(),
      from: z.string(),
      to: z.string(),
      region: z.string(),
      sizeBytes: z.number().int(),
      overwrite: z.boolean(),
    }),
  ),
  totalBytes: z.number().int(),
});

export const RestoreResultSchema = z.object({
  plan: RestorePlanSchema,
  actionId: z.string().optional(),
  action: ActionRunSchema.optional(),
});

export const RunResultSchema = z.object({ actionId: z.string(), action: ActionRunSchema });

export const ErrorSchema = z.object({
  error: z.object({
    code: z.string(),
    message: z.string(),
    details: z
      .object({
        fields: z.array(z.object({ path: z.string(), message: z.string() })).optional(),
      })
      .catchall(z.unknown())
      .optional(),
  }),
});

export const ActionQuerySchema = z
  .object({
    app: z.string().optional(),
    policy: z.string().optional(),
    type: z.enum(ACTION_TYPES).optional(),
    state: z.enum(ACTION_STATES).optional(),
    run: z.string().optional(),
    limit: z.coerce.number().int().min(1).max(10_000).optional(),
  })
  .strict();

export const RestorePointQuerySchema = z
  .object({
    app: z.string().optional(),
    policy: z.string().optional(),
    tier: z.enum(TIER_KINDS).optional(),
    includeExpired: z.enum(['true', 'false']).optional(),
  })
  .strict();

/** Named schemas for the OpenAPI components: request bodies (input side: defaults are optional)… */
export const REQUEST_COMPONENTS = {
  ApplicationInput: ApplicationSchema,
  ProfileInput: ProfileSchema,
  PolicyInput: PolicySchema,
  PolicyPatch: PolicyPatchSchema,
  RestoreRequest: RestoreRequestSchema,
  ...DR_REQUEST_COMPONENTS,
} as const;
/** …and responses (output side: defaults are filled in, so those fields are always present). */
export const RESPONSE_COMPONENTS = {
  Application: ApplicationSchema,
  Profile: RedactedProfileSchema,
  Policy: PolicyViewSchema,
  RestorePoint: RestorePointSchema,
  RestoreResult: RestoreResultSchema,
  RunResult: RunResultSchema,
  ActionRun: ActionRunSchema,
  ErrorRecord: ErrorRecordSchema,
  Error: ErrorSchema,
  ...DR_RESPONSE_COMPONENTS,
} as const;
