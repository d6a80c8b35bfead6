/**
 * A thin HTTP front for Azurite. Everything is forwarded byte for byte (the Host header too, so Azurite's
 * "copy source must be on this instance" check still holds), except what Azurite cannot do for managed disks:
 *   - Get Page Ranges with `x-ms-previous-snapshot-url` (the managed-disk incremental diff; Azurite ignores
 *     `prevsnapshot` and returns the full list) is answered from the compute emulator's change tracking;
 *   - access SAS tokens issued by grantAccess obey the emulator's clock and revokeAccess (Azurite only checks
 *     the real `se`), so tests can expire or revoke a SAS in the middle of a copy;
 *   - Get Blob Metadata on a SAS URL (Azurite's own copy-source check) is answered without the blob body;
 *   - after Azurite copies a page blob, `afterCopy` gives the copy its own page list: Azurite 3.35 shares the
 *     source's page-range array with the copy, so writing pages to one silently changed the other.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Range } from '../ranges.ts';

export interface BlobFrontHooks {
  /** Why a request carrying this SAS signature must be refused, or undefined to let it through. */
  sasRefusal(sig: string): string | undefined;
  /** Changed ranges between two managed blobs (account/container/blob paths), or undefined if unknown. */
  diff(target: string, previous: string): Promise<{ ranges: Range[]; size: number } | undefined>;
  onBytes?(direction: 'in' | 'out', n: number, path: string): void;
  /** Called after Azurite accepted a Copy Blob into `path`, before the client hears of it. */
  afterCopy?(path: string): Promise<void>;
}

export interface BlobFront {
  endpoint: string;
  close(): Promise<void>;
}

function xmlError(res: http.ServerResponse, status: number, code: string, message: string): void {
  const body = `<?xml version="1.0" encoding="utf-8"?><Error><Code>${code}</Code><Message>${message}</Message></Error>`;
  res.writeHead(status, {
    'content-type': 'application/xml',
    'x-ms-error-code': code,
    'content-length': Buffer.byteLength(body),
  });
  res.end(body);
}

/** "/acct/container/blob" of a blob URL (path-style, as Azurite serves it). */
export function blobPath(u: URL): string {
  return decodeURIComponent(u.pathname).replace(/\/+$/, '');
}

