/** Reading export details at the DR site: every way a token can be bad becomes one clear InputError. */
import { AuthError, InputError, readExportDetails } from '../../core/index.ts';
import type { ExportDetails } from '../../core/index.ts';

export interface StreamDetails extends ExportDetails {
  stream: { id: string; records: string };
  kind: 'datamover' | 'snapshot-copy';
}

export function readStreamDetails(token: string, importSecret: string): StreamDetails {
  let d: ExportDetails;
  try {
    d = readExportDetails(token, importSecret);
  } catch (err) {
    if (err instanceof InputError) throw err;
    if (err instanceof AuthError)
      throw new InputError(
        'export details rejected: the signature does not match (the token was altered or truncated, or the import secret is wrong)',
        { cause: err },
      );
    throw err;
  }
  const { stream, kind } = d.payload;
  if (!stream || !kind)
    throw new InputError(
      'export details do not name an export stream (made by an older Tern?): nothing to import',
    );
  return { ...d, stream, kind };
}
