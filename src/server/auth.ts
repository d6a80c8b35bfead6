/**
 * Bearer-token auth. The token comes from --token-file, else TERN_API_TOKEN, else `<data-dir>/api-token`,
 * which is generated (32 random bytes, mode 0600) on first start. Comparison is constant-time.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { AuthError, InputError } from '../core/index.ts';

export const TOKEN_FILE_NAME = 'api-token';

export function tokenFilePath(dataDir: string): string {
  return path.join(dataDir, TOKEN_FILE_NAME);
}

function readToken(file: string): string {
  const mode = fs.statSync(file).mode & 0o777;
  if ((mode & 0o077) !== 0)
    throw new AuthError(
      `API token file ${file} is accessible by group or others (mode ${mode.toString(8)}); chmod 600 it`,
    );
  const t = fs.readFileSync(file, 'utf8').trim();
  if (t.length < 16) throw new InputError(`API token in ${file} is too short (at least 16 characters)`);
  return t;
}

/** The server's token, creating the data dir's token file when nothing else supplies one. */
export function loadOrCreateToken(opts: { dataDir: string; tokenFile?: string; env?: NodeJS.ProcessEnv }): {
  token: string;
  source: string;
} {
  if (opts.tokenFile) return { token: readToken(opts.tokenFile), source: opts.tokenFile };
  const fromEnv = (opts.env ?? process.env).TERN_API_TOKEN;
  if (fromEnv) {
    if (fromEnv.length < 16) throw new InputError('TERN_API_TOKEN is too short (at least 16 characters)');
    return { token: fromEnv, source: 'TERN_API_TOKEN' };
  }
  const file = tokenFilePath(opts.dataDir);
  fs.mkdirSync(opts.dataDir, { recursive: true, mode: 0o700 });
  try {
    // 'wx' so that two servers starting at once cannot overwrite each other's token.
    fs.writeFileSync(file, crypto.randomBytes(32).toString('base64url') + '\n', { mode: 0o600, flag: 'wx' });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
  }
  return { token: readToken(file), source: file };
}

/** Throws AuthError unless the Authorization header carries exactly this bearer token. */
export function checkBearer(header: string | undefined, token: string): void {
  const m = /^Bearer\s+(\S+)\s*$/i.exec(header ?? '');
  if (!m?.[1]) throw new AuthError('missing bearer token');
  const a = crypto.createHash('sha256').update(m[1]).digest();
  const b = crypto.createHash('sha256').update(token).digest();
  if (!crypto.timingSafeEqual(a, b)) throw new AuthError('invalid bearer token');
}
