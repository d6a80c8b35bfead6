/**
 * The HTTP shell around the router: auth, JSON bodies, error mapping, SSE streams, graceful close.
 * Routes never see raw errors handling; everything they throw goes through `httpError` here.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { InputError } from '../core/index.ts';
import { checkBearer } from './auth.ts';
import { httpError } from './errors.ts';
import type { RequestContext, Router } from './router.ts';

const MAX_BODY = 1 << 20;

export interface HttpServerOptions {
  router: Router;
  token: string;
  /** Called for each finished request (method, path, status, ms). */
  log?: (line: string) => void;
}

export class HttpServer {
  private readonly server: http.Server;
  private readonly streams = new Set<http.ServerResponse>();
  private readonly closing = new AbortController();
  private readonly opts: HttpServerOptions;

  constructor(opts: HttpServerOptions) {
    this.opts = opts;
    this.server = http.createServer((req, res) => {
      void this.handle(req, res);
    });
    this.server.keepAliveTimeout = 5000;
  }

  async listen(host: string, port: number): Promise<string> {
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, host, () => {
        this.server.off('error', reject);
        resolve();
      });
    });
    const addr = this.server.address() as AddressInfo;
    const h = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
    return `http://${h}:${addr.port}`;
  }

  /** Stop accepting, end event streams, let in-flight requests finish (then cut idle keep-alives). */
  async close(): Promise<void> {
    this.closing.abort(new Error('server shutting down'));
    for (const s of this.streams) s.end();
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    this.server.closeIdleConnections();
    const timer = setTimeout(() => this.server.closeAllConnections(), 5000);
    await closed;
    clearTimeout(timer);
  }

  /** Starts a server-sent-events response; returns a writer and registers it for shutdown. */
  openStream(ctx: RequestContext): { send: (event: string, data: unknown) => void; closed: Promise<void> } {
    const { res, req } = ctx;
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-store',
      // The socket closes with the stream, so shutdown does not wait for an idle keep-alive.
      connection: 'close',
      'x-accel-buffering': 'no',
    });
    res.write(': tern event stream\n\n');
    this.streams.add(res);
    const heartbeat = setInterval(() => res.write(': ping\n\n'), 15_000);
    const closed = new Promise<void>((resolve) => {
      const done = (): void => {
        clearInterval(heartbeat);
        this.streams.delete(res);
        resolve();
      };
      res.once('close', done);
      req.once('close', done);
    });
    return {
      send: (event, data) => {
        if (!res.writableEnded) res.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
      },
      closed,
    };
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const started = Date.now();
    const ac = new AbortController();
    res.once('close', () => {
      if (!res.writableFinished) ac.abort(new Error('client went away'));
    });
    const signal = AbortSignal.any([ac.signal, this.closing.signal]);
    let status = 500;
    const url = new URL(req.url ?? '/', 'http://localhost');
    try {
      const m = this.opts.router.match(req.method ?? 'GET', url.pathname);
      if (!m) {
        status = 404;
        sendJson(res, 404, { error: { code: 'NOT_FOUND', message: `no route ${url.pathname}` } });
        return;
      }
      if ('allowed' in m) {
        status = 405;
        sendJson(
          res,
          405,
          { error: { code: 'INPUT', message: `method ${req.method} not allowed` } },
          { allow: m.allowed.join(', ') },
        );
        return;
      }
      if (!m.route.public) checkBearer(req.headers.authorization, this.opts.token);
      const body = await readJson(req);
      const reply = await m.route.handler({
        req,
        res,
        params: m.params,
        query: url.searchParams,
        body,
        signal,
      });
      if (reply) {
        status = reply.status;
        if (typeof reply.body === 'string') {
          res.writeHead(reply.status, { 'content-type': 'text/plain; charset=utf-8', ...reply.headers });
          res.end(reply.body);
        } else sendJson(res, reply.status, reply.body, reply.headers);
      } else status = res.statusCode;
    } catch (err) {
      const { status: s, body } = httpError(err);
      status = s;
      if (s === 500) this.opts.log?.(`internal error on ${req.method} ${url.pathname}: ${String(err)}`);
      if (!res.headersSent) {
        sendJson(res, s, body, s === 401 ? { 'www-authenticate': 'Bearer realm="tern"' } : undefined);
      } else res.end();
    } finally {
      this.opts.log?.(`${req.method} ${url.pathname} ${status} ${Date.now() - started}ms`);
    }
  }
}

function sendJson(
  res: http.ServerResponse,
  status: number,
  body: unknown,
  headers?: Record<string, string>,
): void {
  const text = body === undefined ? '' : JSON.stringify(body);
  res.writeHead(status, {
    ...(text ? { 'content-type': 'application/json; charset=utf-8' } : {}),
    'cache-control': 'no-store',
    ...headers,
  });
  res.end(text);
}

async function readJson(req: http.IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const c of req as AsyncIterable<Buffer>) {
    size += c.length;
    if (size > MAX_BODY) throw new InputError(`request body larger than ${MAX_BODY} bytes`);
    chunks.push(c);
  }
  if (size === 0) return undefined;
  const type = req.headers['content-type'] ?? '';
  if (!/^application\/(.+\+)?json/i.test(type))
    throw new InputError(`request body must be application/json, got "${type || 'none'}"`);
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8')) as unknown;
  } catch (err) {
    throw new InputError('request body is not valid JSON', { cause: err });
  }
}
