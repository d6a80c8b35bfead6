/**
 * A real kube-apiserver + etcd on loopback for API-level tests (no kubelet, no controller-manager).
 * Binaries come from scripts/peers.d/30-kube.sh ($TERN_PEERS_DIR/kube/bin). Certificates are made with
 * openssl; authentication is a static token file: an admin in system:masters and a "limited" user with
 * no bindings (tests grant it what they need through RBAC). The CSI snapshot CRDs are installed.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { promisify } from 'node:util';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import { KubeConfig } from '@kubernetes/client-node';
import { KubeClient, KubeTypes, type KubeObject } from '../../src/platforms/kubernetes/index.ts';
import YAML from 'yaml';
import { freePort, waitForPort } from './ports.ts';

const exec = promisify(execFile);
const ROOT = path.resolve(import.meta.dirname, '..', '..');
export const KUBE_CRD_DIR = path.join(ROOT, 'test', 'peers', 'kube', 'crds');

export function kubeBinDir(): string {
  return path.join(
    process.env['TERN_PEERS_DIR'] ?? path.join(os.homedir(), '.cache', 'tern-peers'),
    'kube',
    'bin',
  );
}

/** Why the Kubernetes tests cannot run here, or undefined when they can. */
export function kubeSkipReason(): string | undefined {
  const dir = kubeBinDir();
  const failed = path.join(dir, '..', 'build-failed.log');
  if (fs.existsSync(failed) && !fs.existsSync(path.join(dir, 'kube-apiserver')))
    return `building kube-apiserver/etcd failed (scripts/peers.d/30-kube.sh); log: ${failed}: ${fs.readFileSync(failed, 'utf8').trim().split('\n').slice(-3).join(' | ')}`;
  for (const b of ['kube-apiserver', 'etcd']) {
    if (!fs.existsSync(path.join(dir, b)))
      return `${b} not found in ${dir}: run scripts/peers.d/30-kube.sh (builds it from the Go module proxy; needs go)`;
  }
  return undefined;
}

export interface Kube {
  server: string;
  caPem: string;
  adminToken: string;
  limitedToken: string;
  /** A KubeConfig for the admin (system:masters) or the limited user. */
  kubeConfig(user?: 'admin' | 'limited'): KubeConfig;
  /** Kill the API server (etcd stays); for tests of an API server that goes away mid-operation. */
  killApiServer(): Promise<void>;
  /** Start the API server again on the same port, certificates and etcd data (after killApiServer). */
  restartApiServer(): Promise<void>;
  stop(): Promise<void>;
}

async function openssl(args: string[], cwd: string): Promise<void> {
  await exec('openssl', args, { cwd });
}

async function makeCerts(dir: string): Promise<void> {
  await openssl(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca.key', '-out', 'ca.crt',
    '-days', '2', '-subj', '/CN=tern-test-ca'], dir); // prettier-ignore
  await fsp.writeFile(
    path.join(dir, 'san.cnf'),
    'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc\nextendedKeyUsage=serverAuth\n',
  );
  await openssl(['req', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'server.key', '-out', 'server.csr',
    '-subj', '/CN=kube-apiserver'], dir); // prettier-ignore
  await openssl(['x509', '-req', '-in', 'server.csr', '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial',
    '-out', 'server.crt', '-days', '2', '-extfile', 'san.cnf'], dir); // prettier-ignore
  await openssl(['genrsa', '-out', 'sa.key', '2048'], dir);
  await openssl(['rsa', '-in', 'sa.key', '-pubout', '-out', 'sa.pub'], dir);
}

function spawnLogged(bin: string, args: string[], logFile: string): ChildProcess {
  const log = fs.openSync(logFile, 'a');
  const child = spawn(bin, args, { stdio: ['ignore', log, log] });
  fs.closeSync(log);
  return child;
}

async function tail(file: string): Promise<string> {
  const text = await fsp.readFile(file, 'utf8').catch(() => '');
  return text.split('\n').slice(-30).join('\n');
}

