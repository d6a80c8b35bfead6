/** Starts a real Azurite blob service (npm `azurite`) on loopback with several accounts. */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { freePort, waitForPort } from './ports.ts';

export interface AzuriteAccount {
  name: string;
  key: string;
}

export interface Azurite {
  port: number;
  /** http://127.0.0.1:PORT */
  endpoint: string;
  accounts: AzuriteAccount[];
  /** Blob service URL of one account: http://127.0.0.1:PORT/NAME */
  accountUrl(name: string): string;
  connectionString(name: string): string;
  stop(): Promise<void>;
}

const ROOT = path.resolve(import.meta.dirname, '..', '..');

export async function startAzurite(
  accountNames: string[] = ['tern1', 'tern2'],
  opts: { inMemory?: boolean } = {},
): Promise<Azurite> {
  const port = await freePort();
  const location = await mkdtemp(path.join(tmpdir(), 'tern-azurite-'));
  const accounts = accountNames.map((name) => ({ name, key: randomBytes(32).toString('base64') }));
  const bin = path.join(ROOT, 'node_modules', 'azurite', 'dist', 'src', 'blob', 'main.js');
  const child: ChildProcess = spawn(
    process.execPath,
    [
      bin,
      '--blobHost',
      '127.0.0.1',
      '--blobPort',
      String(port),
      // In memory: large page-blob copies run faster than through Azurite's extent files (64 MiB: ~2.8 s vs ~4.5 s here).
      ...(opts.inMemory ? ['--inMemoryPersistence'] : ['--location', location]),
      '--loose',
      '--skipApiVersionCheck',
      '--silent',
      // Azurite 3.35 collects and sends telemetry for every request by default (CPU on a busy machine).
      '--disableTelemetry',
    ],
    {
      env: { ...process.env, AZURITE_ACCOUNTS: accounts.map((a) => `${a.name}:${a.key}`).join(';') },
      stdio: ['ignore', 'ignore', 'pipe'],
    },
  );
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  // Azurite loads a few hundred modules before it listens: on a loaded 2-core machine that took over 30 s.
  // An early exit (e.g. the port was taken in the meantime) fails at once instead of waiting out the timeout.
  const exited = new Promise<never>((_, reject) =>
    child.once('exit', (code, signal) =>
      reject(new Error(`azurite exited (${signal ?? code}) before listening: ${stderr.trim()}`)),
    ),
  );
  exited.catch(() => undefined);
  try {
    await Promise.race([waitForPort(port, 120_000), exited]);
  } catch (err) {
    child.kill('SIGKILL');
    throw new Error(`azurite did not start on port ${port}: ${stderr.trim() || '(no output)'}`, {
      cause: err,
    });
  }
  const endpoint = `http://127.0.0.1:${port}`;
  return {
    port,
    endpoint,
    accounts,
    accountUrl: (name) => `${endpoint}/${name}`,
    connectionString: (name) => {
      const a = accounts.find((x) => x.name === name);
      if (!a) throw new Error(`no azurite account ${name}`);
      return `DefaultEndpointsProtocol=http;AccountName=${a.name};AccountKey=${a.key};BlobEndpoint=${endpoint}/${a.name};`;
    },
    async stop() {
      if (child.exitCode === null) {
        const exited = new Promise((r) => child.once('exit', r));
        child.kill('SIGTERM');
        await Promise.race([exited, new Promise((r) => setTimeout(r, 3000))]);
        if (child.exitCode === null) child.kill('SIGKILL');
      }
      await rm(location, { recursive: true, force: true });
    },
  };
}
