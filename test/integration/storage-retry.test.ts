/**
 * Retries of the cloud stores against real servers: a loopback proxy in front of moto and Azurite injects
 * 503/429 (with Retry-After), dropped connections and unanswered requests, and the real SDKs must get through
 * with the shared backoff (src/storage/retry.ts), retry only what failed, give up after the cap and stop on abort.
 */
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { ListMultipartUploadsCommand, S3Client } from '@aws-sdk/client-s3';
import {
  CancelledError,
  ForbiddenError,
  NoSpaceError,
  NotFoundError,
  StorageError,
} from '../../src/core/index.ts';
import { AzureBlobStore } from '../../src/storage/azblob.ts';
import { S3Store } from '../../src/storage/s3.ts';
import type { ObjectStore } from '../../src/storage/index.ts';
import { startAzurite } from '../harness/azurite.ts';
import { startFaultProxy, type FaultProxy } from '../harness/fault-proxy.ts';
import { motoServerBin, startMoto } from '../harness/moto.ts';

const MiB = 1024 * 1024;
const RETRY = { baseDelayMs: 10, maxDelayMs: 100, maxAttempts: 5 };

interface Server {
  /** The real server behind the proxy. */
  target: string;
  /** A store whose requests all go through the proxy. */
  store(opts: { multipart?: boolean; maxAttempts?: number; timeoutMs?: number }): ObjectStore;
  /** Does this request upload one part/block of a multipart object? */
  isPart(method: string, url: string): boolean;
  /** Multipart uploads started and neither completed nor aborted (S3 only). */
  pendingUploads?(): Promise<number>;
  stop(): Promise<void>;
}

const servers: { name: string; start(proxy: () => FaultProxy): Promise<Server | { skip: string }> }[] = [
  {
    name: 's3 on moto',
    start: async (proxy) => {
      if (!motoServerBin()) return { skip: 'moto not installed (scripts/peers.d/20-moto.sh)' };
      const moto = await startMoto();
      return {
        target: moto.endpoint,
        store: (o) =>
          new S3Store({
            bucket: 'tern-retry',
            prefix: 'p',
            endpoint: proxy().endpoint,
            credentials: { accessKeyId: moto.accessKeyId, secretAccessKey: moto.secretAccessKey },
            retry: { ...RETRY, ...(o.maxAttempts ? { maxAttempts: o.maxAttempts } : {}) },
            ...(o.multipart ? { multipartThreshold: 8 * MiB, partSize: 5 * MiB } : {}),
            ...(o.timeoutMs ? { requestTimeoutMs: o.timeoutMs } : {}),
          }),
        isPart: (method, url) => method === 'PUT' && /[?&]partNumber=/.test(url),
        pendingUploads: async () => {
          // Asked of moto directly, not through the proxy.
          const c = new S3Client({
            endpoint: moto.endpoint,
            region: moto.region,
            forcePathStyle: true,
            credentials: { accessKeyId: moto.accessKeyId, secretAccessKey: moto.secretAccessKey },
          });
          try {
            const r = await c.send(new ListMultipartUploadsCommand({ Bucket: 'tern-retry' }));
            return r.Uploads?.length ?? 0;
          } finally {
            c.destroy();
          }
        },
        stop: () => moto.stop(),
      };
    },
  },
  {
    name: 'azblob on azurite',
    start: async (proxy) => {
      const az = await startAzurite(['ternretry']);
      const acct = az.accounts[0]!;
      return {
        target: az.endpoint,
        store: (o) =>
          new AzureBlobStore({
            account: acct.name,
            container: 'retry',
            prefix: 'p',
            endpoint: `${proxy().endpoint}/${acct.name}`,
            key: acct.key,
            retry: { ...RETRY, ...(o.maxAttempts ? { maxAttempts: o.maxAttempts } : {}) },
            ...(o.multipart ? { multipartThreshold: 8 * MiB, blockSize: 5 * MiB } : {}),
            ...(o.timeoutMs ? { requestTimeoutMs: o.timeoutMs } : {}),
          }),
        isPart: (method, url) => method === 'PUT' && /[?&]comp=block(&|$)/.test(url),
        stop: () => az.stop(),
      };
    },
  },
];

