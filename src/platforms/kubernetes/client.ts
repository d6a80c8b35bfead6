/**
 * A small JSON client over @kubernetes/client-node's KubeConfig and HTTP library. Objects are kept as plain
 * JSON (the typed models of client-node drop fields they do not know, which a backup must never do), and
 * every failure becomes one of our typed errors: 401 AuthError, 403 ForbiddenError, 404 NotFoundError,
 * 409 ConflictError, 422/400 InputError, connection failures UnavailableError.
 */
import {
  HttpMethod,
  IsomorphicFetchHttpLibrary,
  RequestContext,
  type KubeConfig,
} from '@kubernetes/client-node';
import {
  AuthError,
  CancelledError,
  ConflictError,
  ForbiddenError,
  InputError,
  NotFoundError,
  StorageError,
  UnavailableError,
  type TernError,
} from '../../core/index.ts';

export interface ObjectMeta {
  name: string;
  namespace?: string;
  uid?: string;
  resourceVersion?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  ownerReferences?: OwnerReference[];
  finalizers?: string[];
  [k: string]: unknown;
}

export interface OwnerReference {
  apiVersion: string;
  kind: string;
  name: string;
  uid: string;
  controller?: boolean;
  blockOwnerDeletion?: boolean;
}

/** Any Kubernetes object as JSON. */
export interface KubeObject {
  apiVersion: string;
  kind: string;
  metadata: ObjectMeta;
  [k: string]: unknown;
}

export interface KubeList {
  items: KubeObject[];
  metadata?: { continue?: string; resourceVersion?: string };
}

/** One resource type as discovery reports it. */
export interface ResourceType {
  group: string;
  version: string;
  /** "v1" or "group/version" */
  apiVersion: string;
  kind: string;
  plural: string;
  namespaced: boolean;
  verbs: string[];
}

export interface RequestOptions {
  body?: unknown;
  query?: Record<string, string | undefined>;
  contentType?: string;
  signal?: AbortSignal;
}

const http = new IsomorphicFetchHttpLibrary();

function statusMessage(body: string): string {
  try {
    const j = JSON.parse(body) as { message?: string };
    if (j.message) return j.message;
  } catch {
    // not a Status object
  }
  return body.slice(0, 300);
}

export class KubeClient {
  readonly kc: KubeConfig;
  readonly server: string;
  private readonly timeoutMs: number;

  constructor(kc: KubeConfig, opts: { timeoutMs?: number } = {}) {
    const cluster = kc.getCurrentCluster();
    if (!cluster) throw new InputError('the kubeconfig has no current cluster');
    this.kc = kc;
    this.server = cluster.server.replace(/\/+$/, '');
    this.timeoutMs = opts.timeoutMs ?? 30_000;
  }

  async request<T>(method: keyof typeof HttpMethod, path: string, opts: RequestOptions = {}): Promise<T> {
    if (opts.signal?.aborted) throw new CancelledError('operation cancelled', { cause: opts.signal.reason });
    const ctx = new RequestContext(this.server + path, HttpMethod[method]);
    for (const [k, v] of Object.entries(opts.query ?? {})) if (v !== undefined) ctx.setQueryParam(k, v);
    ctx.setHeaderParam('Accept', 'application/json');
    if (opts.body !== undefined) {
      ctx.setHeaderParam('Content-Type', opts.contentType ?? 'application/json');
      ctx.setBody(JSON.stringify(opts.body));
    }
    const timeout = AbortSignal.timeout(this.timeoutMs);
    ctx.setSignal(opts.signal ? AbortSignal.any([opts.signal, timeout]) : timeout);
    await this.kc.applySecurityAuthentication(ctx);
    const what = `${method} ${path}`;
    let status: number;
    let text: string;
    try {
      const resp = await http.send(ctx).toPromise();
      status = resp.httpStatusCode;
      text = await resp.body.text();
    } catch (err) {
      if (opts.signal?.aborted) throw new CancelledError('operation cancelled', { cause: err });
      if (timeout.aborted)
        throw new UnavailableError(
          `Kubernetes API ${this.server} did not answer ${what} in ${this.timeoutMs} ms`,
          {
            cause: err,
          },
        );
      throw new UnavailableError(`Kubernetes API ${this.server} unreachable (${what})`, { cause: err });
    }
    if (status >= 200 && status < 300) return (text ? JSON.parse(text) : {}) as T;
    throw this.toError(status, what, text);
  }

  private toError(status: number, what: string, body: string): TernError {
    const msg = `${what}: ${statusMessage(body)}`;
    const details = { httpStatus: status };
    switch (status) {
      case 400:
      case 422:
        return new InputError(`Kubernetes rejected ${msg}`, { details });
      case 401:
        return new AuthError(`Kubernetes authentication failed for ${msg}`, { details });
      case 403:
        return new ForbiddenError(`Kubernetes RBAC forbids ${msg}`, { details });
      case 404:
        return new NotFoundError(`not found: ${msg}`, { details });
      case 409:
        return new ConflictError(`conflict: ${msg}`, { details });
      case 429:
      case 500:
      case 502:
      case 503:
      case 504:
        return new UnavailableError(`Kubernetes API unavailable (${status}) for ${msg}`, { details });
      default:
        return new StorageError(`Kubernetes API error ${status} for ${msg}`, { details });
    }
  }

  // ---- resource paths ----

  static path(
    t: Pick<ResourceType, 'group' | 'version' | 'plural' | 'namespaced'>,
    ns?: string,
    name?: string,
  ): string {
    let p = t.group === '' ? `/api/${t.version}` : `/apis/${t.group}/${t.version}`;
    if (t.namespaced && ns) p += `/namespaces/${encodeURIComponent(ns)}`;
    p += `/${t.plural}`;
    if (name !== undefined) p += `/${encodeURIComponent(name)}`;
    return p;
  }

