/** Starts a real moto server (PyPI `moto[server]`, installed by scripts/peers.d/20-moto.sh) on loopback: S3, EC2, EBS... */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { homedir } from 'node:os';
import path from 'node:path';
import { freePort, waitForPort } from './ports.ts';

export interface Moto {
  port: number;
  /** http://127.0.0.1:PORT — one endpoint for every AWS service moto serves. */
  endpoint: string;
  region: string;
  /** moto accepts any credentials; these are the ones to hand to SDK clients and child processes. */
  accessKeyId: string;
  secretAccessKey: string;
  /** Standard AWS environment for a child process (AWS_ENDPOINT_URL, AWS_REGION, keys). */
  env: Record<string, string>;
  stop(): Promise<void>;
}

/** Path of the moto_server binary, or undefined when the peer is not installed (tests then skip). */
export function motoServerBin(): string | undefined {
  const peers = process.env.TERN_PEERS_DIR ?? path.join(homedir(), '.cache', 'tern-peers');
  const bin = path.join(peers, 'moto', 'venv', 'bin', 'moto_server');
  return existsSync(bin) ? bin : undefined;
}

/**
 * `env` reaches the server process, e.g. `{ INITIAL_NO_AUTH_ACTION_COUNT: '0' }` makes moto check credentials
 * against its IAM (unknown keys are refused) instead of accepting anything.
 */
export async function startMoto(opts: { region?: string; env?: Record<string, string> } = {}): Promise<Moto> {
  const bin = motoServerBin();
  if (!bin)
    throw new Error('moto is not installed: run scripts/ensure-peers.sh (scripts/peers.d/20-moto.sh)');
  const port = await freePort();
  const region = opts.region ?? 'us-east-1';
  const child: ChildProcess = spawn(bin, ['-p', String(port), '-H', '127.0.0.1'], {
    // Fake credentials so nothing in moto or boto looks for real ones.
    env: {
      ...process.env,
      AWS_ACCESS_KEY_ID: 'testing',
      AWS_SECRET_ACCESS_KEY: 'testing',
      AWS_DEFAULT_REGION: region,
      ...opts.env,
    },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => {
    // moto logs one line per request on stderr: keep only the tail for start-up errors.
    stderr = (stderr + d.toString()).slice(-4000);
  });
  try {
    await waitForPort(port, 60_000);
  } catch (err) {
    child.kill('SIGKILL');
    throw new Error(`moto did not start: ${stderr}`, { cause: err });
  }
  const endpoint = `http://127.0.0.1:${port}`;
  const accessKeyId = 'AKIAMOTOTESTKEY00000';
  const secretAccessKey = 'motoTestSecretKey0000000000000000000000000';
  return {
    port,
    endpoint,
    region,
    accessKeyId,
    secretAccessKey,
    env: {
      AWS_ENDPOINT_URL: endpoint,
      AWS_REGION: region,
      AWS_ACCESS_KEY_ID: accessKeyId,
      AWS_SECRET_ACCESS_KEY: secretAccessKey,
    },
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise((r) => child.once('exit', r));
        child.kill('SIGTERM');
        await Promise.race([exited, new Promise((r) => setTimeout(r, 3000))]);
        if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      }
    },
  };
}
