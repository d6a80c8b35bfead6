/**
 * The control-plane client, like kubectl: server URL from --server, TERN_SERVER, the data dir's
 * `server.url` (written by `tern server`) or the default; token from TERN_API_TOKEN or the data dir's
 * `api-token`. Server errors come back as the same typed errors, so exit codes match the status.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Command } from 'commander';
import { TernError, UnavailableError } from '../core/index.ts';
import { codeForStatus } from '../server/errors.ts';
import { SERVER_URL_FILE, DEFAULT_LISTEN } from '../server/constants.ts';
import { tokenFilePath } from '../server/auth.ts';

export interface ClientFlags {
  server?: string;
  dataDir?: string;
  json?: boolean;
}

export function defaultDataDir(env: NodeJS.ProcessEnv = process.env): string {
  return env.TERN_DATA_DIR || path.join(os.homedir(), '.tern');
}

/** Adds --server, --data-dir and --json to a control-plane verb. */
export function withClient(cmd: Command): Command {
  return cmd
    .option('--server <url>', 'Tern server URL (env TERN_SERVER)')
    .option('--data-dir <dir>', 'where to find server.url and api-token (env TERN_DATA_DIR)')
    .option('--json', 'print JSON');
}

function readIfExists(file: string): string | undefined {
  try {
    return fs.readFileSync(file, 'utf8').trim() || undefined;
  } catch {
    return undefined;
  }
}

export class ApiClient {
  readonly baseUrl: string;
  private readonly token: string | undefined;

  constructor(baseUrl: string, token: string | undefined) {
    this.baseUrl = baseUrl.replace(/\/+$/, '');
    this.token = token;
  }

  static fromFlags(flags: ClientFlags, env: NodeJS.ProcessEnv = process.env): ApiClient {
    const dataDir = flags.dataDir ?? defaultDataDir(env);
    const url =
      flags.server ||
      env.TERN_SERVER ||
      readIfExists(path.join(dataDir, SERVER_URL_FILE)) ||
      `http://${DEFAULT_LISTEN}`;
    const token = env.TERN_API_TOKEN || readIfExists(tokenFilePath(dataDir));
    return new ApiClient(url, token);
  }

  private headers(extra?: Record<string, string>): Record<string, string> {
    return { ...(this.token ? { authorization: `Bearer ${this.token}` } : {}), ...extra };
  }

  async request<T>(method: string, pathname: string, body?: unknown, signal?: AbortSignal): Promise<T> {
    let res: Response;
    try {
      res = await fetch(this.baseUrl + pathname, {
        method,
        headers: this.headers(body === undefined ? undefined : { 'content-type': 'application/json' }),
        body: body === undefined ? undefined : JSON.stringify(body),
        signal,
      });
    } catch (err) {
      throw new UnavailableError(
        `cannot reach the Tern server at ${this.baseUrl} (is "tern server" running?)`,
        {
          cause: err,
        },
      );
    }
    const text = await res.text();
    let parsed: unknown = undefined;
    if (text && (res.headers.get('content-type') ?? '').includes('json')) {
      try {
        parsed = JSON.parse(text) as unknown;
      } catch {
        parsed = undefined;
      }
    }
    if (!res.ok) throw responseError(res.status, parsed, text);
    return (parsed ?? text) as T;
  }

  get<T>(p: string, signal?: AbortSignal): Promise<T> {
    return this.request<T>('GET', p, undefined, signal);
  }
  post<T>(p: string, body?: unknown): Promise<T> {
    return this.request<T>('POST', p, body ?? {});
  }
  patch<T>(p: string, body: unknown): Promise<T> {
    return this.request<T>('PATCH', p, body);
  }
  delete<T>(p: string): Promise<T> {
    return this.request<T>('DELETE', p);
  }

  /** Follows a server-sent-events stream until the signal fires or the server ends it. */
  async events(
    pathname: string,
    onEvent: (event: string, data: unknown) => void,
    signal: AbortSignal,
  ): Promise<void> {
    let res: Response;
    try {
      res = await fetch(this.baseUrl + pathname, {
        headers: this.headers({ accept: 'text/event-stream' }),
        signal,
      });
    } catch (err) {
      if (signal.aborted) return;
      throw new UnavailableError(`cannot reach the Tern server at ${this.baseUrl}`, { cause: err });
    }
    if (!res.ok || !res.body) {
      const text = await res.text();
      let parsed: unknown;
      try {
        parsed = JSON.parse(text) as unknown;
      } catch {
        parsed = undefined;
      }
      throw responseError(res.status, parsed, text);
    }
    const decoder = new TextDecoder();
    let buf = '';
    try {
      for await (const chunk of res.body) {
        buf += decoder.decode(chunk as Uint8Array, { stream: true });
        let idx: number;
        while ((idx = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, idx);
          buf = buf.slice(idx + 2);
          let event = 'message';
          const data: string[] = [];
          for (const line of block.split('\n')) {
            if (line.startsWith('event:')) event = line.slice(6).trim();
            else if (line.startsWith('data:')) data.push(line.slice(5).trimStart());
          }
          if (data.length > 0) onEvent(event, JSON.parse(data.join('\n')) as unknown);
        }
      }
    } catch (err) {
      if (signal.aborted) return;
      throw err;
    }
  }
}

function responseError(status: number, parsed: unknown, text: string): TernError {
  const e = (parsed as { error?: { code?: string; message?: string; details?: Record<string, unknown> } })
    ?.error;
  const code = codeForStatus(status, e?.code);
  const message = e?.message ?? (text.slice(0, 200) || `HTTP ${status}`);
  return new TernError(code, message, { details: { status, ...e?.details } });
}
