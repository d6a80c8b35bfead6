/**
 * One contract for the ObjectStore interface, run against every real implementation:
 * a local directory, S3 on moto, and Azure Blob on Azurite. Stores are opened through `openStore` URLs,
 * the way the CLI opens them. Adding a backend = one entry in `cases`.
 */
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { inspect } from 'node:util';
import { after, before, describe, test } from 'node:test';
import {
  AuthError,
  CancelledError,
  ConflictError,
  describeError,
  InputError,
  NotFoundError,
  TernError,
} from '../../src/core/index.ts';
import { LocalStore, openStore, type ObjectStore, type StoreOptions } from '../../src/storage/index.ts';
import { RunArena } from '../../src/core/aligned.ts';
import {
  AccountSASPermissions,
  generateAccountSASQueryParameters,
  SASProtocol,
  StorageSharedKeyCredential,
} from '@azure/storage-blob';
import { startAzurite } from '../harness/azurite.ts';
import { motoServerBin, startMoto } from '../harness/moto.ts';

const MiB = 1024 * 1024;
const FAST_RETRY = { baseDelayMs: 20, maxDelayMs: 200, maxAttempts: 4 };

interface Backend {
  /** A fresh, empty store (each test gets its own prefix). */
  open(): Promise<ObjectStore>;
  /** The same place with credentials the server refuses, and the secret that must not leak. */
  badCredentials?(): Promise<{ store: ObjectStore; secret: string }>;
  stop(): Promise<void>;
}

interface Case {
  name: string;
  setup(): Promise<Backend | { skip: string }>;
}

let seq = 0;
const unique = (): string => `t${process.pid}-${++seq}`;

const cases: Case[] = [
  {
    name: 'local directory',
    setup: () => {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-store-'));
      return Promise.resolve({
        open: () => openStore(path.join(dir, unique())),
        stop: () => fs.promises.rm(dir, { recursive: true, force: true }),
      });
    },
  },
  {
    // The same store with O_DIRECT turned off (as where a filesystem refuses it): every put is buffered.
    name: 'local directory, buffered writes (TERN_NO_DIRECT_IO=1)',
    setup: () => {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-store-'));
      return Promise.resolve({
        open: async () => {
          const was = process.env.TERN_NO_DIRECT_IO;
          process.env.TERN_NO_DIRECT_IO = '1';
          try {
            return await openStore(path.join(dir, unique()));
          } finally {
            if (was === undefined) delete process.env.TERN_NO_DIRECT_IO;
            else process.env.TERN_NO_DIRECT_IO = was;
          }
        },
        stop: () => fs.promises.rm(dir, { recursive: true, force: true }),
      });
    },
  },
  {
    name: 's3 on moto',
    setup: async () => {
      if (!motoServerBin()) return { skip: 'moto not installed (scripts/peers.d/20-moto.sh)' };
      const moto = await startMoto();
      // A second server that checks credentials: moto accepts any key unless told otherwise.
      const strict = await startMoto({ env: { INITIAL_NO_AUTH_ACTION_COUNT: '0' } });
      const opts: StoreOptions = { env: moto.env, retry: FAST_RETRY };
      const secret = 'Wrong/Secret+Key' + crypto.randomBytes(12).toString('base64');
      return {
        // A bucket per test: the first put creates it, as `repo init` does.
        open: () => openStore(`s3://tern-${unique()}/some/prefix`, opts),
        badCredentials: async () => ({
          store: await openStore(`s3://tern-${unique()}/p`, {
            env: { ...strict.env, AWS_ACCESS_KEY_ID: 'AKIANOTAREALKEY00000', AWS_SECRET_ACCESS_KEY: secret },
            retry: FAST_RETRY,
          }),
          secret,
        }),
        stop: async () => {
          await Promise.all([moto.stop(), strict.stop()]);
        },
      };
    },
  },
  {
    name: 'azblob on azurite',
    setup: async () => {
      const az = await startAzurite(['terncontract']);
      const acct = az.accounts[0]!;
      const secret = crypto.randomBytes(32).toString('base64');
      return {
        open: () =>
          openStore(`azblob://${acct.name}/c-${unique()}/some/prefix`, {
            env: {},
            azureEndpoint: az.accountUrl(acct.name),
            azureKey: acct.key,
            retry: FAST_RETRY,
          }),
        badCredentials: async () => ({
          store: await openStore(`azblob://${acct.name}/c-${unique()}`, {
            env: {},
            azureEndpoint: az.accountUrl(acct.name),
            azureKey: secret,
            retry: FAST_RETRY,
          }),
          secret,
        }),
        stop: () => az.stop(),
      };
    },
  },
  {
    name: 'azblob on azurite with a SAS token from the environment',
    setup: async () => {
      const az = await startAzurite(['terncontractsas']);
      const acct = az.accounts[0]!;
      const sas = generateAccountSASQueryParameters(
        {
          permissions: AccountSASPermissions.parse('rwdlac'),
          services: 'b',
          resourceTypes: 'sco',
          expiresOn: new Date(Date.now() + 3600_000),
          protocol: SASProtocol.HttpsAndHttp,
        },
        new StorageSharedKeyCredential(acct.name, acct.key),
      ).toString();
      const badSig = crypto.randomBytes(32).toString('base64');
      const badSas = sas.replace(/sig=[^&]+/, `sig=${encodeURIComponent(badSig)}`);
      const env = (token: string): StoreOptions => ({
        env: { AZURE_STORAGE_ENDPOINT: az.accountUrl(acct.name), AZURE_STORAGE_SAS_TOKEN: token },
        retry: FAST_RETRY,
      });
      return {
        open: () => openStore(`azblob://${acct.name}/c-${unique()}/p`, env(sas)),
        badCredentials: async () => ({
          store: await openStore(`azblob://${acct.name}/c-${unique()}`, env(badSas)),
          secret: encodeURIComponent(badSig),
        }),
        stop: () => az.stop(),
      };
    },
  },
];