export async function startBlobFront(azurite: string, hooks: BlobFrontHooks): Promise<BlobFront> {
  const target = new URL(azurite);
  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://front');
    const sig = url.searchParams.get('sig');
    const refusal = sig ? hooks.sasRefusal(sig) : undefined;
    if (refusal) {
      req.resume();
      xmlError(res, 403, 'AuthenticationFailed', refusal);
      return;
    }
    const prev = req.headers['x-ms-previous-snapshot-url'];
    if (req.method === 'GET' && url.searchParams.get('comp') === 'pagelist' && typeof prev === 'string') {
      req.resume();
      void answerDiff(url, prev, req, res);
      return;
    }
    if (req.method === 'GET' && url.searchParams.get('comp') === 'metadata' && sig) {
      // Get Blob Metadata, which Azurite asks itself to check a copy source: Azurite has no such operation and
      // serves the whole blob instead (a 64 MiB copy read 64 MiB more). Answer it from Get Blob Properties.
      url.searchParams.delete('comp');
      req.resume();
      const up = http.request(
        {
          host: target.hostname,
          port: target.port,
          method: 'HEAD',
          path: url.pathname + url.search,
          headers: req.headers,
        },
        (ur) => {
          ur.resume();
          const headers = { ...ur.headers, 'content-length': '0' };
          delete headers['content-type'];
          res.writeHead(ur.statusCode ?? 502, headers);
          res.end();
        },
      );
      up.on('error', (err) => xmlError(res, 502, 'BadGateway', err.message));
      up.end();
      return;
    }
    forward(req, res, url);
  });

  const forward = (req: http.IncomingMessage, res: http.ServerResponse, url: URL) => {
    const up = http.request(
      {
        host: target.hostname,
        port: target.port,
        method: req.method,
        path: req.url,
        headers: req.headers,
      },
      (ur) => {
        const isCopy =
          req.method === 'PUT' &&
          req.headers['x-ms-copy-source'] !== undefined &&
          !url.searchParams.has('comp');
        if (isCopy && ur.statusCode === 202 && hooks.afterCopy) {
          ur.resume();
          hooks
            .afterCopy(blobPath(url))
            .then(() => {
              res.writeHead(202, ur.headers);
              res.end();
            })
            .catch((err: unknown) => xmlError(res, 500, 'InternalError', String(err)));
          return;
        }
        res.writeHead(ur.statusCode ?? 502, ur.headers);
        ur.on('data', (d: Buffer) => hooks.onBytes?.('out', d.length, url.pathname));
        ur.pipe(res);
      },
    );
    up.on('error', (err) => {
      if (!res.headersSent) xmlError(res, 502, 'BadGateway', err.message);
      else res.destroy(err);
    });
    req.on('data', (d: Buffer) => hooks.onBytes?.('in', d.length, url.pathname));
    req.pipe(up);
  };

  /** Checks a SAS URL against Azurite (Get Blob Properties) so a diff is only served to who may read both. */
  const authorized = async (u: URL, headers: http.IncomingHttpHeaders): Promise<number> => {
    const h: Record<string, string> = {};
    for (const k of ['authorization', 'x-ms-date', 'x-ms-version']) {
      const v = headers[k];
      if (typeof v === 'string') h[k] = v;
    }
    return new Promise((resolve) => {
      const r = http.request(
        { host: target.hostname, port: target.port, method: 'HEAD', path: u.pathname + u.search, headers: h },
        (res) => {
          res.resume();
          resolve(res.statusCode ?? 500);
        },
      );
      r.on('error', () => resolve(502));
      r.end();
    });
  };

  const answerDiff = async (
    url: URL,
    prevUrl: string,
    req: http.IncomingMessage,
    res: http.ServerResponse,
  ): Promise<void> => {
    try {
      const prev = new URL(prevUrl);
      const prevSig = prev.searchParams.get('sig');
      const prevRefusal = prevSig ? hooks.sasRefusal(prevSig) : undefined;
      if (prevRefusal) return xmlError(res, 403, 'AuthenticationFailed', `previous snapshot: ${prevRefusal}`);
      if (url.searchParams.get('sig') && (await authorized(url, {})) !== 200)
        return xmlError(res, 403, 'AuthenticationFailed', 'Server failed to authenticate the request.');
      if (!url.searchParams.get('sig') && (await authorized(url, req.headers)) !== 200)
        return xmlError(res, 403, 'AuthenticationFailed', 'Server failed to authenticate the request.');
      if ((await authorized(prev, {})) !== 200)
        return xmlError(res, 403, 'CannotVerifyCopySource', 'previous snapshot URL is not readable');
      const d = await hooks.diff(blobPath(url), blobPath(prev));
      if (!d)
        return xmlError(
          res,
          409,
          'InvalidPreviousSnapshot',
          'The previous snapshot is not an earlier incremental snapshot of the same disk.',
        );
      const body =
        '<?xml version="1.0" encoding="utf-8"?><PageList>' +
        d.ranges
          .map(
            (r) => `<PageRange><Start>${r.offset}</Start><End>${r.offset + r.length - 1}</End></PageRange>`,
          )
          .join('') +
        '</PageList>';
      res.writeHead(200, {
        'content-type': 'application/xml',
        'x-ms-blob-content-length': String(d.size),
        'x-ms-version': '2025-01-05',
        'x-ms-request-id': crypto.randomUUID(),
        etag: '"0x1"',
        'last-modified': new Date().toUTCString(),
        date: new Date().toUTCString(),
        'content-length': Buffer.byteLength(body),
      });
      res.end(body);
    } catch (err) {
      xmlError(res, 500, 'InternalError', err instanceof Error ? err.message : String(err));
    }
  };

  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    endpoint: `http://127.0.0.1:${port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
