/** Errors from export locations that need this site's credentials, made actionable. */
import { TernError } from '../../core/index.ts';
import type { StoreOptions } from '../../storage/index.ts';

/**
 * A cloud export location that refuses us, or cannot be reached, while no store options were given: say how
 * to give the DR site's credentials instead of leaving a bare 403.
 */
export function withCredentialsHint(
  err: unknown,
  url: string,
  storeOptions: StoreOptions | undefined,
): unknown {
  if (!(err instanceof TernError) || !/^(s3|azblob):\/\//i.test(url)) return err;
  if (!['AUTH', 'FORBIDDEN', 'STORAGE', 'UNAVAILABLE', 'NOT_FOUND'].includes(err.code)) return err;
  const how = storeOptions
    ? 'check the location profile given at import'
    : 'give a location profile of this site at import (--location-profile / locationProfile) or the store credentials in the environment (AWS_* / AZURE_STORAGE_*)';
  return new TernError(err.code, `cannot read the export location ${url}: ${err.message}; ${how}`, {
    cause: err,
  });
}
