/**
 * Secrets at rest: profile secrets are sealed with AES-256-GCM under the catalog master key before they reach
 * SQLite. The key comes from env TERN_CATALOG_KEY (base64 or hex of 32 bytes) or from a key file next to the
 * database (`<db>.key`, created 0600 on first use). The profile name is the associated data, so a sealed blob
 * copied onto another profile's row does not open.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import { AuthError, InputError, IntegrityError } from '../core/index.ts';

const VERSION = 1;

export function parseMasterKey(text: string, where: string): Buffer {
  const t = text.trim();
  const key = /^[0-9a-f]{64}$/i.test(t) ? Buffer.from(t, 'hex') : Buffer.from(t, 'base64');
  if (key.length !== 32) throw new InputError(`${where}: the catalog key must be 32 bytes (base64 or hex)`);
  return key;
}

/** Loads (or, for a key file, creates) the master key. Refuses a key file readable by group or others. */
export function loadMasterKey(keyFile: string | undefined, env: NodeJS.ProcessEnv = process.env): Buffer {
  const fromEnv = env['TERN_CATALOG_KEY'];
  if (fromEnv) return parseMasterKey(fromEnv, 'TERN_CATALOG_KEY');
  if (!keyFile) return crypto.randomBytes(32); // in-memory catalog: the key lives as long as the process
  let fd: number;
  try {
    fd = fs.openSync(keyFile, 'wx', 0o600);
  } catch (err) {
    if ((err as { code?: string }).code !== 'EEXIST') throw err;
    const st = fs.statSync(keyFile);
    if ((st.mode & 0o077) !== 0)
      throw new AuthError(
        `catalog key file ${keyFile} is accessible by group or others (mode ${(st.mode & 0o777).toString(8)}); chmod 600 it`,
      );
    return parseMasterKey(fs.readFileSync(keyFile, 'utf8'), keyFile);
  }
  const key = crypto.randomBytes(32);
  try {
    fs.writeSync(fd, key.toString('base64') + '\n');
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  return key;
}

export class SecretBox {
  private readonly key: Buffer;
  constructor(key: Buffer) {
    if (key.length !== 32) throw new InputError('catalog key must be 32 bytes');
    this.key = key;
  }

  seal(secrets: Record<string, string>, aad: string): Buffer {
    const nonce = crypto.randomBytes(12);
    const c = crypto.createCipheriv('aes-256-gcm', this.key, nonce);
    c.setAAD(Buffer.from(aad));
    const ct = Buffer.concat([c.update(JSON.stringify(secrets), 'utf8'), c.final()]);
    return Buffer.concat([Buffer.from([VERSION]), nonce, ct, c.getAuthTag()]);
  }

  open(blob: Uint8Array, aad: string): Record<string, string> {
    const b = Buffer.from(blob);
    if (b.length < 1 + 12 + 16 || b[0] !== VERSION)
      throw new IntegrityError(`sealed secrets of "${aad}" are malformed`);
    const d = crypto.createDecipheriv('aes-256-gcm', this.key, b.subarray(1, 13));
    d.setAAD(Buffer.from(aad));
    d.setAuthTag(b.subarray(b.length - 16));
    try {
      const pt = Buffer.concat([d.update(b.subarray(13, b.length - 16)), d.final()]);
      return JSON.parse(pt.toString('utf8')) as Record<string, string>;
    } catch (err) {
      throw new AuthError(`cannot open the secrets of "${aad}": wrong catalog key or tampered row`, {
        cause: err,
      });
    }
  }
}