function get(url: string, ca: string, token: string): Promise<number> {
  return new Promise((resolve) => {
    const req = https.get(url, { ca, headers: { authorization: `Bearer ${token}` } }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('error', () => resolve(0));
    req.setTimeout(5000, () => req.destroy());
  });
}

async function stopChild(child: ChildProcess | undefined, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill(signal);
  const t = setTimeout(() => child.kill('SIGKILL'), 10_000);
  await exited;
  clearTimeout(t);
}

export async function startKube(): Promise<Kube> {
  const reason = kubeSkipReason();
  if (reason) throw new Error(reason);
  const bin = kubeBinDir();
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'tern-kube-'));
  await makeCerts(dir);
  const adminToken = randomBytes(24).toString('hex');
  const limitedToken = randomBytes(24).toString('hex');
  await fsp.writeFile(
    path.join(dir, 'tokens.csv'),
    `${adminToken},tern-admin,uid-admin,"system:masters"\n${limitedToken},tern-limited,uid-limited\n`,
  );
  const [etcdPort, peerPort, apiPort] = [await freePort(), await freePort(), await freePort()];
  const etcdLog = path.join(dir, 'etcd.log');
  const apiLog = path.join(dir, 'kube-apiserver.log');
  let etcd: ChildProcess | undefined;
  let api: ChildProcess | undefined;
  const cleanup = async () => {
    await stopChild(api);
    await stopChild(etcd);
    await fsp.rm(dir, { recursive: true, force: true });
  };
  try {
    const etcdUrl = `http://127.0.0.1:${etcdPort}`;
    const peerUrl = `http://127.0.0.1:${peerPort}`;
    etcd = spawnLogged(
      path.join(bin, 'etcd'),
      [
        '--name=tern-test',
        `--data-dir=${path.join(dir, 'etcd')}`,
        `--listen-client-urls=${etcdUrl}`,
        `--advertise-client-urls=${etcdUrl}`,
        `--listen-peer-urls=${peerUrl}`,
        `--initial-advertise-peer-urls=${peerUrl}`,
        `--initial-cluster=tern-test=${peerUrl}`,
        '--unsafe-no-fsync=true',
        '--log-level=warn',
      ],
      etcdLog,
    );
    await waitForPort(etcdPort, 60_000).catch(async (err: unknown) => {
      throw new Error(`etcd did not start:\n${await tail(etcdLog)}`, { cause: err });
    });
    const apiArgs = [
      `--etcd-servers=${etcdUrl}`,
      `--cert-dir=${path.join(dir, 'certs')}`,
      `--tls-cert-file=${path.join(dir, 'server.crt')}`,
      `--tls-private-key-file=${path.join(dir, 'server.key')}`,
      `--secure-port=${apiPort}`,
      '--bind-address=127.0.0.1',
      '--advertise-address=127.0.0.1',
      '--service-cluster-ip-range=10.0.0.0/24',
      '--authorization-mode=RBAC',
      `--token-auth-file=${path.join(dir, 'tokens.csv')}`,
      '--service-account-issuer=https://kubernetes.default.svc',
      `--service-account-key-file=${path.join(dir, 'sa.pub')}`,
      `--service-account-signing-key-file=${path.join(dir, 'sa.key')}`,
      '--disable-admission-plugins=ServiceAccount',
      '--allow-privileged=true',
      // Loopback advertise addresses are refused by the endpoint reconciler; tests need no kubernetes Endpoints.
      '--endpoint-reconciler-type=none',
      '--v=0',
    ];
    const caPem = await fsp.readFile(path.join(dir, 'ca.crt'), 'utf8');
    const server = `https://127.0.0.1:${apiPort}`;
    const startApi = async (): Promise<void> => {
      const child = spawnLogged(path.join(bin, 'kube-apiserver'), apiArgs, apiLog);
      api = child;
      // Generous: under heavy load (load average ~30 on 2 cores) a start here outlasted a 120 s test hook.
      const deadline = Date.now() + 180_000;
      for (;;) {
        if (child.exitCode !== null) throw new Error(`kube-apiserver exited:\n${await tail(apiLog)}`);
        if ((await get(`${server}/readyz`, caPem, adminToken)) === 200) break;
        if (Date.now() > deadline)
          throw new Error(`kube-apiserver not ready after 180 s:\n${await tail(apiLog)}`);
        await new Promise((r) => setTimeout(r, 250));
      }
    };
    await startApi();
    const kubeConfig = (user: 'admin' | 'limited' = 'admin'): KubeConfig => {
      const kc = new KubeConfig();
      kc.loadFromOptions({
        clusters: [
          { name: 'test', server, caData: Buffer.from(caPem).toString('base64'), skipTLSVerify: false },
        ],
        users: [{ name: user, token: user === 'admin' ? adminToken : limitedToken }],
        contexts: [{ name: 'test', cluster: 'test', user, namespace: 'default' }],
        currentContext: 'test',
      });
      return kc;
    };
    await installCrdDir(kubeConfig(), KUBE_CRD_DIR);
    return {
      server,
      caPem,
      adminToken,
      limitedToken,
      kubeConfig,
      killApiServer: () => stopChild(api, 'SIGKILL'),
      restartApiServer: async () => {
        await stopChild(api, 'SIGKILL');
        await startApi();
      },
      stop: cleanup,
    };
  } catch (err) {
    await cleanup();
    throw err;
  }
}

/**
 * Creates every CRD in a directory of YAML files and waits until each is Established. Plain JSON on the
 * wire: client-node's typed CRD model would drop keys it spells differently (x-kubernetes-validations).
 */
export async function installCrdDir(kc: KubeConfig, dir: string): Promise<string[]> {
  const client = new KubeClient(kc);
  const names: string[] = [];
  for (const f of (await fsp.readdir(dir)).filter((n) => /\.ya?ml$/.test(n)).sort()) {
    for (const doc of YAML.parseAllDocuments(await fsp.readFile(path.join(dir, f), 'utf8'))) {
      const crd = doc.toJS() as KubeObject | null;
      if (!crd || crd.kind !== 'CustomResourceDefinition') continue;
      await client.create(KubeTypes.crd, crd);
      names.push(crd.metadata.name);
    }
  }
  const deadline = Date.now() + 60_000;
  for (const name of names) {
    for (;;) {
      const crd = await client.get(KubeTypes.crd, undefined, name);
      const conds = (crd['status'] as { conditions?: { type: string; status: string }[] } | undefined)
        ?.conditions;
      if (conds?.some((c) => c.type === 'Established' && c.status === 'True')) break;
      if (Date.now() > deadline) throw new Error(`CRD ${name} not established after 60 s`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  return names;
}
