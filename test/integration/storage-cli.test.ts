/**
 * End to end through the real CLI in child processes: repo init, backup (a directory and an image), restore,
 * verify against repositories on S3 (moto) and Azure Blob (Azurite), configured only by the standard
 * environment variables and the URL. Restores must match byte for byte.
 * TERN_E2E_IMAGE_MIB sets the image size (default 16; the README/report figures used 64).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { startAzurite } from '../harness/azurite.ts';
import { motoServerBin, startMoto } from '../harness/moto.ts';

const ROOT = path.resolve(import.meta.dirname, '../..');
const NODE = path.join(ROOT, 'node_modules/.bin/node');
const MAIN = path.join(ROOT, 'src/cli/main.ts');
const MiB = 1024 * 1024;
const IMAGE_MIB = Number(process.env.TERN_E2E_IMAGE_MIB ?? 16);

/** Async on purpose: the servers' output pipes are read by this process and must not stall. */
function tern(
  args: string[],
  env: Record<string, string>,
): Promise<{ code: number; stdout: string; stderr: string; ms: number }> {
  const t0 = performance.now();
  return new Promise((resolve, reject) => {
    const child = spawn(NODE, [MAIN, ...args], {
      env: { ...cleanEnv(), TERN_PASSWORD: 'e2e-secret-passphrase', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code: code ?? -1, stdout, stderr, ms: performance.now() - t0 }));
  });
}

/** The parent's environment without any cloud settings a developer may have. */
function cleanEnv(): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env))
    if (v !== undefined && !/^(AWS_|AZURE_|TERN_REPOSITORY)/.test(k)) out[k] = v;
  return out;
}

function makeTree(dir: string): void {
  fs.mkdirSync(path.join(dir, 'etc/app'), { recursive: true });
  fs.mkdirSync(path.join(dir, 'data/deep/er'), { recursive: true });
  fs.mkdirSync(path.join(dir, 'empty-dir'));
  fs.writeFileSync(path.join(dir, 'etc/app/config.yaml'), 'replicas: 3\nimage: tern:latest\n');
  fs.writeFileSync(path.join(dir, 'data/blob.bin'), crypto.randomBytes(3 * MiB + 17));
  fs.writeFileSync(path.join(dir, 'data/deep/er/small.txt'), 'x'.repeat(1000));
  fs.writeFileSync(path.join(dir, 'data/empty'), '');
  for (let i = 0; i < 50; i++) fs.writeFileSync(path.join(dir, `data/f${i}`), crypto.randomBytes(i * 100));
  fs.symlinkSync('etc/app/config.yaml', path.join(dir, 'link'));
}

/** Relative path → content (files), target (symlinks) or 'dir', for a byte-for-byte comparison. */
function snapshotTree(dir: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const e of fs.readdirSync(dir, { withFileTypes: true, recursive: true })) {
    const full = path.join(e.parentPath, e.name);
    const rel = path.relative(dir, full);
    if (e.isSymbolicLink()) out.set(rel, `link:${fs.readlinkSync(full)}`);
    else if (e.isDirectory()) out.set(rel, 'dir');
    else out.set(rel, crypto.createHash('sha256').update(fs.readFileSync(full)).digest('hex'));
  }
  return out;
}

interface Target {
  url: string;
  env: Record<string, string>;
  /** Environment with a wrong secret, and the secret that must not be printed. */
  bad?: { env: Record<string, string>; secret: string };
  stop(): Promise<void>;
}

const targets: { name: string; start(): Promise<Target | { skip: string }> }[] = [
  {
    name: 's3 on moto',
    start: async () => {
      if (!motoServerBin()) return { skip: 'moto not installed (scripts/peers.d/20-moto.sh)' };
      const moto = await startMoto();
      return { url: 's3://tern-e2e/repos/one', env: moto.env, stop: () => moto.stop() };
    },
  },
  {
    name: 'azblob on azurite',
    start: async () => {
      const az = await startAzurite(['terne2e']);
      const acct = az.accounts[0]!;
      const env = { AZURE_STORAGE_ENDPOINT: az.accountUrl(acct.name), AZURE_STORAGE_KEY: acct.key };
      const secret = crypto.randomBytes(32).toString('base64');
      return {
        url: `azblob://${acct.name}/tern-e2e/repos/one`,
        env,
        bad: { env: { ...env, AZURE_STORAGE_KEY: secret }, secret },
        stop: () => az.stop(),
      };
    },
  },
];

