/**
 * Export details: the versioned, signed, copy-pasteable token a source site hands to a DR site.
 *
 *   tern-x1.<base64url(payload JSON)>.<base64url(HMAC-SHA-256(macKey, "tern-x1." + payloadPart))>
 *
 * The payload names where the data is (location profile, repository URL without secrets, copied snapshots per
 * region) and carries the repository passphrase WRAPPED (AES-256-GCM) under a key derived from the import secret
 * that the operator configures on both sites. macKey and wrapKey both come from scrypt(importSecret, salt) via
 * HKDF, so a token is useless without the secret and any change to it is detected.
 */
import {
  createCipheriv,
  createDecipheriv,
  createHmac,
  hkdfSync,
  randomBytes,
  scryptSync,
  timingSafeEqual,
} from 'node:crypto';
import { z } from 'zod';
import { AuthError, InputError } from './errors.ts';

const PREFIX = 'tern-x1';

const b64u = (b: Buffer) => b.toString('base64url');
const unb64u = (s: string) => Buffer.from(s, 'base64url');

export const CopiedSnapshotSchema = z.object({
  volume: z.string().min(1),
  region: z.string().min(1),
  snapshotId: z.string().min(1),
  provider: z.string().min(1),
  sizeBytes: z.number().int().nonnegative(),
});

export const ExportedRestorePointSchema = z.object({
  id: z.string().min(1),
  /** When the application's data was consistent (snapshot time at the source). */
  consistentAt: z.iso.datetime(),
  /** When the off-site copy completed. */
  exportedAt: z.iso.datetime(),
  /** Repository snapshot id per volume (datamover path). */
  repositorySnapshots: z.record(z.string(), z.string()).default({}),
  /** Snapshot copies per volume in other regions (snapshot copy path). */
  copies: z.array(CopiedSnapshotSchema).default([]),
  /** How long the export took, and the bytes it moved off-site. */
  exportDurationMs: z.number().nonnegative().optional(),
  bytesTransferred: z.number().int().nonnegative().optional(),
  incremental: z.boolean().optional(),
});

export const ExportDetailsPayloadSchema = z.object({
  v: z.literal(1),
  createdAt: z.iso.datetime(),
  source: z.object({ site: z.string().min(1), app: z.string().min(1), policy: z.string().optional() }),
  location: z
    .object({
      profile: z.string().min(1),
      /** Repository URL without credentials. */
      repository: z.string().min(1),
    })
    .optional(),
  restorePoints: z.array(ExportedRestorePointSchema),
  /** Export path of this token's stream: 'datamover' (repository) or 'snapshot-copy'. */
  kind: z.enum(['datamover', 'snapshot-copy']).optional(),
  /**
   * Where later exports of the same stream publish their restore point records (an object store URL without
   * secrets), so a DR site holding an older token catches up on every restore point made since.
   */
  stream: z.object({ id: z.string().min(1), records: z.string().min(1) }).optional(),
  /** How the DR site opens the platform that holds the copied snapshots (no secrets; local: region paths). */
  platform: z.object({ type: z.string().min(1), config: z.record(z.string(), z.unknown()) }).optional(),
  key: z.object({
    kdf: z.object({
      alg: z.literal('scrypt'),
      N: z.number().int(),
      r: z.number().int(),
      p: z.number().int(),
      salt: z.string(),
    }),
    /** base64url(nonce | ciphertext | tag) of the repository passphrase. */
    wrappedRepositoryPassword: z.string().optional(),
  }),
});

export type ExportDetailsPayload = z.infer<typeof ExportDetailsPayloadSchema>;
export type ExportedRestorePoint = z.infer<typeof ExportedRestorePointSchema>;

export interface ExportDetails {
  payload: ExportDetailsPayload;
  /** The repository passphrase, unwrapped (only after a valid signature). */
  repositoryPassword?: string;
}

interface DerivedKeys {
  mac: Buffer;
  wrap: Buffer;
}

// Interactive-strength scrypt: tokens are made and read rarely, and the secret may be a human passphrase.
const KDF = { N: 1 << 15, r: 8, p: 1 };

