/**
 * `tern server`: the HTTP API in front of one TernService. Start runs the engine's restart recovery and
 * scheduler, then listens; `close` (SIGTERM) stops accepting, ends event streams, lets requests finish and
 * closes the engine, which records running actions as interrupted so the next start resumes them.
 */
import fs from 'node:fs';
import path from 'node:path';
import { InputError } from '../core/index.ts';
import type { TernService } from '../engine/service.ts';
import { loadOrCreateToken } from './auth.ts';
import { SERVER_URL_FILE } from './constants.ts';
import { HttpServer } from './http.ts';
import { Router } from './router.ts';
import { registerRoutes } from './routes.ts';
import { registerDrRoutes, type DrRuntime } from './dr.ts';
import { registerWebRoutes } from './web.ts';

export { SERVER_URL_FILE, DEFAULT_LISTEN, API } from './constants.ts';
export { loadOrCreateToken, tokenFilePath, checkBearer } from './auth.ts';
export { httpError, codeForStatus } from './errors.ts';
export { buildOpenApi } from './openapi.ts';
export { renderMetrics, type DrMetrics } from './metrics.ts';
export { DrRuntime, type DrRuntimeOptions } from './dr.ts';

export interface ServerOptions {
  service: TernService;
  dataDir: string;
  /** host:port; port 0 picks a free one (the URL is written to <dataDir>/server.url). */
  listen: string;
  tokenFile?: string;
  env?: NodeJS.ProcessEnv;
  version?: string;
  log?: (line: string) => void;
  /** DR at this site: /v1/dr routes and the import-policy timer. */
  dr?: DrRuntime;
}

export interface RunningServer {
  url: string;
  tokenSource: string;
  close(): Promise<void>;
}

export function parseListen(listen: string): { host: string; port: number } {
  const m = /^(\[[^\]]+\]|[^:]*):(\d+)$/.exec(listen);
  const port = Number(m?.[2]);
  if (!m || !Number.isInteger(port) || port < 0 || port > 65535)
    throw new InputError(`--listen must be host:port, got "${listen}"`);
  return { host: (m[1] || '127.0.0.1').replace(/^\[|\]$/g, ''), port };
}

export async function startServer(opts: ServerOptions): Promise<RunningServer> {
  const { host, port } = parseListen(opts.listen);
  const { token, source } = loadOrCreateToken({
    dataDir: opts.dataDir,
    tokenFile: opts.tokenFile,
    env: opts.env,
  });
  const router = new Router();
  const http = new HttpServer({ router, token, log: opts.log });
  registerRoutes(router, {
    service: opts.service,
    openStream: (ctx) => http.openStream(ctx),
    version: opts.version ?? '0.1.0',
    ...(opts.dr ? { drMetrics: (signal: AbortSignal) => opts.dr!.metrics(signal) } : {}),
  });
  if (opts.dr) registerDrRoutes(router, opts.dr);
  registerWebRoutes(router);
  // Recovery first: nothing is served until actions left Running by a killed process are settled.
  await opts.service.start();
  let url: string;
  try {
    url = await http.listen(host, port);
  } catch (err) {
    await opts.service.close();
    throw err;
  }
  const urlFile = path.join(opts.dataDir, SERVER_URL_FILE);
  fs.writeFileSync(urlFile, url + '\n');
  opts.dr?.start();
  let closing: Promise<void> | undefined;
  return {
    url,
    tokenSource: source,
    close: () =>
      (closing ??= (async () => {
        await http.close();
        await opts.dr?.stop();
        await opts.service.close();
        fs.rmSync(urlFile, { force: true });
      })()),
  };
}