  /** Every object of one type (following `continue` pages). */
  async list(
    t: ResourceType,
    ns?: string,
    opts: { signal?: AbortSignal; labelSelector?: string } = {},
  ): Promise<KubeObject[]> {
    const out: KubeObject[] = [];
    let cont: string | undefined;
    do {
      const page = await this.request<KubeList>('GET', KubeClient.path(t, ns), {
        query: { limit: '500', continue: cont, labelSelector: opts.labelSelector },
        signal: opts.signal,
      });
      for (const item of page.items ?? []) out.push({ ...item, apiVersion: t.apiVersion, kind: t.kind });
      cont = page.metadata?.continue || undefined;
    } while (cont);
    return out;
  }

  async get(
    t: ResourceType,
    ns: string | undefined,
    name: string,
    signal?: AbortSignal,
  ): Promise<KubeObject> {
    return this.request<KubeObject>('GET', KubeClient.path(t, ns, name), { signal });
  }

  /** Like get, but undefined when the object does not exist. */
  async find(
    t: ResourceType,
    ns: string | undefined,
    name: string,
    signal?: AbortSignal,
  ): Promise<KubeObject | undefined> {
    try {
      return await this.get(t, ns, name, signal);
    } catch (err) {
      if (err instanceof NotFoundError) return undefined;
      throw err;
    }
  }

  async create(
    t: ResourceType,
    obj: KubeObject,
    opts: { dryRun?: boolean; signal?: AbortSignal } = {},
  ): Promise<KubeObject> {
    return this.request<KubeObject>('POST', KubeClient.path(t, obj.metadata.namespace), {
      body: obj,
      query: { dryRun: opts.dryRun ? 'All' : undefined, fieldManager: 'tern' },
      signal: opts.signal,
    });
  }

  async replace(
    t: ResourceType,
    obj: KubeObject,
    opts: { dryRun?: boolean; signal?: AbortSignal } = {},
  ): Promise<KubeObject> {
    return this.request<KubeObject>('PUT', KubeClient.path(t, obj.metadata.namespace, obj.metadata.name), {
      body: obj,
      query: { dryRun: opts.dryRun ? 'All' : undefined, fieldManager: 'tern' },
      signal: opts.signal,
    });
  }

  async mergePatch(
    t: ResourceType,
    ns: string | undefined,
    name: string,
    patch: unknown,
    signal?: AbortSignal,
  ): Promise<KubeObject> {
    return this.request<KubeObject>('PATCH', KubeClient.path(t, ns, name), {
      body: patch,
      contentType: 'application/merge-patch+json',
      query: { fieldManager: 'tern' },
      signal,
    });
  }

  async replaceStatus(t: ResourceType, obj: KubeObject, signal?: AbortSignal): Promise<KubeObject> {
    return this.request<KubeObject>(
      'PUT',
      `${KubeClient.path(t, obj.metadata.namespace, obj.metadata.name)}/status`,
      {
        body: obj,
        signal,
      },
    );
  }

  async delete(t: ResourceType, ns: string | undefined, name: string, signal?: AbortSignal): Promise<void> {
    try {
      await this.request('DELETE', KubeClient.path(t, ns, name), { signal });
    } catch (err) {
      if (!(err instanceof NotFoundError)) throw err;
    }
  }

  async version(signal?: AbortSignal): Promise<{ gitVersion?: string; major?: string; minor?: string }> {
    return this.request('GET', '/version', { signal });
  }
}

/** Well-known types, so that code that needs them does not wait for discovery. */
export const T = {
  namespace: {
    group: '',
    version: 'v1',
    apiVersion: 'v1',
    kind: 'Namespace',
    plural: 'namespaces',
    namespaced: false,
    verbs: [],
  },
  pvc: {
    group: '',
    version: 'v1',
    apiVersion: 'v1',
    kind: 'PersistentVolumeClaim',
    plural: 'persistentvolumeclaims',
    namespaced: true,
    verbs: [],
  },
  pv: {
    group: '',
    version: 'v1',
    apiVersion: 'v1',
    kind: 'PersistentVolume',
    plural: 'persistentvolumes',
    namespaced: false,
    verbs: [],
  },
  storageClass: {
    group: 'storage.k8s.io',
    version: 'v1',
    apiVersion: 'storage.k8s.io/v1',
    kind: 'StorageClass',
    plural: 'storageclasses',
    namespaced: false,
    verbs: [],
  },
  crd: {
    group: 'apiextensions.k8s.io',
    version: 'v1',
    apiVersion: 'apiextensions.k8s.io/v1',
    kind: 'CustomResourceDefinition',
    plural: 'customresourcedefinitions',
    namespaced: false,
    verbs: [],
  },
  volumeSnapshot: {
    group: 'snapshot.storage.k8s.io',
    version: 'v1',
    apiVersion: 'snapshot.storage.k8s.io/v1',
    kind: 'VolumeSnapshot',
    plural: 'volumesnapshots',
    namespaced: true,
    verbs: [],
  },
  volumeSnapshotContent: {
    group: 'snapshot.storage.k8s.io',
    version: 'v1',
    apiVersion: 'snapshot.storage.k8s.io/v1',
    kind: 'VolumeSnapshotContent',
    plural: 'volumesnapshotcontents',
    namespaced: false,
    verbs: [],
  },
  volumeSnapshotClass: {
    group: 'snapshot.storage.k8s.io',
    version: 'v1',
    apiVersion: 'snapshot.storage.k8s.io/v1',
    kind: 'VolumeSnapshotClass',
    plural: 'volumesnapshotclasses',
    namespaced: false,
    verbs: [],
  },
} satisfies Record<string, ResourceType>;