function derive(secret: string, kdf: { N: number; r: number; p: number; salt: string }): DerivedKeys {
  if (kdf.N > 1 << 20 || kdf.r > 32 || kdf.p > 4)
    throw new InputError('export details: KDF parameters out of range');
  const master = scryptSync(secret, unb64u(kdf.salt), 32, {
    N: kdf.N,
    r: kdf.r,
    p: kdf.p,
    maxmem: 256 * kdf.N * kdf.r + 1024 * 1024,
  });
  const okm = Buffer.from(hkdfSync('sha256', master, Buffer.alloc(0), 'tern export details v1', 64));
  return { mac: okm.subarray(0, 32), wrap: okm.subarray(32) };
}

export function createExportDetails(
  input: Omit<ExportDetailsPayload, 'v' | 'key' | 'createdAt'> & { createdAt?: string },
  importSecret: string,
  repositoryPassword?: string,
): string {
  if (importSecret.length < 8) throw new InputError('the import secret must be at least 8 characters');
  const kdf = { alg: 'scrypt' as const, ...KDF, salt: b64u(randomBytes(16)) };
  const keys = derive(importSecret, kdf);
  let wrapped: string | undefined;
  if (repositoryPassword !== undefined) {
    const nonce = randomBytes(12);
    const c = createCipheriv('aes-256-gcm', keys.wrap, nonce);
    c.setAAD(Buffer.from(PREFIX));
    const ct = Buffer.concat([c.update(repositoryPassword, 'utf8'), c.final()]);
    wrapped = b64u(Buffer.concat([nonce, ct, c.getAuthTag()]));
  }
  const payload = ExportDetailsPayloadSchema.parse({
    ...input,
    v: 1,
    createdAt: input.createdAt ?? new Date().toISOString(),
    key: { kdf, ...(wrapped ? { wrappedRepositoryPassword: wrapped } : {}) },
  });
  const body = b64u(Buffer.from(JSON.stringify(payload), 'utf8'));
  const sig = createHmac('sha256', keys.mac).update(`${PREFIX}.${body}`).digest();
  return `${PREFIX}.${body}.${b64u(sig)}`;
}

/** Parse and authenticate a token. Tampered, truncated or foreign tokens are rejected with a clear error. */
export function readExportDetails(token: string, importSecret: string): ExportDetails {
  const text = token.trim().replace(/\s+/g, '');
  const parts = text.split('.');
  if (parts.length !== 3 || parts[0] !== PREFIX)
    throw new InputError(
      `export details are malformed or truncated: expected "${PREFIX}.<payload>.<signature>" (${parts.length} part(s) found)`,
    );
  const [, body, sigText] = parts as [string, string, string];
  let raw: unknown;
  try {
    raw = JSON.parse(unb64u(body).toString('utf8'));
  } catch (err) {
    throw new InputError('export details are malformed or truncated: the payload is not valid JSON', {
      cause: err,
    });
  }
  const parsed = ExportDetailsPayloadSchema.safeParse(raw);
  if (!parsed.success)
    throw new InputError(
      `export details are malformed: ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`,
    );
  const payload = parsed.data;
  const keys = derive(importSecret, payload.key.kdf);
  const expected = createHmac('sha256', keys.mac).update(`${PREFIX}.${body}`).digest();
  const sig = unb64u(sigText);
  if (sig.length !== expected.length || !timingSafeEqual(sig, expected))
    throw new AuthError(
      'export details signature does not match: the token was altered, truncated, or the import secret is wrong',
    );
  let repositoryPassword: string | undefined;
  const wrapped = payload.key.wrappedRepositoryPassword;
  if (wrapped) {
    const buf = unb64u(wrapped);
    const d = createDecipheriv('aes-256-gcm', keys.wrap, buf.subarray(0, 12));
    d.setAAD(Buffer.from(PREFIX));
    d.setAuthTag(buf.subarray(buf.length - 16));
    try {
      repositoryPassword = Buffer.concat([d.update(buf.subarray(12, buf.length - 16)), d.final()]).toString(
        'utf8',
      );
    } catch (err) {
      throw new AuthError('export details: the wrapped repository key cannot be unwrapped', { cause: err });
    }
  }
  return { payload, ...(repositoryPassword !== undefined ? { repositoryPassword } : {}) };
}
