/**
 * Request/response shapes of the DR routes (/v1/dr/…). Bodies are checked with these before DrService is
 * called, and the OpenAPI document is generated from them (see schemas.ts).
 */
import { z } from 'zod';
import { ImportPolicySchema } from '../engine/dr/index.ts';

/** POST /v1/dr/export-details?policy=P: the import secret travels in the body only (never a query, never logged). */
export const ExportDetailsRequestSchema = z
  .object({
    importSecret: z.string().min(8, 'the import secret needs at least 8 characters'),
    /** Records location of a snapshot-copy policy (default: the DR region's path when the platform has one). */
    records: z.string().min(1).optional(),
  })
  .strict();

export const ExportDetailsQuerySchema = z.object({ policy: z.string().min(1) }).strict();

export const ExportDetailsResultSchema = z.object({
  token: z.string(),
  stream: z.string(),
  published: z.array(z.string()),
  restorePoints: z.number().int(),
});

export const ImportPolicyInputSchema = ImportPolicySchema.pick({
  name: true,
  token: true,
  frequency: true,
  keepLast: true,
  locationProfile: true,
  restoreAfterImport: true,
  standby: true,
  paused: true,
}).strict();

/** An import policy as shown: the token stays inside the server. */
export const ImportPolicyViewSchema = ImportPolicySchema.omit({ token: true }).extend({
  stream: z.string(),
  app: z.string(),
  sourceSite: z.string(),
});

export const ImportRequestSchema = z
  .object({
    token: z.string().min(1),
    keepLast: z.number().int().positive().optional(),
    locationProfile: z.string().min(1).optional(),
  })
  .strict();

export const ImportResultSchema = z.object({
  stream: z.string(),
  app: z.string(),
  kind: z.enum(['datamover', 'snapshot-copy']),
  imported: z.array(z.string()),
  alreadyImported: z.number().int(),
  missing: z.array(z.string()),
  rejected: z.array(z.string()),
  forgotten: z.array(z.string()),
  standby: z.object({ restorePoint: z.string(), durationMs: z.number() }).optional(),
});

const Rule321Schema = z.object({
  copies: z.number().int(),
  media: z.number().int(),
  offsite: z.number().int(),
  ok: z.boolean(),
});

export const DrPathReportSchema = z.object({
  app: z.string(),
  stream: z.string(),
  path: z.enum(['repository', 'snapshot-copy']),
  location: z.string(),
  restorePoints: z.number().int(),
  imported: z.number().int(),
  lastImportAt: z.string().optional(),
  newestConsistentAt: z.string().optional(),
  rpoSeconds: z.number().optional(),
  exportFirstMs: z.number().optional(),
  exportIncrementalMs: z.number().optional(),
  exportIncrementalPercent: z.number().optional(),
  bytesFirst: z.number().optional(),
  bytesIncremental: z.number().optional(),
  restoreMs: z.number().optional(),
  restoredAt: z.string().optional(),
  rule321: Rule321Schema,
});

export const DrAppReportSchema = z.object({
  app: z.string(),
  paths: z.array(DrPathReportSchema),
  rpoSeconds: z.number().optional(),
  rule321: Rule321Schema,
});

export const DrRestoreRequestSchema = z
  .object({
    app: z.string().min(1),
    path: z.enum(['auto', 'repository', 'snapshot-copy']).default('auto'),
    restorePoint: z.string().min(1).optional(),
    region: z.string().min(1).optional(),
    /** Name of the restored volume (one-volume apps). */
    name: z.string().min(1).optional(),
    /** Directory (on the server) where repository restores write volumes; default: the platform region. */
    targetDir: z.string().min(1).optional(),
    overwrite: z.boolean().default(false),
  })
  .strict();

export const DrRestoreResultSchema = z.object({
  stream: z.string(),
  app: z.string(),
  restorePoint: z.string(),
  consistentAt: z.string(),
  path: z.enum(['repository', 'snapshot-copy']),
  startedAt: z.string(),
  durationMs: z.number(),
  bytesTransferred: z.number().int(),
  volumes: z.array(z.object({ volume: z.string(), restoredAs: z.string(), region: z.string() })),
  outputs: z.array(z.object({ volume: z.string(), path: z.string().optional() })),
});

export const ImportPolicyRunSchema = z.object({
  policy: z.string(),
  result: ImportResultSchema.optional(),
  error: z.string().optional(),
});

export const DR_REQUEST_COMPONENTS = {
  ExportDetailsRequest: ExportDetailsRequestSchema,
  ImportPolicyInput: ImportPolicyInputSchema,
  ImportRequest: ImportRequestSchema,
  DrRestoreRequest: DrRestoreRequestSchema,
} as const;

export const DR_RESPONSE_COMPONENTS = {
  ExportDetailsResult: ExportDetailsResultSchema,
  ImportPolicy: ImportPolicyViewSchema,
  ImportResult: ImportResultSchema,
  ImportPolicyRun: ImportPolicyRunSchema,
  DrAppReport: DrAppReportSchema,
  DrRestoreResult: DrRestoreResultSchema,
} as const;
