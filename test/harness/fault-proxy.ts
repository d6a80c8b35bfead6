/**
 * A loopback HTTP proxy in front of a real server (moto, Azurite) that injects failures on chosen requests:
 * an error status (with Retry-After), a dropped connection, or no answer at all. Everything else is forwarded
 * byte for byte, so the real SDKs talk to the real server through it.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';

export type Fault =
  | { kind: 'status'; status: number; retryAfter?: string; body?: string }
  /** Close the connection after reading the request head (the client sees ECONNRESET / socket hang up). */
  | { kind: 'reset' }
  /** Read the request and never answer (the client's timeout must fire). */
  | { kind: 'hang' };

export interface SeenRequest {
  n: number;
  method: string;
  url: string;
  fault?: Fault['kind'];
}

export interface FaultProxy {
  /** http://127.0.0.1:PORT */
  endpoint: string;
  /** Every request in arrival order. */
  seen: SeenRequest[];
  /** Decides the fate of each request (n counts from 1); undefined forwards it. Replace at will. */
  plan: (req: { n: number; method: string; url: string }) => Fault | undefined;
  stop(): Promise<void>;
}

export async function startFaultProxy(target: string): Promise<FaultProxy> {
  const t = new URL(target);
  const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });
  const hung = new Set<http.ServerResponse>();
  const proxy: FaultProxy = {
    endpoint: '',
    seen: [],
    plan: () => undefined,
    stop: async () => {
      for (const r of hung) r.destroy();
      agent.destroy();
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
  const server = http.createServer((req, res) => {
    const n = proxy.seen.length + 1;
    const method = req.method ?? 'GET';
    const url = req.url ?? '/';
    const fault = proxy.plan({ n, method, url });
    proxy.seen.push({ n, method, url, ...(fault ? { fault: fault.kind } : {}) });
    if (fault?.kind === 'reset') {
      req.socket.destroy();
      return;
    }
    if (fault?.kind === 'hang') {
      hung.add(res);
      req.resume();
      return;
    }
    if (fault?.kind === 'status') {
      req.resume();
      req.once('end', () => {
        res.writeHead(fault.status, {
          'content-type': 'application/xml',
          ...(fault.retryAfter !== undefined ? { 'retry-after': fault.retryAfter } : {}),
        });
        res.end(fault.body ?? '');
      });
      return;
    }
    const up = http.request(
      { host: t.hostname, port: t.port, method, path: url, headers: req.headers, agent },
      (upRes) => {
        res.writeHead(upRes.statusCode ?? 502, upRes.headers);
        upRes.pipe(res);
      },
    );
    up.on('error', () => res.destroy());
    req.pipe(up);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  proxy.endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return proxy;
}
