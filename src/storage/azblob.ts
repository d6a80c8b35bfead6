/**
 * Object store on Azure Blob Storage (block blobs), also Azurite.
 * Create-only puts use `If-None-Match: *`; large objects are staged as blocks in parallel (each block retried on
 * its own) and committed with one block list, so readers see all or nothing. The container is created on the
 * first put that finds it missing.
 */
import { randomBytes } from 'node:crypto';
import type { Readable } from 'node:stream';
import {
  AnonymousCredential,
  BlobServiceClient,
  StorageSharedKeyCredential,
  type BlockBlobClient,
  type ContainerClient,
  type StoragePipelineOptions,
} from '@azure/storage-blob';
import { ConflictError, InputError, TernError, throwIfAborted, type RunOptions } from '../core/base.ts';
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

export interface AzureBlobStoreOptions {
  account: string;
  container: string;
  /** Blob name prefix inside the container ('' or 'a/b'). */
  prefix?: string;
  /** Blob service URL of the account; default https://ACCOUNT.blob.core.windows.net (Azurite: http://127.0.0.1:P/ACCOUNT). */
  endpoint?: string;
  /** One of: shared key, SAS token, connection string. */
  key?: string;
  sas?: string;
  connectionString?: string;
  /** Objects larger than this are staged as blocks (default 32 MiB). */
  multipartThreshold?: number;
  /** Block size (default 8 MiB). */
  blockSize?: number;
  /** Blocks of one object in flight (default 4). */
  blockConcurrency?: number;
  retry?: Partial<RetryPolicy>;
  /** Time limit of one request in ms (default 60 s), plus 4 s per MiB of body; a timeout is retried. */
  requestTimeoutMs?: number;
}

const MiB = 1024 * 1024;
const MAX_BLOCKS = 50_000;

export class AzureBlobStore implements ObjectStore {
  readonly location: string;
  private readonly container: ContainerClient;
  private readonly prefix: string;
  private readonly multipartThreshold: number;
  private readonly blockSize: number;
  private readonly blockConcurrency: number;
  private readonly retry: Partial<RetryPolicy> | undefined;
  private readonly requestTimeoutMs: number;
  private readonly secrets: string[];
  private containerReady: Promise<void> | undefined;

  constructor(o: AzureBlobStoreOptions) {
    if (!/^[a-z0-9]{3,24}$/.test(o.account))
      throw new InputError(`invalid Azure storage account name "${o.account}"`);
    if (!/^(\$root|[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9])$/.test(o.container))
      throw new InputError(`invalid Azure container name "${o.container}"`);
    const p = (o.prefix ?? '').replace(/^\/+|\/+$/g, '');
    this.prefix = p ? `${p}/` : '';
    this.multipartThreshold = o.multipartThreshold ?? 32 * MiB;
    this.blockSize = o.blockSize ?? 8 * MiB;
    this.blockConcurrency = o.blockConcurrency ?? 4;
    this.retry = o.retry;
    this.requestTimeoutMs = o.requestTimeoutMs ?? 60_000;
    const sas = o.sas?.replace(/^\?/, '');
    this.secrets = [o.key, sas, o.connectionString].filter((s): s is string => !!s);
    const endpoint = (o.endpoint ?? `https://${o.account}.blob.core.windows.net`).replace(/\/+$/, '');
    this.location = `azblob://${o.account}/${o.container}/${p}${o.endpoint ? ` (${safeEndpoint(endpoint)})` : ''}`;
    // One retry policy for every backend lives in retry.ts.
    const pipeline: StoragePipelineOptions = {
      // tryTimeoutInMs is only a server-side limit: the client-side one is withRetry's.
      retryOptions: { maxTries: 1 },
    };
    let service: BlobServiceClient;
    if (o.connectionString) {
      try {
        service = BlobServiceClient.fromConnectionString(o.connectionString, pipeline);
      } catch {
        // The SDK's message may quote the string: say only what is wrong.
        throw new InputError('invalid Azure storage connection string');
      }
    } else if (o.key) {
      let cred: StorageSharedKeyCredential;
      try {
        cred = new StorageSharedKeyCredential(o.account, o.key);
      } catch {
        throw new InputError('invalid Azure storage account key');
      }
      service = new BlobServiceClient(endpoint, cred, pipeline);
    } else if (sas) {
      service = new BlobServiceClient(`${endpoint}?${sas}`, new AnonymousCredential(), pipeline);
    } else {
      throw new InputError(
        `no credentials for ${this.location}: set AZURE_STORAGE_KEY, AZURE_STORAGE_SAS_TOKEN or AZURE_STORAGE_CONNECTION_STRING`,
      );
    }
    this.container = service.getContainerClient(o.container);
  }

  private blob(key: string): BlockBlobClient {
    if (key.startsWith('/') || key.split('/').includes('..'))
      throw new InputError(`invalid object key "${key}"`);
    return this.container.getBlockBlobClient(this.prefix + key);
  }

