/** One translation of a cloud store's failure (HTTP status, service code, socket error) into the core typed errors. */
import {
  AuthError,
  CancelledError,
  ConflictError,
  ForbiddenError,
  NoSpaceError,
  NotFoundError,
  StorageError,
  TernError,
} from '../core/base.ts';
import { netErrorCode } from './retry.ts';

/** The facts of one failed request, pulled out of an SDK error by the store. */
export interface Failure {
  status?: number;
  /** Service error code (NoSuchKey, BlobNotFound, AuthenticationFailed…) or socket code. */
  code?: string;
  message: string;
}

/** Service codes that mean "these credentials are wrong" rather than "not allowed to do this". */
const AUTH_CODES = new Set([
  'InvalidAccessKeyId',
  'SignatureDoesNotMatch',
  'AuthenticationFailed',
  'InvalidToken',
  'ExpiredToken',
  'TokenRefreshRequired',
  'CredentialsError',
  'CredentialsProviderError',
  'InvalidAuthenticationInfo',
  'NoAuthenticationInformation',
]);

const NO_SPACE_CODES = new Set([
  'XMinioStorageFull',
  'QuotaExceeded',
  'StorageQuotaExceeded',
  'AccountQuotaExceeded',
  'InsufficientStorage',
  'ServiceQuotaExceeded',
]);

/** Removes the given secrets and anything shaped like a SAS signature or an Authorization value from text. */
export function scrub(text: string, secrets: readonly (string | undefined)[]): string {
  let out = text;
  for (const s of secrets) if (s && s.length >= 4) out = out.split(s).join('***');
  return out
    .replace(
      /([?&;]?(?:sig|signature|X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token)=)[^&\s;"']+/gi,
      '$1***',
    )
    .replace(/(AccountKey=)[^;\s"']+/gi, '$1***')
    .replace(/(SharedAccessSignature=)[^;\s"']+/gi, '$1***')
    .replace(/(Authorization:\s*)[^\n,]+/gi, '$1***');
}

/**
 * The typed error for a failed operation on `key`. The SDK error is not chained as is (it can carry
 * request URLs with SAS tokens and headers); a scrubbed summary stands in as the cause.
 */
export function mapFailure(
  f: Failure,
  ctx: {
    op: string;
    key: string;
    location: string;
    signal?: AbortSignal;
    secrets: readonly (string | undefined)[];
  },
  original?: unknown,
): TernError {
  if (original instanceof TernError) return original;
  if (ctx.signal?.aborted) return new CancelledError('operation cancelled', { cause: ctx.signal.reason });
  const summary = scrub(
    [f.code, f.status === undefined ? undefined : `HTTP ${f.status}`, f.message].filter(Boolean).join(' '),
    ctx.secrets,
  );
  const cause = new Error(summary);
  const details = { key: ctx.key, op: ctx.op, status: f.status, code: f.code };
  const where = `${ctx.op} ${ctx.key || '(root)'} in ${ctx.location}`;
  if (f.code && AUTH_CODES.has(f.code))
    return new AuthError(`credentials rejected on ${where} (${f.code})`, { cause, details });
  // Azure (and Azurite) say a bad key or SAS signature this way, whatever the code.
  if (f.status === 403 && /failed to authenticate/i.test(f.message))
    return new AuthError(`credentials rejected on ${where}`, { cause, details });
  if (f.status === 401) return new AuthError(`credentials rejected on ${where}`, { cause, details });
  if (f.status === 403) return new ForbiddenError(`access denied on ${where}`, { cause, details });
  if (f.status === 404)
    return new NotFoundError(`object ${ctx.key} not found in ${ctx.location}`, { cause, details });
  if (f.status === 507 || (f.code && NO_SPACE_CODES.has(f.code)))
    return new NoSpaceError(`no space left on ${where}`, { cause, details });
  if (f.status === 412) return new ConflictError(`precondition failed on ${where}`, { cause, details });
  const net = netErrorCode(original);
  return new StorageError(`${where} failed${net ? ` (${net})` : ''}`, { cause, details });
}
