/**
 * Object store on S3 or any S3-compatible server (moto, MinIO, Ceph RGW…).
 * Create-only puts use `If-None-Match: *` (S3 conditional writes); large objects go up as multipart uploads
 * with parts in parallel, each part retried on its own. The bucket is created on the first put that finds it missing.
 */
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateBucketCommand,
  CreateMultipartUploadCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  UploadPartCommand,
  type BucketLocationConstraint,
  type S3ClientConfig,
} from '@aws-sdk/client-s3';
import { ConflictError, InputError, throwIfAborted, type RunOptions } from '../core/base.ts';
import { mapFailure, type Failure } from './errors.ts';
import {
  mapLimit,
  netErrorCode,
  parseRetryAfter,
  RETRYABLE_STATUS,
  withRetry,
  type RetryContext,
  type RetryPolicy,
  type RetryVerdict,
  attemptTimeoutMs,
  GET_BYTES_GUESS,
} from './retry.ts';
import type { ObjectInfo, ObjectStore, PutOptions } from './types.ts';

export interface S3StoreOptions {
  bucket: string;
  /** Key prefix inside the bucket ('' or 'a/b'). */
  prefix?: string;
  region?: string;
  endpoint?: string;
  forcePathStyle?: boolean;
  credentials?: { accessKeyId: string; secretAccessKey: string; sessionToken?: string };
  /** Objects larger than this go up as multipart uploads (default 32 MiB). */
  multipartThreshold?: number;
  /** Part size (default 8 MiB; raised so no object needs more than 10 000 parts). */
  partSize?: number;
  /** Parts of one object in flight (default 4). */
  partConcurrency?: number;
  /** Sockets per client (default 32): packs, parts and ranged reads run in parallel. */
  maxSockets?: number;
  retry?: Partial<RetryPolicy>;
  /** Time limit of one request in ms (default 60 s), plus 4 s per MiB of body; a timeout is retried. */
  requestTimeoutMs?: number;
}

const MiB = 1024 * 1024;
const MAX_PARTS = 10_000;

export class S3Store implements ObjectStore {
  readonly location: string;
  readonly client: S3Client;
  private readonly bucket: string;
  private readonly prefix: string;
  private readonly region: string;
  private readonly multipartThreshold: number;
  private readonly partSize: number;
  private readonly partConcurrency: number;
  private readonly retry: Partial<RetryPolicy> | undefined;
  private readonly requestTimeoutMs: number;
  private readonly secrets: string[];
  private bucketReady: Promise<void> | undefined;

  constructor(o: S3StoreOptions) {
    if (!/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(o.bucket))
      throw new InputError(`invalid S3 bucket name "${o.bucket}"`);
    this.bucket = o.bucket;
    const p = (o.prefix ?? '').replace(/^\/+|\/+$/g, '');
    this.prefix = p ? `${p}/` : '';
    this.region = o.region ?? 'us-east-1';
    this.location = `s3://${o.bucket}/${p}${o.endpoint ? ` (${safeEndpoint(o.endpoint)})` : ''}`;
    this.multipartThreshold = o.multipartThreshold ?? 32 * MiB;
    this.partSize = Math.max(5 * MiB, o.partSize ?? 8 * MiB);
    this.partConcurrency = o.partConcurrency ?? 4;
    this.retry = o.retry;
    this.requestTimeoutMs = o.requestTimeoutMs ?? 60_000;
    this.secrets = [o.credentials?.secretAccessKey, o.credentials?.sessionToken].filter(
      (s): s is string => !!s,
    );
    const config: S3ClientConfig = {
      region: this.region,
      forcePathStyle: o.forcePathStyle ?? o.endpoint !== undefined,
      // One retry policy for every backend lives in retry.ts.
      maxAttempts: 1,
      requestHandler: {
        // Whole-request time limits are withRetry's (smithy's requestTimeout only logs a warning by default).
        connectionTimeout: 10_000,
        httpAgent: { keepAlive: true, maxSockets: o.maxSockets ?? 32 },
        httpsAgent: { keepAlive: true, maxSockets: o.maxSockets ?? 32 },
      },
    };
    if (o.endpoint) config.endpoint = o.endpoint;
    if (o.credentials) config.credentials = o.credentials;
    this.client = new S3Client(config);
  }