  private fail(op: string, key: string, err: unknown, opts?: RunOptions): TernError {
    return mapFailure(
      failureOf(err),
      { op, key, location: this.location, signal: opts?.signal, secrets: this.secrets },
      err,
    );
  }

  /** One request under the shared retry policy, with a per-attempt time limit that grows with the bytes carried. */
  private retried<T>(
    fn: (signal: AbortSignal | undefined) => Promise<T>,
    signal: AbortSignal | undefined,
    bytes = 0,
  ): Promise<T> {
    return withRetry((_attempt, attemptSignal) => fn(attemptSignal), classify, this.ctx(signal, bytes));
  }

  private ctx(signal: AbortSignal | undefined, bytes: number): RetryContext {
    return {
      signal,
      policy: this.retry,
      timeoutMs: attemptTimeoutMs(this.requestTimeoutMs, bytes),
    };
  }

  async get(key: string, opts?: RunOptions): Promise<Buffer> {
    return this.read('get', key, 0, undefined, opts);
  }

  async getRange(key: string, offset: number, length: number, opts?: RunOptions): Promise<Buffer> {
    if (length <= 0) return Buffer.alloc(0);
    try {
      return await this.read('getRange', key, offset, length, opts);
    } catch (err) {
      // A range that starts at or past the end: like a short read of a file, not an error.
      if (err instanceof TernError && err.details.status === 416 && (await this.head(key, opts)))
        return Buffer.alloc(0);
      throw err;
    }
  }

  private async read(
    op: string,
    key: string,
    offset: number,
    count: number | undefined,
    opts?: RunOptions,
  ): Promise<Buffer> {
    throwIfAborted(opts?.signal);
    const blob = this.blob(key);
    try {
      return await this.retried(
        async (signal) => {
          const r = await blob.download(offset, count, { abortSignal: signal, maxRetryRequests: 0 });
          return r.readableStreamBody ? await collect(r.readableStreamBody) : Buffer.alloc(0);
        },
        opts?.signal,
        count ?? GET_BYTES_GUESS,
      );
    } catch (err) {
      throw this.fail(op, key, err, opts);
    }
  }

  async put(key: string, data: Buffer, opts?: PutOptions): Promise<void> {
    throwIfAborted(opts?.signal);
    const blob = this.blob(key);
    const once = (): Promise<void> =>
      data.length > this.multipartThreshold
        ? this.putBlocks(blob, key, data, opts)
        : this.putSingle(blob, key, data, opts);
    try {
      await once();
    } catch (err) {
      if (!isContainerNotFound(err)) throw err;
      await this.ensureContainer(opts);
      try {
        await once();
      } catch (again) {
        throw this.fail('put', key, again, opts);
      }
    }
  }

  private async putSingle(
    blob: BlockBlobClient,
    key: string,
    data: Buffer,
    opts?: PutOptions,
  ): Promise<void> {
    try {
      await this.retried(
        (signal) =>
          blob
            .upload(data, data.length, {
              abortSignal: signal,
              ...(opts?.ifNoneMatch ? { conditions: { ifNoneMatch: '*' } } : {}),
            })
            .catch((err: unknown) => {
              throw conflictOr(err, !!opts?.ifNoneMatch, key, this.location);
            }),
        opts?.signal,
        data.length,
      );
    } catch (err) {
      if (err instanceof ConflictError || isContainerNotFound(err)) throw err;
      throw this.fail('put', key, err, opts);
    }
  }

  private async putBlocks(
    blob: BlockBlobClient,
    key: string,
    data: Buffer,
    opts?: PutOptions,
  ): Promise<void> {
    const blockSize = Math.max(this.blockSize, Math.ceil(data.length / MAX_BLOCKS));
    // Block ids must have one length per blob; a nonce keeps two writers of the same name apart.
    const nonce = randomBytes(8).toString('hex');
    const offsets: number[] = [];
    for (let off = 0; off < data.length; off += blockSize) offsets.push(off);
    const ids = offsets.map((_, i) =>
      Buffer.from(`${nonce}-${String(i).padStart(6, '0')}`).toString('base64'),
    );
    try {
      await mapLimit(
        offsets,
        this.blockConcurrency,
        async (off, i, blocksSignal) => {
          const body = data.subarray(off, Math.min(data.length, off + blockSize));
          await this.retried(
            (signal) => blob.stageBlock(ids[i]!, body, body.length, { abortSignal: signal }),
            blocksSignal,
            body.length,
          );
        },
        opts?.signal,
      );
      await this.retried(
        (signal) =>
          blob
            .commitBlockList(ids, {
              abortSignal: signal,
              ...(opts?.ifNoneMatch ? { conditions: { ifNoneMatch: '*' } } : {}),
            })
            .catch((err: unknown) => {
              throw conflictOr(err, !!opts?.ifNoneMatch, key, this.location);
            }),
        opts?.signal,
      );
    } catch (err) {
      // Uncommitted blocks are garbage-collected by the service after a week; nothing to clean up here.
      if (err instanceof ConflictError || isContainerNotFound(err)) throw err;
      throw this.fail('put', key, err, opts);
    }
  }

