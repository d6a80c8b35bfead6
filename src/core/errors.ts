/**
 * Typed errors with a machine-readable `code` and a `cause` chain.
 * The CLI and HTTP layers translate these once into exit codes and status codes (see `exitCodeFor` / server).
 */
export type ErrorCode =
  | 'INPUT'
  | 'NOT_FOUND'
  | 'CONFLICT'
  | 'AUTH'
  | 'FORBIDDEN'
  | 'INTEGRITY'
  | 'STORAGE'
  | 'NO_SPACE'
  | 'LOCKED'
  | 'CANCELLED'
  | 'UNAVAILABLE'
  | 'INTERNAL';

export class TernError extends Error {
  readonly code: ErrorCode;
  /** Extra machine-readable facts (object key, field name…). Never put secrets here. */
  readonly details: Readonly<Record<string, unknown>>;

  constructor(
    code: ErrorCode,
    message: string,
    options?: { cause?: unknown; details?: Record<string, unknown> },
  ) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.details = options?.details ?? {};
    this.name = new.target.name;
  }
}

type Opts = { cause?: unknown; details?: Record<string, unknown> };

/** Bad input from a user: flags, config, policy, token, API body. */
export class InputError extends TernError {
  constructor(message: string, options?: Opts) {
    super('INPUT', message, options);
  }
}
export class NotFoundError extends TernError {
  constructor(message: string, options?: Opts) {
    super('NOT_FOUND', message, options);
  }
}
export class ConflictError extends TernError {
  constructor(message: string, options?: Opts) {
    super('CONFLICT', message, options);
  }
}
/** Wrong passphrase, bad credentials, invalid signature. */
export class AuthError extends TernError {
  constructor(message: string, options?: Opts) {
    super('AUTH', message, options);
  }
}
export class ForbiddenError extends TernError {
  constructor(message: string, options?: Opts) {
    super('FORBIDDEN', message, options);
  }
}
/** Data that fails verification: bad tag, hash mismatch, truncated object. */
export class IntegrityError extends TernError {
  constructor(message: string, options?: Opts) {
    super('INTEGRITY', message, options);
  }
}
/** An object store or platform failed in a way that retries did not cure. */
export class StorageError extends TernError {
  constructor(message: string, options?: Opts) {
    super('STORAGE', message, options);
  }
}
export class NoSpaceError extends TernError {
  constructor(message: string, options?: Opts) {
    super('NO_SPACE', message, options);
  }
}
export class LockedError extends TernError {
  constructor(message: string, options?: Opts) {
    super('LOCKED', message, options);
  }
}
export class CancelledError extends TernError {
  constructor(message = 'operation cancelled', options?: Opts) {
    super('CANCELLED', message, options);
  }
}
export class UnavailableError extends TernError {
  constructor(message: string, options?: Opts) {
    super('UNAVAILABLE', message, options);
  }
}

/** Throws CancelledError when the signal has fired. Call at every loop turn of long work. */
export function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw new CancelledError('operation cancelled', { cause: signal.reason });
}

/** "message: cause message: cause message" – for logs and CLI output. */
export function describeError(err: unknown): string {
  const parts: string[] = [];
  let cur: unknown = err;
  const seen = new Set<unknown>();
  while (cur !== undefined && cur !== null && !seen.has(cur) && parts.length < 8) {
    seen.add(cur);
    if (cur instanceof Error) {
      if (!parts.some((p) => p.includes(cur instanceof Error ? cur.message : ''))) parts.push(cur.message);
      cur = cur.cause;
    } else {
      parts.push(String(cur));
      break;
    }
  }
  return parts.join(': ');
}

export function errorCodeOf(err: unknown): ErrorCode {
  if (err instanceof TernError) return err.code;
  if (err instanceof Error && err.name === 'AbortError') return 'CANCELLED';
  const code = (err as { code?: unknown } | null)?.code;
  if (code === 'ENOSPC') return 'NO_SPACE';
  if (code === 'ENOENT') return 'NOT_FOUND';
  if (code === 'EACCES' || code === 'EPERM') return 'FORBIDDEN';
  return 'INTERNAL';
}

/** CLI exit codes, one place. */
export function exitCodeFor(err: unknown): number {
  switch (errorCodeOf(err)) {
    case 'INPUT':
      return 2;
    case 'NOT_FOUND':
      return 3;
    case 'AUTH':
    case 'FORBIDDEN':
      return 4;
    case 'INTEGRITY':
      return 5;
    case 'LOCKED':
    case 'CONFLICT':
      return 6;
    case 'NO_SPACE':
      return 7;
    case 'CANCELLED':
      return 130;
    default:
      return 1;
  }
}