  private k(key: string): string {
    if (key.startsWith('/') || key.split('/').includes('..'))
      throw new InputError(`invalid object key "${key}"`);
    return this.prefix + key;
  }

  /** One request under the shared retry policy; failures come out as core typed errors. */
  private async call<T>(
    op: string,
    key: string,
    fn: (signal: AbortSignal | undefined) => Promise<T>,
    opts?: RunOptions,
    bytes = 0,
  ): Promise<T> {
    try {
      return await withRetry((_attempt, signal) => fn(signal), classify, this.ctx(opts?.signal, bytes));
    } catch (err) {
      throw this.fail(op, key, err, opts);
    }
  }

  /** Retry context whose per-attempt time limit grows with the bytes the request carries. */
  private ctx(signal: AbortSignal | undefined, bytes: number): RetryContext {
    return {
      signal,
      policy: this.retry,
      timeoutMs: attemptTimeoutMs(this.requestTimeoutMs, bytes),
    };
  }

  private fail(op: string, key: string, err: unknown, opts?: RunOptions): Error {
    return mapFailure(
      failureOf(err),
      { op, key, location: this.location, signal: opts?.signal, secrets: this.secrets },
      err,
    );
  }

  async get(key: string, opts?: RunOptions): Promise<Buffer> {
    throwIfAborted(opts?.signal);
    return this.call(
      'get',
      key,
      async (abortSignal) => {
        const r = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: this.k(key) }), {
          abortSignal,
        });
        return r.Body ? asBuffer(await r.Body.transformToByteArray()) : Buffer.alloc(0);
      },
      opts,
      GET_BYTES_GUESS,
    );
  }

  async getRange(key: string, offset: number, length: number, opts?: RunOptions): Promise<Buffer> {
    throwIfAborted(opts?.signal);
    if (length <= 0) return Buffer.alloc(0);
    try {
      return await this.call(
        'getRange',
        key,
        async (abortSignal) => {
          const r = await this.client.send(
            new GetObjectCommand({
              Bucket: this.bucket,
              Key: this.k(key),
              Range: `bytes=${offset}-${offset + length - 1}`,
            }),
            { abortSignal },
          );
          return r.Body ? asBuffer(await r.Body.transformToByteArray()) : Buffer.alloc(0);
        },
        opts,
        length,
      );
    } catch (err) {
      // A range that starts at or past the end: like a short read of a file, not an error.
      if ((err as { details?: { status?: number } }).details?.status === 416 && (await this.head(key, opts)))
        return Buffer.alloc(0);
      throw err;
    }
  }

  async put(key: string, data: Buffer, opts?: PutOptions): Promise<void> {
    throwIfAborted(opts?.signal);
    const objectKey = this.k(key);
    const once = (): Promise<void> =>
      data.length > this.multipartThreshold
        ? this.putMultipart(key, objectKey, data, opts)
        : this.putSingle(key, objectKey, data, opts);
    try {
      await once();
    } catch (err) {
      if (!isNoSuchBucket(err)) throw err;
      await this.ensureBucket(opts);
      try {
        await once();
      } catch (again) {
        throw this.fail('put', key, again, opts);
      }
    }
  }

  private async putSingle(key: string, objectKey: string, data: Buffer, opts?: PutOptions): Promise<void> {
    try {
      await withRetry(
        (_attempt, signal) =>
          this.client
            .send(
              new PutObjectCommand({
                Bucket: this.bucket,
                Key: objectKey,
                Body: data,
                ContentLength: data.length,
                ...(opts?.ifNoneMatch ? { IfNoneMatch: '*' } : {}),
              }),
              { abortSignal: signal },
            )
            .catch((err: unknown) => {
              throw conflictOr(err, key, this.location);
            }),
        classify,
        this.ctx(opts?.signal, data.length),
      );
    } catch (err) {
      if (err instanceof ConflictError || isNoSuchBucket(err)) throw err;
      throw this.fail('put', key, err, opts);
    }
  }

  private async putMultipart(key: string, objectKey: string, data: Buffer, opts?: PutOptions): Promise<void> {
    const partSize = Math.max(this.partSize, Math.ceil(data.length / MAX_PARTS));
    let uploadId: string | undefined;
    try {
      const created = await withRetry(
        (_attempt, signal) =>
          this.client.send(new CreateMultipartUploadCommand({ Bucket: this.bucket, Key: objectKey }), {
            abortSignal: signal,
          }),
        classify,
        this.ctx(opts?.signal, 0),
      );
      uploadId = created.UploadId;
      if (!uploadId) throw new Error('CreateMultipartUpload returned no UploadId');
      const id = uploadId;
      const offsets: number[] = [];
      for (let off = 0; off < data.length; off += partSize) offsets.push(off);
      const etags = await mapLimit(
        offsets,
        this.partConcurrency,
        async (off, i, partsSignal) => {
          const body = data.subarray(off, Math.min(data.length, off + partSize));
          const r = await withRetry(
            (_attempt, signal) =>
              this.client.send(
                new UploadPartCommand({
                  Bucket: this.bucket,
                  Key: objectKey,
                  UploadId: id,
                  PartNumber: i + 1,
                  Body: body,
                  ContentLength: body.length,
                }),
                { abortSignal: signal },
              ),
            classify,
            this.ctx(partsSignal, body.length),
          );
          return r.ETag ?? '';
        },
        opts?.signal,
      );
      await withRetry(
        (_attempt, signal) =>
          this.client
            .send(
              new CompleteMultipartUploadCommand({
                Bucket: this.bucket,
                Key: objectKey,
                UploadId: id,
                MultipartUpload: { Parts: etags.map((ETag, i) => ({ ETag, PartNumber: i + 1 })) },
                ...(opts?.ifNoneMatch ? { IfNoneMatch: '*' } : {}),
              }),
              { abortSignal: signal },
            )
            .catch((err: unknown) => {
              throw conflictOr(err, key, this.location);
            }),
        classify,
        this.ctx(opts?.signal, data.length),
      );
      uploadId = undefined;
    } catch (err) {
      if (uploadId) {
        // Best effort: an abandoned upload costs storage until a bucket lifecycle rule removes it.
        const id = uploadId;
        await this.client
          .send(new AbortMultipartUploadCommand({ Bucket: this.bucket, Key: objectKey, UploadId: id }))
          .catch(() => undefined);
      }
      if (err instanceof ConflictError || isNoSuchBucket(err)) throw err;
      throw this.fail('put', key, err, opts);
    }
  }

  /** Creates the bucket once per store (repo init on a fresh bucket); an existing bucket is fine. */
  private ensureBucket(opts?: RunOptions): Promise<void> {
    this.bucketReady ??= this.call(
      'create bucket',
      '',
      async (abortSignal) => {
        try {
          await this.client.send(
            new CreateBucketCommand({
              Bucket: this.bucket,
              ...(this.region === 'us-east-1'
                ? {}
                : {
                    CreateBucketConfiguration: {
                      LocationConstraint: this.region as BucketLocationConstraint,
                    },
                  }),
            }),
            { abortSignal },
          );
        } catch (err) {
          const name = (err as { name?: string }).name;
          if (name !== 'BucketAlreadyOwnedByYou' && name !== 'BucketAlreadyExists') throw err;
        }
      },
      opts,
    ).catch((err: unknown) => {
      this.bucketReady = undefined;
      throw err;
    });
    return this.bucketReady;
  }

  async head(key: string, opts?: RunOptions): Promise<ObjectInfo | undefined> {
    throwIfAborted(opts?.signal);
    try {
      const r = await withRetry(
        (_attempt, signal) =>
          this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: this.k(key) }), {
            abortSignal: signal,
          }),
        classify,
        this.ctx(opts?.signal, 0),
      );
      return { key, size: r.ContentLength ?? 0, ...(r.LastModified ? { modified: r.LastModified } : {}) };
    } catch (err) {
      if (failureOf(err).status === 404) return undefined;
      throw this.fail('head', key, err, opts);
    }
  }

  async *list(prefix: string, opts?: RunOptions): AsyncIterable<ObjectInfo> {
    let token: string | undefined;
    const full = this.k(prefix);
    do {
      throwIfAborted(opts?.signal);
      const continuation = token;
      let page;
      try {
        page = await withRetry(
          (_attempt, signal) =>
            this.client.send(
              new ListObjectsV2Command({
                Bucket: this.bucket,
                Prefix: full,
                ...(continuation ? { ContinuationToken: continuation } : {}),
              }),
              { abortSignal: signal },
            ),
          classify,
          this.ctx(opts?.signal, 0),
        );
      } catch (err) {
        if (isNoSuchBucket(err)) return;
        throw this.fail('list', prefix, err, opts);
      }
      for (const o of page.Contents ?? []) {
        if (!o.Key?.startsWith(this.prefix)) continue;
        yield {
          key: o.Key.slice(this.prefix.length),
          size: o.Size ?? 0,
          ...(o.LastModified ? { modified: o.LastModified } : {}),
        };
      }
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
  }

  async delete(key: string, opts?: RunOptions): Promise<void> {
    throwIfAborted(opts?.signal);
    try {
      await withRetry(
        (_attempt, signal) =>
          this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: this.k(key) }), {
            abortSignal: signal,
          }),
        classify,
        this.ctx(opts?.signal, 0),
      );
    } catch (err) {
      // S3 answers 204 for a missing key; some compatible servers answer 404, and a missing bucket holds nothing.
      if (failureOf(err).status === 404) return;
      throw this.fail('delete', key, err, opts);
    }
  }

  close(): Promise<void> {
    this.client.destroy();
    return Promise.resolve();
  }
}

