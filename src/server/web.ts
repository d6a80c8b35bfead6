/**
 * The dashboard's static files (src/web) at `/` and `/web/<file>`. The files themselves are public — they
 * hold no data; every number the page shows comes from authenticated /v1 calls made by the browser with the
 * token the user enters. Only the files listed here are served (no path from the URL reaches the filesystem),
 * each with a strict Content-Security-Policy: scripts, styles and fetches from this origin only.
 */
import fs from 'node:fs';
import path from 'node:path';
import { NotFoundError } from '../core/index.ts';
import type { Router } from './router.ts';

export const WEB_DIR = path.resolve(import.meta.dirname, '..', 'web');

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
};

/** The dashboard's files; anything else under /web is a 404. */
export const WEB_FILES = ['index.html', 'style.css', 'app.js', 'api.js', 'model.js', 'view.js'] as const;

export const CONTENT_SECURITY_POLICY = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' data:",
  "connect-src 'self'",
  "base-uri 'none'",
  "form-action 'self'",
  "frame-ancestors 'none'",
].join('; ');

export function webHeaders(contentType: string): Record<string, string> {
  return {
    'content-type': contentType,
    'content-security-policy': CONTENT_SECURITY_POLICY,
    'x-content-type-options': 'nosniff',
    'referrer-policy': 'no-referrer',
    'x-frame-options': 'DENY',
    // Revalidated each load, so a new Tern version never runs with an old script.
    'cache-control': 'no-cache',
  };
}

export function registerWebRoutes(router: Router, dir = WEB_DIR): void {
  // Read once: the set is fixed and small (a few tens of KB).
  const files = new Map<string, { body: string; type: string }>();
  const load = (name: string): { body: string; type: string } => {
    let f = files.get(name);
    if (!f) {
      if (!(WEB_FILES as readonly string[]).includes(name))
        throw new NotFoundError(`no dashboard file ${name}`);
      const type = TYPES[path.extname(name)] ?? 'application/octet-stream';
      f = { body: fs.readFileSync(path.join(dir, name), 'utf8'), type };
      files.set(name, f);
    }
    return f;
  };
  router.add({
    method: 'GET',
    path: '/',
    public: true,
    doc: {
      summary: 'the dashboard (HTML; its data comes from the /v1 routes with the token entered in the page)',
      tag: 'dashboard',
      responses: { 200: { mediaType: 'text/html' } },
    },
    handler: async () => {
      const f = load('index.html');
      return { status: 200, body: f.body, headers: webHeaders(f.type) };
    },
  });
  router.add({
    method: 'GET',
    path: '/web/:file',
    public: true,
    doc: {
      summary: 'a static file of the dashboard (script or style sheet)',
      tag: 'dashboard',
      responses: { 200: { mediaType: 'text/javascript' } },
    },
    handler: async (ctx) => {
      const f = load(ctx.params.file ?? '');
      return { status: 200, body: f.body, headers: webHeaders(f.type) };
    },
  });
}
