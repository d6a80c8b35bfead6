/** Key files: the master key wrapped by a passphrase through scrypt and AES-256-GCM. */
import crypto from 'node:crypto';
import os from 'node:os';
import { promisify } from 'node:util';
import { AuthError, IntegrityError } from '../core/base.ts';
import { openObject, sealObject, type MasterKey } from './crypto.ts';

const scrypt = promisify(crypto.scrypt) as (
  pass: crypto.BinaryLike,
  salt: crypto.BinaryLike,
  len: number,
  opts: crypto.ScryptOptions,
) => Promise<Buffer>;

/** ~64 MiB of memory and ~0.3 s here per open. */
export const DEFAULT_KDF = { N: 65536, r: 8, p: 1 };

export interface KeyFile {
  version: 1;
  kdf: 'scrypt';
  N: number;
  r: number;
  p: number;
  salt: string;
  data: string;
  created: string;
  hostname: string;
  check: string;
}

/**
 * The key file's shape, checked by hand: a key file is read by every repository command, and a schema library
 * would add its load time (~20 ms) to each of them.
 */
function asKeyFile(v: unknown): KeyFile {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('not a JSON object');
  const o = v as Record<string, unknown>;
  if (o['version'] !== 1) throw new Error('version must be 1');
  if (o['kdf'] !== 'scrypt') throw new Error('kdf must be "scrypt"');
  for (const k of ['N', 'r', 'p']) {
    const n = o[k];
    if (typeof n !== 'number' || !Number.isInteger(n) || n <= 0)
      throw new Error(`${k} must be a positive integer`);
  }
  for (const k of ['salt', 'data', 'created', 'hostname', 'check'])
    if (typeof o[k] !== 'string') throw new Error(`${k} must be a string`);
  return o as unknown as KeyFile;
}

function checksum(k: Omit<KeyFile, 'check'>): string {
  return crypto
    .createHash('sha256')
    .update(JSON.stringify([k.version, k.kdf, k.N, k.r, k.p, k.salt, k.data, k.created, k.hostname]))
    .digest('hex');
}

async function wrappingKey(
  passphrase: string,
  salt: Buffer,
  N: number,
  r: number,
  p: number,
): Promise<Buffer> {
  return scrypt(passphrase.normalize('NFC'), salt, 32, { N, r, p, maxmem: 256 * N * r + 16 * 1024 * 1024 });
}

export async function makeKeyFile(
  master: MasterKey,
  passphrase: string,
  kdf = DEFAULT_KDF,
): Promise<KeyFile> {
  const salt = crypto.randomBytes(32);
  const wk = await wrappingKey(passphrase, salt, kdf.N, kdf.r, kdf.p);
  const plain = Buffer.from(
    JSON.stringify({ encKey: master.encKey.toString('base64'), idKey: master.idKey.toString('base64') }),
  );
  const base = {
    version: 1 as const,
    kdf: 'scrypt' as const,
    ...kdf,
    salt: salt.toString('base64'),
    data: sealObject(wk, 'key', plain).toString('base64'),
    created: new Date().toISOString(),
    hostname: os.hostname(),
  };
  return { ...base, check: checksum(base) };
}

export function parseKeyFile(raw: Buffer, what: string): KeyFile {
  let parsed: KeyFile;
  try {
    parsed = asKeyFile(JSON.parse(raw.toString('utf8')));
  } catch (err) {
    throw new IntegrityError(`${what}: malformed key file`, { cause: err, details: { object: what } });
  }
  const { check, ...base } = parsed;
  if (checksum(base) !== check)
    throw new IntegrityError(`${what}: key file checksum mismatch (corrupted)`, {
      details: { object: what },
    });
  return parsed;
}

/** The master key, or AuthError when the passphrase does not open this key file. */
export async function unwrapKey(k: KeyFile, passphrase: string, what: string): Promise<MasterKey> {
  const wk = await wrappingKey(passphrase, Buffer.from(k.salt, 'base64'), k.N, k.r, k.p);
  let plain: Buffer;
  try {
    plain = openObject(wk, 'key', Buffer.from(k.data, 'base64'), what);
  } catch (err) {
    throw new AuthError('wrong passphrase', {
      cause: err instanceof Error ? new Error(`${what} does not open`) : undefined,
    });
  }
  const j = JSON.parse(plain.toString('utf8')) as { encKey: string; idKey: string };
  return { encKey: Buffer.from(j.encKey, 'base64'), idKey: Buffer.from(j.idKey, 'base64') };
}
