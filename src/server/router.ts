/** A minimal router: method + path template ("/v1/apps/:name") → handler. Static segments win over params. */
import type { IncomingMessage, ServerResponse } from 'node:http';

export interface RequestContext {
  req: IncomingMessage;
  res: ServerResponse;
  params: Record<string, string>;
  query: URLSearchParams;
  /** Parsed JSON body (undefined for no body). */
  body: unknown;
  signal: AbortSignal;
}

/** A handler returns a JSON reply, or `undefined` when it wrote the response itself (streams). */
export type Reply = { status: number; body?: unknown; headers?: Record<string, string> };
export type Handler = (ctx: RequestContext) => Promise<Reply | undefined>;

/** What the OpenAPI document says about a route (schema names are components from schemas.ts). */
export interface RouteDoc {
  summary: string;
  tag: string;
  body?: string;
  /** Success status → component name, `[name]` for an array, or a media type for non-JSON bodies. */
  responses: Record<number, string | [string] | { mediaType: string }>;
  query?: Record<string, string>;
}

export interface RouteSpec {
  method: 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';
  path: string;
  /** Routes without auth: health and the API description. */
  public?: boolean;
  doc: RouteDoc;
  handler: Handler;
}

interface Compiled extends RouteSpec {
  segments: string[];
  staticCount: number;
}

export class Router {
  private readonly routes: Compiled[] = [];

  add(spec: RouteSpec): this {
    const segments = spec.path.split('/').filter(Boolean);
    this.routes.push({ ...spec, segments, staticCount: segments.filter((s) => !s.startsWith(':')).length });
    // More specific (more static segments) first, so /v1/actions/events beats /v1/actions/:id.
    this.routes.sort((a, b) => b.staticCount - a.staticCount);
    return this;
  }

  /** The route for a request, `{ allowed }` when the path exists under other methods, or undefined. */
  match(
    method: string,
    pathname: string,
  ): { route: RouteSpec; params: Record<string, string> } | { allowed: string[] } | undefined {
    const parts = pathname.split('/').filter(Boolean);
    const allowed: string[] = [];
    for (const r of this.routes) {
      const params = matchSegments(r.segments, parts);
      if (!params) continue;
      if (r.method === method) return { route: r, params };
      allowed.push(r.method);
    }
    return allowed.length > 0 ? { allowed } : undefined;
  }

  list(): readonly RouteSpec[] {
    return this.routes;
  }
}

function matchSegments(segments: string[], parts: string[]): Record<string, string> | undefined {
  if (segments.length !== parts.length) return undefined;
  const params: Record<string, string> = {};
  for (let i = 0; i < segments.length; i++) {
    const s = segments[i] ?? '';
    const p = parts[i] ?? '';
    if (s.startsWith(':')) {
      try {
        params[s.slice(1)] = decodeURIComponent(p);
      } catch {
        return undefined;
      }
    } else if (s !== p) return undefined;
  }
  return params;
}