for (const s of servers) {
  describe(`retries through a fault-injecting proxy: ${s.name}`, () => {
    let server: Server | undefined;
    let proxy: FaultProxy | undefined;
    let skip: string | undefined;
    const stores: ObjectStore[] = [];

    before(async () => {
      const r = await s.start(() => proxy!);
      if ('skip' in r) {
        skip = r.skip;
        return;
      }
      server = r;
      proxy = await startFaultProxy(server.target);
      // The bucket/container exists before faults start.
      await open({}).put('warmup', Buffer.from('x'));
    });
    after(async () => {
      for (const st of stores) await st.close?.();
      await proxy?.stop();
      await server?.stop();
    });

    function open(o: Parameters<Server['store']>[0]): ObjectStore {
      const st = server!.store(o);
      stores.push(st);
      return st;
    }

    /** Fault plan for the requests that follow; request numbers count from now. */
    function faults(
      fn: (i: number, method: string, url: string) => ReturnType<FaultProxy['plan']>,
    ): () => number {
      const p = proxy!;
      const base = p.seen.length;
      p.plan = ({ n, method, url }) => fn(n - base, method, url);
      return () => p.seen.length - base;
    }

    test('503 on the first three requests, then the put and the get go through', async (t) => {
      if (!server) return t.skip(skip);
      const st = open({});
      const data = crypto.randomBytes(64 * 1024);
      const count = faults((i) => (i <= 3 ? { kind: 'status', status: 503 } : undefined));
      await st.put('a', data);
      assert.equal(count(), 4, 'three refused attempts and one that landed');
      assert.ok((await st.get('a')).equals(data));
    });

    test('429 with Retry-After: 1 is waited out', async (t) => {
      if (!server) return t.skip(skip);
      const st = open({});
      faults((i) => (i === 1 ? { kind: 'status', status: 429, retryAfter: '1' } : undefined));
      const t0 = performance.now();
      await st.put('b', Buffer.from('throttled'));
      const ms = performance.now() - t0;
      assert.ok(ms >= 950, `retried after ${ms.toFixed(0)} ms, before the server's 1 s`);
      assert.ok(ms < 5000, `took ${ms.toFixed(0)} ms`);
      faults(() => undefined);
      assert.equal((await st.get('b')).toString(), 'throttled');
    });

    test('a dropped connection and an unanswered request are retried', async (t) => {
      if (!server) return t.skip(skip);
      const st = open({ timeoutMs: 1000 });
      const data = crypto.randomBytes(256 * 1024);
      faults((i) => (i === 1 ? { kind: 'reset' } : undefined));
      await st.put('c', data);
      const count = faults((i) => (i === 1 ? { kind: 'hang' } : undefined));
      const t0 = performance.now();
      assert.equal((await st.head('c'))?.size, data.length);
      const ms = performance.now() - t0;
      assert.ok(
        ms >= 900 && ms < 5000,
        `the hung request was given up by the 1 s timeout (${ms.toFixed(0)} ms)`,
      );
      assert.equal(count(), 2);
      assert.ok((await st.get('c')).equals(data));
    });

    test('multipart: only the failed part is sent again', async (t) => {
      if (!server) return t.skip(skip);
      const st = open({ multipart: true });
      const data = crypto.randomBytes(20 * MiB + 1);
      let parts = 0;
      let failed = false;
      faults((_i, method, url) => {
        if (!server!.isPart(method, url)) return undefined;
        parts++;
        if (parts === 2 && !failed) {
          failed = true;
          return { kind: 'status', status: 500 };
        }
        return undefined;
      });
      await st.put('big', data);
      assert.equal(parts, 5 + 1, 'five 5 MiB parts (the last one byte), one of them sent twice');
      faults(() => undefined);
      assert.ok((await st.get('big')).equals(data));
    });

    test('gives up after the attempt cap with StorageError; 404 is not retried', async (t) => {
      if (!server) return t.skip(skip);
      const st = open({ maxAttempts: 3 });
      let count = faults(() => ({ kind: 'status', status: 503 }));
      await assert.rejects(st.get('a'), StorageError);
      assert.equal(count(), 3);
      count = faults(() => undefined);
      await assert.rejects(st.get('missing'), NotFoundError);
      assert.equal(count(), 1);
    });

    test('507 is NoSpaceError and 403 ForbiddenError, neither retried', async (t) => {
      if (!server) return t.skip(skip);
      const st = open({});
      let count = faults(() => ({ kind: 'status', status: 507 }));
      await assert.rejects(st.put('e', Buffer.from('x')), NoSpaceError);
      assert.equal(count(), 1);
      count = faults(() => ({ kind: 'status', status: 403 }));
      await assert.rejects(st.get('warmup'), ForbiddenError);
      assert.equal(count(), 1);
      faults(() => undefined);
    });

    test('a multipart put that fails for good leaves no upload behind', async (t) => {
      if (!server) return t.skip(skip);
      if (!server.pendingUploads) return t.skip('no multipart upload state to inspect on this server');
      const st = open({ multipart: true });
      faults((_i, method, url) =>
        server!.isPart(method, url) ? { kind: 'status', status: 403 } : undefined,
      );
      await assert.rejects(st.put('doomed', crypto.randomBytes(12 * MiB)), ForbiddenError);
      faults(() => undefined);
      assert.equal(await server.pendingUploads(), 0, 'the multipart upload was aborted');
      assert.equal(await st.head('doomed'), undefined);
    });

    test('abort during a long Retry-After ends at once with CancelledError', async (t) => {
      if (!server) return t.skip(skip);
      const st = open({});
      faults(() => ({ kind: 'status', status: 503, retryAfter: '30' }));
      const ac = new AbortController();
      setTimeout(() => ac.abort(new Error('test abort')), 300);
      const t0 = performance.now();
      await assert.rejects(st.put('d', Buffer.from('x'), { signal: ac.signal }), CancelledError);
      assert.ok(performance.now() - t0 < 3000, 'the backoff sleep was cut short');
      faults(() => undefined);
    });
  });
}