for (const t of targets) {
  describe(`CLI end to end: ${t.name}`, () => {
    let target: Target | undefined;
    let skip: string | undefined;
    let work = '';

    before(async () => {
      const r = await t.start();
      if ('skip' in r) skip = r.skip;
      else target = r;
      work = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-e2e-'));
    });
    after(async () => {
      await target?.stop();
      fs.rmSync(work, { recursive: true, force: true });
    });

    test('init, back up a directory and an image, restore byte for byte, verify', async (tt) => {
      if (!target) return tt.skip(skip);
      const env = target.env;
      const run = async (args: string[]): Promise<string> => {
        const r = await tern([...args, '--repo', target!.url], env);
        assert.equal(r.code, 0, `tern ${args.join(' ')}: ${r.stderr}`);
        return r.stdout;
      };

      const init = JSON.parse(await run(['repo', 'init', '--json'])) as { location: string };
      assert.match(init.location, /^(s3|azblob):\/\//);
      for (const [k, v] of Object.entries(env))
        if (/KEY|SECRET/.test(k)) assert.ok(!init.location.includes(v), `${k} shows in the location`);
      const again = await tern(['repo', 'init', '--repo', target.url], env);
      assert.equal(again.code, 6, `a second init is a conflict: ${again.stderr}`);

      const src = path.join(work, 'src');
      makeTree(src);
      const img = path.join(work, 'disk.img');
      fs.writeFileSync(img, crypto.randomBytes(IMAGE_MIB * MiB));

      const treeSnap = JSON.parse(await run(['backup', src, '--json'])) as { id: string };
      const t0 = performance.now();
      const imgSnap = JSON.parse(await run(['backup', img, '--json'])) as {
        id: string;
        summary: { bytesAdded: number; durationMs: number };
      };
      const backupMs = performance.now() - t0;
      assert.ok(imgSnap.summary.bytesAdded >= IMAGE_MIB * MiB, 'random image data is all new');

      // A second backup of the unchanged image uploads (almost) nothing.
      const inc = JSON.parse(await run(['backup', img, '--parent', imgSnap.id, '--json'])) as {
        summary: { bytesAdded: number };
      };
      assert.ok(inc.summary.bytesAdded < MiB, `incremental added ${inc.summary.bytesAdded} bytes`);

      // ls lists what the snapshot holds, symlinks with their targets, as text and as JSON.
      const listed = await run(['ls', treeSnap.id]);
      assert.match(listed, /^-rw.* 1000 .* data\/deep\/er\/small\.txt$/m);
      assert.match(listed, /^lrwxrwxrwx .* link -> etc\/app\/config\.yaml$/m);
      const entries = JSON.parse(await run(['ls', treeSnap.id, '--json'])) as {
        path: string;
        type: string;
        size?: number;
        linkTarget?: string;
      }[];
      const link = entries.find((e) => e.path === 'link');
      assert.equal(link?.type, 'symlink');
      assert.equal(link.linkTarget, 'etc/app/config.yaml');
      assert.equal(entries.find((e) => e.path === 'data/blob.bin')?.size, 3 * MiB + 17);
      assert.equal(entries.filter((e) => e.type === 'file').length, 54);

      const outTree = path.join(work, 'restored-tree');
      await run(['restore', treeSnap.id, outTree]);
      assert.deepEqual(snapshotTree(outTree), snapshotTree(src), 'restored tree differs');

      const outImg = path.join(work, 'restored.img');
      const t1 = performance.now();
      await run(['restore', imgSnap.id, outImg]);
      const restoreMs = performance.now() - t1;
      assert.ok(fs.readFileSync(outImg).equals(fs.readFileSync(img)), 'restored image differs');

      const verify = await tern(['verify', '--read-data', '--repo', target.url], env);
      assert.equal(verify.code, 0, `verify: ${verify.stderr}`);
      const snaps = JSON.parse(await run(['snapshots', '--json'])) as unknown[];
      assert.equal(snaps.length, 3);

      tt.diagnostic(
        `${IMAGE_MIB} MiB image: backup ${(backupMs / 1000).toFixed(1)} s (${((IMAGE_MIB / backupMs) * 1000).toFixed(1)} MiB/s incl. process start + KDF; in-process ${((IMAGE_MIB / imgSnap.summary.durationMs) * 1000).toFixed(1)} MiB/s), restore ${(restoreMs / 1000).toFixed(1)} s (${((IMAGE_MIB / restoreMs) * 1000).toFixed(1)} MiB/s)`,
      );
    });

    test('wrong credentials: exit code 4 and a message without the secret', async (tt) => {
      if (!target) return tt.skip(skip);
      if (!target.bad) return tt.skip('this server accepts any credentials');
      const r = await tern(['snapshots', '--repo', target.url], target.bad.env);
      assert.equal(r.code, 4, `exit code: ${r.stderr}`);
      // Azurite answers a bad key on HEAD with a bare 403 AuthorizationFailure (Azure: AuthenticationFailed).
      assert.match(r.stderr, /credentials rejected|access denied/);
      assert.ok(!r.stderr.includes(target.bad.secret) && !r.stdout.includes(target.bad.secret));
    });
  });
}