/** Status, code and message of an SDK v3 error (service exception or socket error). */
function failureOf(err: unknown): Failure {
  const e = err as {
    name?: string;
    Code?: string;
    code?: string;
    message?: string;
    $metadata?: { httpStatusCode?: number };
  } | null;
  const status = e?.$metadata?.httpStatusCode;
  const code = e?.Code ?? (status !== undefined ? e?.name : (netErrorCode(err) ?? e?.code ?? e?.name));
  return {
    ...(status !== undefined ? { status } : {}),
    ...(code ? { code } : {}),
    message: e?.message ?? String(err),
  };
}

/** A Buffer view of the SDK's bytes (Buffer.from(Uint8Array) would copy every pack read). */
function asBuffer(a: Uint8Array): Buffer {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength);
}

function headerOf(err: unknown, name: string): string | undefined {
  const headers = (err as { $response?: { headers?: Record<string, string | undefined> } } | null)?.$response
    ?.headers;
  if (!headers) return undefined;
  for (const [k, v] of Object.entries(headers)) if (k.toLowerCase() === name) return v;
  return undefined;
}

const RETRYABLE_CODES = new Set([
  'SlowDown',
  'RequestTimeout',
  'RequestTimeTooSkewed',
  'InternalError',
  'ServiceUnavailable',
  'Throttling',
  'ThrottlingException',
  'TimeoutError',
  'RequestTimeoutException',
  // A concurrent conditional write on the same key: AWS asks to retry.
  'ConditionalRequestConflict',
]);

