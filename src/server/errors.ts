/**
 * Typed errors → HTTP status and body, in one place. Anything that is not a TernError (or a Node error
 * whose code we understand) becomes a 500 with a fixed message: no stack, no internals, no secrets.
 */
import { errorCodeOf, TernError, type ErrorCode } from '../core/index.ts';

const STATUS: Record<ErrorCode, number> = {
  INPUT: 400,
  AUTH: 401,
  FORBIDDEN: 403,
  NOT_FOUND: 404,
  CONFLICT: 409,
  INTEGRITY: 422,
  LOCKED: 423,
  CANCELLED: 499,
  NO_SPACE: 507,
  STORAGE: 502,
  UNAVAILABLE: 503,
  INTERNAL: 500,
};

export interface ErrorBody {
  error: { code: ErrorCode; message: string; details?: Record<string, unknown> };
}

/** Statuses whose message is safe to show: the error was raised on purpose with a user-facing text. */
const SHOW_MESSAGE = new Set<ErrorCode>([
  'INPUT',
  'AUTH',
  'FORBIDDEN',
  'NOT_FOUND',
  'CONFLICT',
  'INTEGRITY',
  'LOCKED',
  'CANCELLED',
  'NO_SPACE',
]);

export function httpError(err: unknown): { status: number; body: ErrorBody } {
  const code = errorCodeOf(err);
  const status = STATUS[code];
  if (!(err instanceof TernError) || !SHOW_MESSAGE.has(code)) {
    const message =
      code === 'INTERNAL'
        ? 'internal error'
        : code === 'NO_SPACE'
          ? 'no space left on device'
          : code === 'NOT_FOUND'
            ? 'not found'
            : code.toLowerCase().replace('_', ' ');
    return { status, body: { error: { code, message } } };
  }
  const details = Object.keys(err.details).length > 0 ? { ...err.details } : undefined;
  return { status, body: { error: { code, message: err.message, ...(details ? { details } : {}) } } };
}

/** The inverse, for the CLI client: a status (and body code when present) back to an error code. */
export function codeForStatus(status: number, bodyCode?: string): ErrorCode {
  if (bodyCode && bodyCode in STATUS) return bodyCode as ErrorCode;
  for (const [code, s] of Object.entries(STATUS)) if (s === status) return code as ErrorCode;
  return status >= 500 ? 'INTERNAL' : 'INPUT';
}
