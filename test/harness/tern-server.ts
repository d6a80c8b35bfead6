/** Runs `tern server` as a child process on a data dir, and the `tern` CLI against it, for integration tests. */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

const ROOT = path.resolve(import.meta.dirname, '..', '..');
const MAIN = path.join(ROOT, 'src', 'cli', 'main.ts');

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
  /** stdout parsed as JSON (undefined when it is not JSON). */
  json: unknown;
  ms: number;
}

/** Runs `tern ARGS` with the given env; never throws on a non-zero exit. */
export function tern(args: string[], env: NodeJS.ProcessEnv, timeoutMs = 300_000): Promise<CliResult> {
  const started = Date.now();
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [MAIN, ...args], {
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      let json: unknown;
      try {
        json = JSON.parse(stdout) as unknown;
      } catch {
        json = undefined;
      }
      resolve({ code: code ?? -1, stdout, stderr, json, ms: Date.now() - started });
    });
  });
}

export interface TernServerProcess {
  url: string;
  token: string;
  dataDir: string;
  child: ChildProcess;
  /** Everything the server wrote to stderr so far (its log). */
  log(): string;
  /** Env for `tern` CLI calls against this server. */
  env: NodeJS.ProcessEnv;
  fetch(pathname: string, init?: RequestInit & { token?: string | null }): Promise<Response>;
  /** SIGTERM and wait for exit; returns the exit code. */
  stop(): Promise<number | null>;
  /** SIGKILL and wait for exit. */
  kill(): Promise<void>;
}

export async function startTernServer(
  dataDir: string,
  opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {},
): Promise<TernServerProcess> {
  const urlFile = path.join(dataDir, 'server.url');
  fs.rmSync(urlFile, { force: true });
  const child = spawn(process.execPath, [MAIN, 'server', '--data-dir', dataDir, '--listen', '127.0.0.1:0'], {
    env: { ...process.env, ...opts.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let log = '';
  child.stdout.on('data', (d: Buffer) => (log += d.toString()));
  child.stderr.on('data', (d: Buffer) => (log += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const deadline = Date.now() + (opts.timeoutMs ?? 120_000);
  let url = '';
  while (!url) {
    if (child.exitCode !== null) throw new Error(`tern server exited with ${child.exitCode}:\n${log}`);
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`tern server did not start:\n${log}`);
    }
    try {
      url = fs.readFileSync(urlFile, 'utf8').trim();
    } catch {
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  const token = opts.env?.TERN_API_TOKEN ?? fs.readFileSync(path.join(dataDir, 'api-token'), 'utf8').trim();
  return {
    url,
    token,
    dataDir,
    child,
    log: () => log,
    env: { TERN_SERVER: url, TERN_API_TOKEN: token, TERN_DATA_DIR: dataDir },
    fetch: (pathname, init = {}) => {
      const { token: t, ...rest } = init;
      const headers = new Headers(rest.headers);
      const use = t === undefined ? token : t;
      if (use !== null) headers.set('authorization', `Bearer ${use}`);
      if (rest.body !== undefined && !headers.has('content-type'))
        headers.set('content-type', 'application/json');
      return fetch(url + pathname, { ...rest, headers });
    },
    stop: async () => {
      if (child.exitCode === null) child.kill('SIGTERM');
      return exited;
    },
    kill: async () => {
      if (child.exitCode === null) child.kill('SIGKILL');
      await exited;
    },
  };
}