async function collect(store: ObjectStore, prefix: string): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for await (const o of store.list(prefix)) {
    assert.ok(!out.has(o.key), `list returned ${o.key} twice`);
    out.set(o.key, o.size);
  }
  return out;
}

async function inParallel<T>(items: T[], limit: number, fn: (x: T) => Promise<void>): Promise<void> {
  let i = 0;
  await Promise.all(
    Array.from({ length: limit }, async () => {
      while (i < items.length) await fn(items[i++]!);
    }),
  );
}

for (const c of cases) {
  describe(`ObjectStore contract: ${c.name}`, () => {
    let backend: Backend | undefined;
    let skip: string | undefined;
    const stores: ObjectStore[] = [];

    before(async () => {
      const b = await c.setup();
      if ('skip' in b) skip = b.skip;
      else backend = b;
    });
    after(async () => {
      for (const s of stores) await s.close?.();
      await backend?.stop();
    });

    async function fresh(t: { skip(msg: string): void }): Promise<ObjectStore | undefined> {
      if (!backend) {
        t.skip(skip ?? 'backend did not start');
        return undefined;
      }
      const s = await backend.open();
      stores.push(s);
      return s;
    }

    test('put, get, head, overwrite, empty object', async (t) => {
      const s = await fresh(t);
      if (!s) return;
      assert.ok(!/secret|key=/i.test(s.location), `location shows no secret: ${s.location}`);
      const data = crypto.randomBytes(100_000);
      await s.put('data/ab/obj1', data);
      assert.ok((await s.get('data/ab/obj1')).equals(data));
      const h = await s.head('data/ab/obj1');
      assert.equal(h?.key, 'data/ab/obj1');
      assert.equal(h?.size, data.length);
      assert.ok((await s.getRange('data/ab/obj1', 1000, 90_000)).equals(data.subarray(1000, 91_000)));
      await s.put('data/ab/obj1', Buffer.from('replaced'));
      assert.equal((await s.get('data/ab/obj1')).toString(), 'replaced');
      await s.put('empty', Buffer.alloc(0));
      assert.equal((await s.get('empty')).length, 0);
      assert.equal((await s.head('empty'))?.size, 0);
    });

    test('onDataReleased: at most once, before put settles; the buffer is free to reuse from then on', async (t) => {
      const s = await fresh(t);
      if (!s) return;
      const data = crypto.randomBytes(300_000);
      const original = Buffer.from(data);
      let calls = 0;
      let settled = false;
      await s.put('released', data, {
        onDataReleased: () => {
          calls++;
          assert.equal(settled, false, 'called after put settled');
          data.fill(0); // the caller reuses its buffer at once
        },
      });
      settled = true;
      assert.ok(calls <= 1, `called ${calls} times`);
      assert.ok((await s.get('released')).equals(original), 'the object is what was put');
    });

    test('put from page-aligned memory (the local store writes it with O_DIRECT): exact bytes, any length', async (t) => {
      const s = await fresh(t);
      if (!s) return;
      // Slots as a backup's packs use them (plain) and as restores use them (shared), with bytes after the
      // object's end that must not reach the store.
      for (const shared of [false, true]) {
        const arena = new RunArena<ArrayBufferLike>(2, 256 * 1024, shared);
        const slot = Buffer.from(arena.buffer, arena.take()!, arena.slotBytes).fill(0xee);
        for (const len of [1, 4095, 4096, 4097, 3 * 4096, 100_003]) {
          const data = slot.subarray(0, len);
          crypto.randomFillSync(data);
          let released = 0;
          await s.put(`aligned-${shared}-${len}`, data, { onDataReleased: () => released++ });
          assert.ok(released <= 1);
          const back = await s.get(`aligned-${shared}-${len}`);
          assert.equal(back.length, len, `length of a ${len}-byte object`);
          assert.ok(back.equals(data), `bytes of a ${len}-byte object`);
        }
      }
      if (s instanceof LocalStore) {
        // O_DIRECT unless turned off or refused by the filesystem (then nothing at all went that way).
        if (s.directIo) assert.equal(s.directPuts, 12);
        else assert.equal(s.directPuts, 0);
      }
    });

    test('getRange: inside, to the end, short read past the end', async (t) => {
      const s = await fresh(t);
      if (!s) return;
      const data = crypto.randomBytes(10_000);
      await s.put('r', data);
      assert.ok((await s.getRange('r', 0, 10)).equals(data.subarray(0, 10)));
      assert.ok((await s.getRange('r', 1234, 4321)).equals(data.subarray(1234, 1234 + 4321)));
      assert.ok((await s.getRange('r', 9000, 1000)).equals(data.subarray(9000)));
      assert.ok((await s.getRange('r', 9990, 100)).equals(data.subarray(9990)), 'short read at the end');
      assert.equal((await s.getRange('r', 10_000, 10)).length, 0, 'a range starting at the end is empty');
    });

    test('openRanges (where the store has it): ranges in any order through one reader, short at the end, NotFoundError', async (t) => {
      const s = await fresh(t);
      if (!s) return;
      if (!s.openRanges) {
        t.diagnostic('this store has no openRanges: bulk readers use getRange');
        return;
      }
      const data = crypto.randomBytes(3 * 1024 * 1024 + 7);
      await s.put('r', data);
      const cases: [number, number][] = [
        [1024 * 1024 - 3, 2 * 1024 * 1024], // longer than one read piece
        [0, 10],
        [2 * 1024 * 1024, 100],
        [data.length - 5, 10], // short: 5 bytes to the end
        [data.length, 10], // empty
      ];
      const reader = await s.openRanges('r');
      try {
        for (const [offset, length] of cases) {
          const want = data.subarray(offset, offset + length);
          const buf = Buffer.alloc(length);
          assert.equal(await reader.readInto(offset, buf), want.length, `${length} bytes at ${offset}`);
          assert.ok(buf.subarray(0, want.length).equals(want));
        }
      } finally {
        await reader.close();
      }
      await assert.rejects(s.openRanges('nope'), NotFoundError);
    });

    test('missing objects: get/getRange NotFoundError, head undefined', async (t) => {
      const s = await fresh(t);
      if (!s) return;
      await assert.rejects(s.get('nope'), NotFoundError);
      await assert.rejects(s.getRange('nope', 0, 10), NotFoundError);
      assert.equal(await s.head('nope'), undefined);
      await s.put('dir/there', Buffer.from('x'));
      await assert.rejects(s.get('dir/not-there'), NotFoundError);
      assert.equal(await s.head('dir'), undefined, 'a "directory" is not an object');
    });

    test('ifNoneMatch: create-only, ConflictError if present, one winner of a race', async (t) => {
      const s = await fresh(t);
      if (!s) return;
      await s.put('locks/a', Buffer.from('first'), { ifNoneMatch: true });
      await assert.rejects(s.put('locks/a', Buffer.from('second'), { ifNoneMatch: true }), ConflictError);
      assert.equal((await s.get('locks/a')).toString(), 'first', 'the refused write changed nothing');
      const results = await Promise.allSettled(
        Array.from({ length: 8 }, (_, i) => s.put('locks/race', Buffer.from(`w${i}`), { ifNoneMatch: true })),
      );
      const won = results.filter((r) => r.status === 'fulfilled').length;
      assert.equal(won, 1, 'exactly one concurrent create-only put wins');
      for (const r of results)
        if (r.status === 'rejected') assert.ok(r.reason instanceof ConflictError, describeError(r.reason));
    });

    test('list by prefix, and >1000 keys across pages', async (t) => {
      const s = await fresh(t);
      if (!s) return;
      for (const k of ['a/1', 'a/2', 'a/sub/3', 'ab/4', 'b/5', 'top']) await s.put(k, Buffer.from(k));
      assert.deepEqual([...(await collect(s, 'a/')).keys()].sort(), ['a/1', 'a/2', 'a/sub/3']);
      assert.deepEqual([...(await collect(s, 'a')).keys()].sort(), ['a/1', 'a/2', 'a/sub/3', 'ab/4']);
      assert.deepEqual([...(await collect(s, 'a/sub/')).keys()], ['a/sub/3']);
      assert.equal((await collect(s, '')).size, 6);
      assert.equal((await collect(s, 'zzz/')).size, 0);
      assert.equal((await collect(s, 'a/'))?.get('a/1'), 3, 'sizes are listed');
      const keys = Array.from({ length: 1100 }, (_, i) => `many/${String(i).padStart(4, '0')}`);
      await inParallel(keys, 32, (k) => s.put(k, Buffer.from(k)));
      const listed = await collect(s, 'many/');
      assert.equal(listed.size, 1100);
      for (const k of keys) assert.equal(listed.get(k), k.length);
    });

    test('delete: removes, idempotent on a missing key', async (t) => {
      const s = await fresh(t);
      if (!s) return;
      await s.put('d/x', Buffer.from('x'));
      await s.delete('d/x');
      assert.equal(await s.head('d/x'), undefined);
      await assert.rejects(s.get('d/x'), NotFoundError);
      await s.delete('d/x');
      await s.delete('never/was');
      assert.equal((await collect(s, 'd/')).size, 0);
    });

    test('large object (40 MiB, multipart) and ranges across part boundaries', async (t) => {
      const s = await fresh(t);
      if (!s) return;
      const big = crypto.randomBytes(40 * MiB + 12345);
      const t0 = performance.now();
      await s.put('data/big', big);
      const putMs = performance.now() - t0;
      assert.equal((await s.head('data/big'))?.size, big.length);
      const t1 = performance.now();
      const back = await s.get('data/big');
      const getMs = performance.now() - t1;
      assert.ok(back.equals(big), 'large object round-trips');
      for (const at of [8 * MiB - 7, 16 * MiB, 40 * MiB + 12000])
        assert.ok((await s.getRange('data/big', at, 300)).equals(big.subarray(at, at + 300)));
      t.diagnostic(
        `40 MiB put ${((big.length / MiB / putMs) * 1000).toFixed(0)} MiB/s, get ${((big.length / MiB / getMs) * 1000).toFixed(0)} MiB/s`,
      );
      // A create-only large write is refused too.
      await assert.rejects(s.put('data/big', big, { ifNoneMatch: true }), ConflictError);
    });

    test('concurrent puts and reads of different keys', async (t) => {
      const s = await fresh(t);
      if (!s) return;
      const blobs = Array.from({ length: 16 }, (_, i) => ({
        key: `c/${i}`,
        data: crypto.randomBytes(MiB + i),
      }));
      await Promise.all(blobs.map((b) => s.put(b.key, b.data)));
      const back = await Promise.all(blobs.map((b) => s.get(b.key)));
      blobs.forEach((b, i) => assert.ok(back[i]!.equals(b.data), b.key));
    });

    test('invalid keys are InputError; an aborted signal is CancelledError', async (t) => {
      const s = await fresh(t);
      if (!s) return;
      await assert.rejects(s.put('../escape', Buffer.from('x')), InputError);
      await assert.rejects(s.get('/abs'), InputError);
      const ac = new AbortController();
      ac.abort();
      await assert.rejects(s.put('k', Buffer.from('x'), { signal: ac.signal }), CancelledError);
      await assert.rejects(s.get('k', { signal: ac.signal }), CancelledError);
    });

    test('bad credentials: AuthError that does not show the secret', async (t) => {
      if (!backend) return t.skip(skip ?? 'backend did not start');
      if (!backend.badCredentials) return t.skip('no credentials on this backend');
      const { store, secret } = await backend.badCredentials();
      stores.push(store);
      for (const op of [
        () => store.put('x', Buffer.from('x')),
        () => store.get('x'),
        () => collect(store, ''),
      ]) {
        const err = await op().then(
          () => assert.fail('bad credentials were accepted'),
          (e: unknown) => e,
        );
        assert.ok(err instanceof AuthError, `expected AuthError, got ${inspect(err)}`);
        assert.ok(err instanceof TernError && err.code === 'AUTH');
        const shown = [
          describeError(err),
          inspect(err, { depth: 8, showHidden: true }),
          JSON.stringify(err),
        ].join('\n');
        assert.ok(
          !shown.includes(secret) && !shown.includes(decodeURIComponent(secret)),
          'the secret appears in the error',
        );
      }
    });
  });
}
