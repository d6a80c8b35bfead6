/**
 * A local Azure for tests and `tern demo --platform azure`: Azurite (npm `azurite`, a dev dependency) with one
 * managed-disk account per region plus a customer storage account per DR region, and the compute emulator in
 * front of it. Returns the platform config that points the real Azure SDK clients at it.
 */
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createRequire } from 'node:module';
import net from 'node:net';
import { ComputeEmulator } from './emulator/index.ts';
import type { AzurePlatformConfig } from './config.ts';

export interface AzureSandboxOptions {
  /** Regions, source first (default eastus, westus). */
  regions?: string[];
  /** Azurite already running (tests use test/harness/azurite.ts); else one is started here. */
  azurite?: { endpoint: string; accounts: { name: string; key: string }[] };
  maxSasSeconds?: number;
  lroDelayMs?: number;
}

export interface AzureSandbox {
  emulator: ComputeEmulator;
  subscription: string;
  tenant: string;
  clientId: string;
  clientSecret: string;
  /** Resource group per region: "tern-<region>". */
  resourceGroups: Record<string, string>;
  /** Customer storage account per region (VHD staging for copies into that region). */
  storageAccounts: Record<string, { name: string; key: string }>;
  /** Platform config for `openPlatform('azure', …)` with `regions[0]` as the source region. */
  config: AzurePlatformConfig;
  stop(): Promise<void>;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      srv.close(() => (typeof addr === 'object' && addr ? resolve(addr.port) : reject(new Error('no port'))));
    });
  });
}

async function waitForPort(port: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect(port, '127.0.0.1');
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`azurite did not listen on ${port} within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

function accountNames(regions: string[]): { md: string[]; vhd: string[] } {
  const short = (r: string) => r.replace(/[^a-z0-9]/g, '').slice(0, 12);
  return { md: regions.map((r) => `md${short(r)}`), vhd: regions.map((r) => `vhd${short(r)}`) };
}

/** Azurite account names this sandbox needs for `regions` (for callers that start Azurite themselves). */
export function sandboxAccounts(regions: string[] = ['eastus', 'westus']): string[] {
  const n = accountNames(regions);
  return [...n.md, ...n.vhd];
}

export async function startAzureSandbox(opts: AzureSandboxOptions = {}): Promise<AzureSandbox> {
  const regions = opts.regions ?? ['eastus', 'westus'];
  if (regions.length < 2) throw new Error('an Azure sandbox needs a source and a DR region');
  const names = accountNames(regions);
  let azurite = opts.azurite;
  let child: ChildProcess | undefined;
  if (!azurite) {
    const accounts = [...names.md, ...names.vhd].map((name) => ({
      name,
      key: randomBytes(32).toString('base64'),
    }));
    const port = await freePort();
    const bin = createRequire(import.meta.url).resolve('azurite/dist/src/blob/main.js');
    child = spawn(
      process.execPath,
      [
        bin,
        '--blobHost',
        '127.0.0.1',
        '--blobPort',
        String(port),
        // Data in memory: large page-blob copies run faster than through Azurite's extent files.
        '--inMemoryPersistence',
        '--loose',
        '--skipApiVersionCheck',
        '--silent',
        // Azurite 3.35 collects and sends telemetry for every request by default (CPU on a busy machine).
        '--disableTelemetry',
      ],
      {
        env: { ...process.env, AZURITE_ACCOUNTS: accounts.map((a) => `${a.name}:${a.key}`).join(';') },
        stdio: 'ignore',
      },
    );
    await waitForPort(port, 30_000);
    azurite = { endpoint: `http://127.0.0.1:${port}`, accounts };
  }
  const keyOf = (name: string) => {
    const a = azurite.accounts.find((x) => x.name === name);
    if (!a) throw new Error(`azurite has no account ${name} (start it with sandboxAccounts())`);
    return a.key;
  };
  const subscription = '00000000-0000-0000-0000-00000000feed';
  const tenant = '00000000-0000-0000-0000-0000000000aa';
  const clientId = 'tern-backup';
  const clientSecret = randomBytes(18).toString('base64url');
  const resourceGroups = Object.fromEntries(regions.map((r) => [r, `tern-${r}`]));
  const storageAccounts = Object.fromEntries(
    regions.map((r, i) => [r, { name: names.vhd[i]!, key: keyOf(names.vhd[i]!) }]),
  );
  const emulator = new ComputeEmulator({
    azurite: azurite.endpoint,
    subscription,
    tenant,
    regions: Object.fromEntries(
      regions.map((r, i) => [r, { account: names.md[i]!, key: keyOf(names.md[i]!) }]),
    ),
    storageAccounts: regions.map((r) => ({
      ...storageAccounts[r]!,
      resourceGroup: resourceGroups[r]!,
      location: r,
    })),
    principals: {
      [clientId]: {
        secret: clientSecret,
        roles: Object.fromEntries(
          regions.map((r, i) => [
            `/subscriptions/${subscription}/resourceGroups/${resourceGroups[r]}`,
            i === 0 ? ['Contributor'] : ['Disk Snapshot Contributor', 'Virtual Machine Contributor'],
          ]),
        ),
      },
    },
    ...(opts.maxSasSeconds !== undefined ? { maxSasSeconds: opts.maxSasSeconds } : {}),
    ...(opts.lroDelayMs !== undefined ? { lroDelayMs: opts.lroDelayMs } : {}),
  });
  await emulator.start();
  const config: AzurePlatformConfig = {
    tenant,
    clientId,
    clientSecret,
    subscription,
    resourceGroup: resourceGroups[regions[0]!]!,
    region: regions[0]!,
    endpoint: emulator.armEndpoint,
    authorityHost: emulator.armEndpoint,
    pollIntervalMs: 25,
    targets: Object.fromEntries(
      regions.slice(1).map((r) => [
        r,
        {
          resourceGroup: resourceGroups[r]!,
          storageAccount: storageAccounts[r]!.name,
          accountKey: storageAccounts[r]!.key,
          blobEndpoint: `${emulator.blobEndpoint}/${storageAccounts[r]!.name}`,
        },
      ]),
    ),
  };
  return {
    emulator,
    subscription,
    tenant,
    clientId,
    clientSecret,
    resourceGroups,
    storageAccounts,
    config,
    async stop() {
      await emulator.stop();
      if (child && child.exitCode === null) {
        const exited = new Promise((r) => child.once('exit', r));
        child.kill('SIGTERM');
        await Promise.race([exited, new Promise((r) => setTimeout(r, 3000))]);
        if (child.exitCode === null) child.kill('SIGKILL');
      }
    },
  };
}