  /** Creates the container once per store (repo init on a fresh account); an existing one is fine. */
  private ensureContainer(opts?: RunOptions): Promise<void> {
    this.containerReady ??= this.retried(async (signal) => {
      await this.container.createIfNotExists({ abortSignal: signal });
    }, opts?.signal).catch((err: unknown) => {
      this.containerReady = undefined;
      throw this.fail('create container', '', err, opts);
    });
    return this.containerReady;
  }

  async head(key: string, opts?: RunOptions): Promise<ObjectInfo | undefined> {
    throwIfAborted(opts?.signal);
    const blob = this.blob(key);
    try {
      const p = await this.retried((signal) => blob.getProperties({ abortSignal: signal }), opts?.signal);
      return { key, size: p.contentLength ?? 0, ...(p.lastModified ? { modified: p.lastModified } : {}) };
    } catch (err) {
      if (failureOf(err).status === 404) return undefined;
      throw this.fail('head', key, err, opts);
    }
  }

  async *list(prefix: string, opts?: RunOptions): AsyncIterable<ObjectInfo> {
    if (prefix.startsWith('/')) throw new InputError(`invalid prefix "${prefix}"`);
    let token: string | undefined;
    do {
      throwIfAborted(opts?.signal);
      const continuation = token;
      let page;
      try {
        page = await this.retried(async (signal) => {
          const it = this.container
            .listBlobsFlat({ prefix: this.prefix + prefix, abortSignal: signal })
            // 1000 like S3, so pagination is exercised by the same contract test on both.
            .byPage({ maxPageSize: 1000, ...(continuation ? { continuationToken: continuation } : {}) });
          const r = await it.next();
          return r.done ? undefined : r.value;
        }, opts?.signal);
      } catch (err) {
        if (isContainerNotFound(err)) return;
        throw this.fail('list', prefix, err, opts);
      }
      if (!page) return;
      for (const b of page.segment.blobItems) {
        if (!b.name.startsWith(this.prefix)) continue;
        yield {
          key: b.name.slice(this.prefix.length),
          size: b.properties.contentLength ?? 0,
          modified: b.properties.lastModified,
        };
      }
      token = page.continuationToken || undefined;
    } while (token);
  }

  async delete(key: string, opts?: RunOptions): Promise<void> {
    throwIfAborted(opts?.signal);
    const blob = this.blob(key);
    try {
      await this.retried((signal) => blob.delete({ abortSignal: signal }), opts?.signal);
    } catch (err) {
      if (failureOf(err).status === 404) return;
      throw this.fail('delete', key, err, opts);
    }
  }
}

async function collect(stream: NodeJS.ReadableStream): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of stream as Readable) chunks.push(c as Buffer);
  return chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks);
}

/** Status and service code of a RestError (x-ms-error-code), or the socket code of a network failure. */
function failureOf(err: unknown): Failure {
  const e = err as {
    statusCode?: number;
    code?: string;
    message?: string;
    details?: { errorCode?: string };
    response?: { headers?: { get(name: string): string | undefined } };
  } | null;
  const status = e?.statusCode;
  const code =
    e?.details?.errorCode ?? e?.response?.headers?.get('x-ms-error-code') ?? netErrorCode(err) ?? e?.code;
  // Service messages end with RequestId/Time lines; the first line says it all.
  const message = (e?.message ?? String(err)).split('\n')[0] ?? '';
  return { ...(status !== undefined ? { status } : {}), ...(code ? { code } : {}), message };
}

const RETRYABLE_CODES = new Set(['ServerBusy', 'OperationTimedOut', 'InternalError', 'REQUEST_SEND_ERROR']);

function classify(err: unknown): RetryVerdict {
  if (err instanceof ConflictError) return { retryable: false };
  const f = failureOf(err);
  const retryable =
    (f.status !== undefined && RETRYABLE_STATUS.has(f.status)) ||
    (f.code !== undefined && RETRYABLE_CODES.has(f.code)) ||
    netErrorCode(err) !== undefined ||
    // An abort that is not the caller's (withRetry checks that first): a socket torn down under the SDK.
    (err as { name?: string } | null)?.name === 'AbortError';
  const headers = (err as { response?: { headers?: { get(name: string): string | undefined } } } | null)
    ?.response?.headers;
  const ms = headers?.get('x-ms-retry-after-ms');
  const retryAfterMs =
    ms !== undefined && /^\d+$/.test(ms) ? Number(ms) : parseRetryAfter(headers?.get('retry-after'));
  return { retryable, ...(retryAfterMs !== undefined ? { retryAfterMs } : {}) };
}

function isContainerNotFound(err: unknown): boolean {
  return failureOf(err).code === 'ContainerNotFound';
}

/** A create-only write refused because the blob exists (409 BlobAlreadyExists or 412 ConditionNotMet). */
function conflictOr(err: unknown, createOnly: boolean, key: string, location: string): unknown {
  const f = failureOf(err);
  if (createOnly && (f.status === 412 || f.code === 'BlobAlreadyExists' || f.code === 'ConditionNotMet'))
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
