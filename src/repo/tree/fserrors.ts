/** Local filesystem errors of the tree walkers, translated once into the project's typed errors. */
import {
  ConflictError,
  ForbiddenError,
  NoSpaceError,
  NotFoundError,
  TernError,
  UnavailableError,
} from '../../core/base.ts';

export function errnoOf(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : undefined;
}

/** `doing` reads like "writing /restore/a/b". Typed errors pass through unchanged. */
export function fsError(err: unknown, doing: string): Error {
  if (err instanceof TernError) return err;
  const code = errnoOf(err);
  const details = { errno: code };
  switch (code) {
    case 'ENOSPC':
    case 'EDQUOT':
      return new NoSpaceError(`no space left on device while ${doing}`, { cause: err, details });
    case 'EACCES':
    case 'EPERM':
    case 'EROFS':
      return new ForbiddenError(`permission denied while ${doing}`, { cause: err, details });
    case 'ENOENT':
    case 'ENOTDIR':
      return new NotFoundError(`no such file or directory while ${doing}`, { cause: err, details });
    case 'EEXIST':
    case 'ENOTEMPTY':
    case 'EISDIR':
      return new ConflictError(`something already exists in the way while ${doing}`, { cause: err, details });
    case 'EIO':
    case 'EMFILE':
    case 'ENFILE':
      return new UnavailableError(`I/O error (${code}) while ${doing}`, { cause: err, details });
    default:
      return new TernError('INTERNAL', `failed ${doing}${code ? ` (${code})` : ''}`, { cause: err, details });
  }
}