function classify(err: unknown): RetryVerdict {
  if (err instanceof ConflictError) return { retryable: false };
  const f = failureOf(err);
  const retryable =
    (f.status !== undefined && RETRYABLE_STATUS.has(f.status)) ||
    (f.code !== undefined && RETRYABLE_CODES.has(f.code)) ||
    netErrorCode(err) !== undefined ||
    // A timeout of the HTTP handler, or an abort that is not the caller's (withRetry checks that first).
    (err as { name?: string } | null)?.name === 'TimeoutError' ||
    (err as { name?: string } | null)?.name === 'AbortError';
  const retryAfterMs = parseRetryAfter(headerOf(err, 'retry-after'));
  return { retryable, ...(retryAfterMs !== undefined ? { retryAfterMs } : {}) };
}

function isNoSuchBucket(err: unknown): boolean {
  const f = failureOf(err);
  return f.code === 'NoSuchBucket';
}

/**
 * A create-only write refused because the key exists. After a lost response the first attempt may itself have
 * written the object, so a refusal on a retry is still reported as a conflict: callers use create-only writes
 * for locks and keys, where "someone else might hold it" is the safe reading.
 */
function conflictOr(err: unknown, key: string, location: string): unknown {
  const f = failureOf(err);
  if (f.status === 412 || f.code === 'PreconditionFailed')
    return new ConflictError(`object ${key} already exists in ${location}`);
  return err;
}

function safeEndpoint(endpoint: string): string {
  try {
    const u = new URL(endpoint);
    return `${u.protocol}//${u.host}${u.pathname === '/' ? '' : u.pathname}`;
  } catch {
    return 'custom endpoint';
  }
}
