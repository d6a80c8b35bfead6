/**
 * Restore point records published at the export location, one object per restore point, written after all of
 * its data (so a record names only complete exports), signed with a key derived from the import secret so
 * the DR site trusts what it imports from a shared location.
 *   tern-exports/<stream id>/restore-points/<restore point id>.json  = { body: base64url(JSON), mac }
 */
import { createHmac, hkdfSync, scryptSync, timingSafeEqual } from 'node:crypto';
import { AuthError, IntegrityError, NotFoundError, throwIfAborted } from '../../core/index.ts';
import type { RunOptions } from '../../core/index.ts';
import type { ObjectStore } from '../../storage/index.ts';
import { RestorePointRecordSchema } from './types.ts';
import type { RestorePointRecord } from './types.ts';

const keyCache = new Map<string, Buffer>();

/** Per-stream signing key: scrypt(import secret, stream id); costs ~0.1 s once per process and stream. */
export function recordKey(importSecret: string, streamId: string): Buffer {
  const cacheKey = createHmac('sha256', streamId).update(importSecret).digest('hex');
  let k = keyCache.get(cacheKey);
  if (!k) {
    const master = scryptSync(importSecret, `tern-records:${streamId}`, 32, {
      N: 1 << 15,
      r: 8,
      p: 1,
      maxmem: 64 << 20,
    });
    k = Buffer.from(hkdfSync('sha256', master, Buffer.alloc(0), 'tern restore point records v1', 32));
    keyCache.set(cacheKey, k);
  }
  return k;
}

function prefix(streamId: string): string {
  return `tern-exports/${streamId}/restore-points/`;
}

export async function publishRecord(
  store: ObjectStore,
  rec: RestorePointRecord,
  key: Buffer,
  opts: RunOptions = {},
): Promise<void> {
  const body = Buffer.from(JSON.stringify(rec), 'utf8').toString('base64url');
  const mac = createHmac('sha256', key).update(body).digest('base64url');
  await store.put(`${prefix(rec.stream)}${rec.id}.json`, Buffer.from(JSON.stringify({ body, mac })), opts);
}

function openRecord(raw: Buffer, key: Buffer, name: string): RestorePointRecord {
  let env: { body?: unknown; mac?: unknown };
  try {
    env = JSON.parse(raw.toString('utf8')) as { body?: unknown; mac?: unknown };
  } catch (err) {
    throw new IntegrityError(`restore point record ${name} is not valid JSON`, { cause: err });
  }
  if (typeof env.body !== 'string' || typeof env.mac !== 'string')
    throw new IntegrityError(`restore point record ${name} is malformed`);
  const want = createHmac('sha256', key).update(env.body).digest();
  const got = Buffer.from(env.mac, 'base64url');
  if (got.length !== want.length || !timingSafeEqual(got, want))
    throw new AuthError(
      `restore point record ${name} has a bad signature (altered, or another import secret)`,
    );
  const parsed = RestorePointRecordSchema.safeParse(
    JSON.parse(Buffer.from(env.body, 'base64url').toString('utf8')),
  );
  if (!parsed.success) throw new IntegrityError(`restore point record ${name} does not match the schema`);
  return parsed.data;
}

/** All records of a stream, oldest first. Bad records are reported in `errors` and skipped, not trusted. */
export async function listRecords(
  store: ObjectStore,
  streamId: string,
  key: Buffer,
  opts: RunOptions = {},
): Promise<{ records: RestorePointRecord[]; errors: Error[] }> {
  const records: RestorePointRecord[] = [];
  const errors: Error[] = [];
  const keys: string[] = [];
  for await (const o of store.list(prefix(streamId), opts)) if (o.key.endsWith('.json')) keys.push(o.key);
  for (const k of keys.sort()) {
    throwIfAborted(opts.signal);
    try {
      const rec = openRecord(await store.get(k, opts), key, k);
      if (rec.stream !== streamId) throw new IntegrityError(`record ${k} belongs to another stream`);
      records.push(rec);
    } catch (err) {
      if (err instanceof NotFoundError) continue;
      if (err instanceof AuthError || err instanceof IntegrityError) errors.push(err);
      else throw err;
    }
  }
  records.sort((a, b) => a.consistentAt.localeCompare(b.consistentAt) || a.id.localeCompare(b.id));
  return { records, errors };
}
