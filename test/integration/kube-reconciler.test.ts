/**
 * The RestoreAction reconciler against a real kube-apiserver with the Tern CRDs: a backup exported to a
 * file:// repository, a location Profile + Secret, a RestorePoint with a repository tier, then
 * RestoreActions that the reconciler runs, reporting state, phases, plan and errors in their status.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ManualClock } from '../../src/core/index.ts';
import { LeaseType } from '../../src/engine/kube/leader.ts';
import { PolicyReconciler } from '../../src/engine/kube/policies.ts';
import { RestoreActionReconciler, TernTypes } from '../../src/engine/kube/reconciler.ts';
import { LocalPlatform } from '../../src/platforms/index.ts';
import {
  KubeClient,
  KubeTypes as T,
  backupNamespace,
  exportBackup,
  type HookRunner,
  type KubeObject,
} from '../../src/platforms/kubernetes/index.ts';
import { Repository } from '../../src/repo/index.ts';
import { LocalStore } from '../../src/storage/index.ts';
import { installCrdDir, kubeSkipReason, startKube, type Kube } from '../harness/kube.ts';
import { TestCsiController } from '../kube/csi-controller.ts';

const DRIVER = 'local.csi.tern.io';
const ROOT = path.resolve(import.meta.dirname, '..', '..');
const skip = kubeSkipReason();
const cm = {
  group: '',
  version: 'v1',
  apiVersion: 'v1',
  kind: 'ConfigMap',
  plural: 'configmaps',
  namespaced: true,
  verbs: [],
};

const o = (
  apiVersion: string,
  kind: string,
  name: string,
  ns: string | undefined,
  rest: Record<string, unknown> = {},
): KubeObject => ({
  apiVersion,
  kind,
  metadata: { name, ...(ns ? { namespace: ns } : {}) },
  ...rest,
});

describe('RestoreAction reconciler (real kube-apiserver)', { skip }, () => {
  let kube: Kube;
  let client: KubeClient;
  let csi: TestCsiController;
  let platform: LocalPlatform;
  let tmp: string;
  let backupId: string;
  const payload = crypto.randomBytes(1 << 20);

  before(async () => {
    kube = await startKube();
    client = new KubeClient(kube.kubeConfig());
    await installCrdDir(kube.kubeConfig(), path.join(ROOT, 'deploy', 'crds'));
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-kube-rec-'));
    fs.mkdirSync(path.join(tmp, 'east'));
    platform = new LocalPlatform({ regions: { east: path.join(tmp, 'east') } });
    csi = new TestCsiController({ kc: kube.kubeConfig(), platform, region: 'east', driver: DRIVER });
    csi.start();
    await client.create(
      T.storageClass,
      o('storage.k8s.io/v1', 'StorageClass', 'tern-local', undefined, {
        provisioner: DRIVER,
        reclaimPolicy: 'Delete',
      }),
    );
    const vsc = o('snapshot.storage.k8s.io/v1', 'VolumeSnapshotClass', 'snap', undefined, {
      driver: DRIVER,
      deletionPolicy: 'Delete',
    });
    vsc.metadata.annotations = { 'tern.io/is-snapshot-class': 'true' };
    await client.create(T.volumeSnapshotClass, vsc);
    for (const ns of ['app', 'tern-system'])
      await client.create(T.namespace, o('v1', 'Namespace', ns, undefined));
    await client.create(cm, o('v1', 'ConfigMap', 'conf', 'app', { data: { k: 'v' } }));
    await client.create(
      T.pvc,
      o('v1', 'PersistentVolumeClaim', 'data', 'app', {
        spec: {
          storageClassName: 'tern-local',
          accessModes: ['ReadWriteOnce'],
          resources: { requests: { storage: '1Mi' } },
        },
      }),
    );
    for (let i = 0; ; i++) {
      const pvc = await client.get(T.pvc, 'app', 'data');
      const pvName = (pvc['spec'] as { volumeName?: string }).volumeName;
      if (pvName && (pvc['status'] as { phase?: string }).phase === 'Bound') {
        const pv = await client.get(T.pv, undefined, pvName);
        const handle = (pv['spec'] as { csi: { volumeHandle: string } }).csi.volumeHandle;
        const vol = (await platform.listVolumes('east')).find((v) => v.id === handle)!;
        fs.writeFileSync(platform.volumeDataPath(vol), payload);
        break;
      }
      assert.ok(i < 300, 'claim bound');
      await new Promise((r) => setTimeout(r, 100));
    }
    // Backup, export to a file:// repository, and describe it with Tern resources.
    const bundle = await backupNamespace(client, 'app', { pollMs: 50 });
    backupId = bundle.id;
    const repoDir = path.join(tmp, 'repo');
    const repo = await Repository.init(new LocalStore(repoDir), 'repo-pass', {
      kdf: { N: 1024, r: 8, p: 1 },
      workers: 1,
    });
    await exportBackup(repo, bundle, {
      open: (v) =>
        Promise.resolve({
          path: platform.snapshotPath({
            id: v.snapshotHandle,
            volumeId: '',
            region: 'east',
            sizeBytes: 0,
            createdAt: '',
            kind: 'block',
          }),
          release: () => Promise.resolve(),
        }),
    });
    await repo.close();
    await client.create(
      TernTypes.secret,
      o('v1', 'Secret', 'offsite-keys', 'tern-system', { stringData: { passphrase: 'repo-pass' } }),
    );
    await client.create(
      TernTypes.profile,
      o('tern.io/v1alpha1', 'Profile', 'offsite', 'tern-system', {
        spec: { kind: 'location', url: `file://${tmp}`, secretRef: { name: 'offsite-keys' } },
      }),
    );
    const rp = await client.create(
      TernTypes.restorePoint,
      o('tern.io/v1alpha1', 'RestorePoint', 'app-1', 'tern-system', {
        spec: { app: 'app', backupId, consistentAt: bundle.createdAt, sizeBytes: payload.length },
      }),
    );
    await client.replaceStatus(TernTypes.restorePoint, {
      ...rp,
      status: {
        tiers: [{ kind: 'repository', locationProfile: 'offsite', repositoryPath: 'repo', snapshots: {} }],
      },
    });
  });

  after(async () => {
    await csi?.stop();
    await kube?.stop();
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
  });

  test('a RestoreAction restores into its target namespace and reports Complete with phases and plan', async () => {
    await client.create(
      TernTypes.restoreAction,
      o('tern.io/v1alpha1', 'RestoreAction', 'to-app2', 'tern-system', {
        spec: {
          restorePoint: 'app-1',
          targetNamespace: 'app2',
          transforms: [{ kinds: ['ConfigMap'], ops: [{ op: 'add', path: '/data/restored', value: 'yes' }] }],
        },
      }),
    );
    const logs: string[] = [];
    const rec = new RestoreActionReconciler({ client, namespace: 'tern-system', log: (l) => logs.push(l) });
    const t0 = Date.now();
    assert.equal(await rec.reconcileOnce(), 1);
    console.log(`# reconciled restore action in ${Date.now() - t0} ms`);
    const status = (await client.get(TernTypes.restoreAction, 'tern-system', 'to-app2'))['status'] as {
      state: string;
      phases: { name: string; endedAt?: string }[];
      plan: { kind: string; action: string }[];
    };
    assert.equal(status.state, 'Complete', logs.join('\n'));
    assert.deepEqual(
      status.phases.map((p) => p.name),
      ['open-repository', 'load-bundle', 'restore'],
    );
    assert.ok(status.phases.every((p) => p.endedAt));
    assert.ok(status.plan.some((p) => p.kind === 'PersistentVolumeClaim' && p.action === 'create'));
    assert.deepEqual((await client.get(cm, 'app2', 'conf'))['data'], { k: 'v', restored: 'yes' });
    const pvc = await client.get(T.pvc, 'app2', 'data');
    const pv = await client.get(T.pv, undefined, (pvc['spec'] as { volumeName: string }).volumeName);
    const handle = (pv['spec'] as { csi: { volumeHandle: string } }).csi.volumeHandle;
    const vol = (await platform.listVolumes('east')).find((v) => v.id === handle)!;
    assert.ok(fs.readFileSync(platform.volumeDataPath(vol)).equals(payload));
    // Done actions are not run again.
    assert.equal(await rec.reconcileOnce(), 0);
  });

  test('tern server --kubernetes runs RestoreActions as they appear, and stops on SIGTERM', async () => {
    const kubeconfig = path.join(tmp, 'kubeconfig');
    fs.writeFileSync(kubeconfig, kube.kubeConfig().exportConfig());
    const child = spawn(
      process.execPath,
      [
        path.join(ROOT, 'src', 'cli', 'main.ts'),
        'server',
        '--kubernetes',
        'tern-system',
        '--listen',
        '127.0.0.1:0',
        '--data-dir',
        path.join(tmp, 'srv'),
        '--quiet',
      ],
      {
        env: { ...process.env, KUBECONFIG: kubeconfig, TERN_API_TOKEN: 'test-token-0123456789abcdef' },
        stdio: ['ignore', 'ignore', 'pipe'],
      },
    );
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    try {
      await client.create(
        TernTypes.restoreAction,
        o('tern.io/v1alpha1', 'RestoreAction', 'via-server', 'tern-system', {
          spec: { restorePoint: 'app-1', targetNamespace: 'app3' },
        }),
      );
      const deadline = Date.now() + 60_000;
      for (;;) {
        const st = (await client.get(TernTypes.restoreAction, 'tern-system', 'via-server'))['status'] as
          { state?: string } | undefined;
        if (st?.state === 'Complete') break;
        assert.notEqual(st?.state, 'Failed', stderr);
        assert.equal(child.exitCode, null, `tern server exited: ${stderr}`);
        assert.ok(Date.now() < deadline, `not complete after 60 s: ${stderr}`);
        await new Promise((r) => setTimeout(r, 200));
      }
      assert.deepEqual((await client.get(cm, 'app3', 'conf'))['data'], { k: 'v' });
      assert.match(stderr, /kubernetes: reconciling Policies and RestoreActions in namespace tern-system/);
      assert.match(stderr, /restore action via-server: complete/);
      assert.match(stderr, /leader election: \S+ leads \(lease tern-system\/tern-reconciler\)/);
    } finally {
      child.kill('SIGTERM');
    }
    assert.equal(await exited, 0, stderr);
    // SIGTERM released the leader Lease: another replica may lead at once.
    const lease = await client.get(LeaseType, 'tern-system', 'tern-reconciler');
    assert.equal((lease['spec'] as { holderIdentity?: string }).holderIdentity, '', stderr);
    assert.match(stderr, /released lease tern-system\/tern-reconciler/);
  });

  test('failures are reported in status with a machine-readable code', async () => {
    await client.create(
      TernTypes.restoreAction,
      o('tern.io/v1alpha1', 'RestoreAction', 'missing-point', 'tern-system', {
        spec: { restorePoint: 'nope' },
      }),
    );
    await client.create(
      TernTypes.restoreAction,
      o('tern.io/v1alpha1', 'RestoreAction', 'repo-source', 'tern-system', {
        spec: { restorePoint: 'app-1', source: 'repository' },
      }),
    );
    const rec = new RestoreActionReconciler({ client, namespace: 'tern-system' });
    assert.equal(await rec.reconcileOnce(), 2);
    const st = async (name: string) =>
      (await client.get(TernTypes.restoreAction, 'tern-system', name))['status'] as {
        state: string;
        error: { code: string; message: string };
      };
    const a = await st('missing-point');
    assert.equal(a.state, 'Failed');
    assert.equal(a.error.code, 'NOT_FOUND');
    assert.match(a.error.message, /RestorePoint "nope" not found/);
    const b = await st('repo-source');
    assert.equal(b.error.code, 'INPUT');
    assert.match(b.error.message, /datamover Jobs/);
  });

  test('Policy reconciler: due policies make RestorePoints, retention retires the older one, the newest restores', async () => {
    await client.create(
      TernTypes.policy,
      o('tern.io/v1alpha1', 'Policy', 'app-hourly', 'tern-system', {
        spec: {
          app: { namespace: 'app' },
          frequency: '@hourly',
          retention: { latest: 1 },
          export: { mode: 'datamover', locationProfile: 'offsite', repositoryPath: 'repo' },
        },
      }),
    );
    const clock = new ManualClock(Date.now() + 2 * 3600_000);
    const logs: string[] = [];
    const rec = new PolicyReconciler({ client, namespace: 'tern-system', clock, log: (l) => logs.push(l) });
    const t0 = Date.now();
    const [first] = await rec.reconcileOnce();
    console.log(`# policy run (backup + bundle export + restore point) in ${Date.now() - t0} ms`);
    assert.ok(first, logs.join('\n'));
    assert.deepEqual(await rec.reconcileOnce(), [], 'not due again within the hour');
    const pst = (await client.get(TernTypes.policy, 'tern-system', 'app-hourly'))['status'] as {
      lastRestorePoint: string;
      lastRunAt: string;
      nextRunAt: string;
    };
    assert.equal(pst.lastRestorePoint, first);
    assert.ok(Date.parse(pst.nextRunAt) > Date.parse(pst.lastRunAt));
    const rp1 = await client.get(TernTypes.restorePoint, 'tern-system', first);
    const tiers = (rp1['status'] as { tiers: { kind: string; snapshots: Record<string, string> }[] }).tiers;
    assert.deepEqual(
      tiers.map((t) => t.kind),
      ['local', 'repository'],
    );
    assert.match(tiers[0]!.snapshots['data']!, /^east\//);
    const content1 = (rp1['spec'] as { volumes: { volumeSnapshotContent: string }[] }).volumes[0]!
      .volumeSnapshotContent;

    clock.advance(3600_000);
    const [second] = await rec.reconcileOnce();
    assert.ok(second && second !== first, logs.join('\n'));
    assert.equal(
      await client.find(TernTypes.restorePoint, 'tern-system', first),
      undefined,
      'older point retired',
    );
    for (let i = 0; await client.find(T.volumeSnapshotContent, undefined, content1); i++) {
      assert.ok(i < 300, 'retired snapshot content deleted');
      await new Promise((r) => setTimeout(r, 100));
    }

    await client.create(
      TernTypes.restoreAction,
      o('tern.io/v1alpha1', 'RestoreAction', 'from-policy', 'tern-system', {
        spec: { restorePoint: second, targetNamespace: 'app4' },
      }),
    );
    assert.equal(await new RestoreActionReconciler({ client, namespace: 'tern-system' }).reconcileOnce(), 1);
    const st = (await client.get(TernTypes.restoreAction, 'tern-system', 'from-policy'))['status'] as {
      state: string;
      error?: { message: string };
    };
    assert.equal(st.state, 'Complete', st.error?.message);
    const pvc = await client.get(T.pvc, 'app4', 'data');
    const pv = await client.get(T.pv, undefined, (pvc['spec'] as { volumeName: string }).volumeName);
    const handle = (pv['spec'] as { csi: { volumeHandle: string } }).csi.volumeHandle;
    const vol = (await platform.listVolumes('east')).find((v) => v.id === handle)!;
    assert.ok(fs.readFileSync(platform.volumeDataPath(vol)).equals(payload));
  });
  test('Policy retention: GFS tiers (the engine retention function) on the points scheduled by an injected clock', async () => {
    await client.mergePatch(TernTypes.policy, 'tern-system', 'app-hourly', { spec: { paused: true } });
    const rp = (name: string, at: string) =>
      o('tern.io/v1alpha1', 'RestorePoint', name, 'tern-system', {
        spec: { app: 'app', policy: 'gfs', backupId: name, consistentAt: at, volumes: [] },
      });
    await client.create(
      TernTypes.policy,
      o('tern.io/v1alpha1', 'Policy', 'gfs', 'tern-system', {
        spec: {
          app: { namespace: 'app' },
          frequency: '@daily',
          retention: { latest: 1, daily: 3, weekly: 2, monthly: 2 },
          export: { mode: 'datamover', locationProfile: 'offsite', repositoryPath: 'repo' },
        },
      }),
    );
    // Earlier points of this policy (no snapshots), by the time their run was scheduled for.
    const earlier: Record<string, string> = {
      'gfs-tue': '2027-03-09T00:00:00.000Z', // daily
      'gfs-mon-noon': '2027-03-08T12:00:00.000Z', // daily (newest of Monday)
      'gfs-mon': '2027-03-08T00:00:00.000Z', // same day, same week, same month: removed
      'gfs-prev-week': '2027-03-03T00:00:00.000Z', // weekly (ISO week 9)
      'gfs-feb': '2027-02-24T00:00:00.000Z', // monthly (February)
      'gfs-dec': '2026-12-30T00:00:00.000Z', // beyond 2 months: removed
    };
    for (const [name, at] of Object.entries(earlier)) {
      const made = await client.create(TernTypes.restorePoint, {
        ...rp(name, at),
        metadata: { name, namespace: 'tern-system', labels: { 'tern.io/policy': 'gfs' } },
      });
      await client.replaceStatus(TernTypes.restorePoint, { ...made, status: { scheduledAt: at } });
    }
    // The clock says Wednesday 2027-03-10 01:00 UTC: the daily run due at midnight runs now.
    const clock = new ManualClock(Date.UTC(2027, 2, 10, 1));
    const logs: string[] = [];
    const rec = new PolicyReconciler({ client, namespace: 'tern-system', clock, log: (l) => logs.push(l) });
    const made = await rec.reconcileOnce();
    const newest = made.find((n) => n.startsWith('gfs-'));
    assert.ok(newest, logs.join('\n'));
    const left = (
      await client.list(TernTypes.restorePoint, 'tern-system', { labelSelector: 'tern.io/policy=gfs' })
    )
      .map((p) => p.metadata.name)
      .sort();
    assert.deepEqual(left, [newest, 'gfs-feb', 'gfs-mon-noon', 'gfs-prev-week', 'gfs-tue'].sort());
    const np = await client.get(TernTypes.restorePoint, 'tern-system', newest);
    assert.equal((np['status'] as { scheduledAt: string }).scheduledAt, '2027-03-10T00:00:00.000Z');
    assert.ok(
      logs.some((l) => l.includes('retired gfs-mon')) && logs.some((l) => l.includes('retired gfs-dec')),
    );
    // newest-N only would have kept one point; a second pass changes nothing.
    const again = await rec.applyRetention('gfs', { latest: 1, daily: 3, weekly: 2, monthly: 2 });
    assert.deepEqual(again.removed, []);
    // Its snapshots stay until retention retires it: pause the policy and retire everything but the newest.
    await client.mergePatch(TernTypes.policy, 'tern-system', 'gfs', { spec: { paused: true } });
    const last = await rec.applyRetention('gfs', { latest: 1 });
    assert.deepEqual(last.kept, [newest]);
  });

  // Last: it kills and restarts the API server.
  test('API server dies mid-backup: the run snapshots are recorded as orphaned and deleted at the next contact', async () => {
    const snapshotsInApp = async () =>
      (await client.list(T.volumeSnapshot, 'app')).map((v) => v.metadata.name).sort();
    const before = await snapshotsInApp();
    await client.create(
      TernTypes.policy,
      o('tern.io/v1alpha1', 'Policy', 'doomed', 'tern-system', {
        spec: {
          app: { namespace: 'app' },
          frequency: '@hourly',
          hooks: [{ name: 'thaw', when: 'post-snapshot', command: ['true'] }],
          export: { mode: 'datamover', locationProfile: 'offsite', repositoryPath: 'repo' },
        },
      }),
    );
    // The post-snapshot hook runs once the snapshots are ready and retained; then the API server dies.
    let killed = false;
    const runner: HookRunner = {
      run: async () => {
        if (!killed) {
          killed = true;
          await kube.killApiServer();
        }
        return { exitCode: 0, stdout: '', stderr: '' };
      },
    };
    const logs: string[] = [];
    const rec = new PolicyReconciler({
      client: new KubeClient(kube.kubeConfig(), { timeoutMs: 5000 }),
      namespace: 'tern-system',
      clock: new ManualClock(Date.now() + 2 * 3600_000),
      hookRunner: runner,
      log: (l) => logs.push(l),
    });
    await assert.rejects(rec.reconcileOnce(), /unreachable/);
    assert.ok(killed);
    const orphanLine = logs.find((l) => l.includes('could not be deleted'));
    assert.ok(orphanLine, logs.join('\n'));

    const t0 = Date.now();
    await kube.restartApiServer();
    console.log(`# API server restarted on the same etcd data in ${Date.now() - t0} ms`);
    const orphaned = (await snapshotsInApp()).filter((n) => !before.includes(n));
    assert.equal(orphaned.length, 1, 'the run left its snapshot behind');
    const content = (
      (await client.get(T.volumeSnapshot, 'app', orphaned[0]!))['status'] as {
        boundVolumeSnapshotContentName: string;
      }
    ).boundVolumeSnapshotContentName;
    assert.equal(
      ((await client.get(T.volumeSnapshotContent, undefined, content))['spec'] as { deletionPolicy: string })
        .deletionPolicy,
      'Retain',
    );
    // Next contact (the policy paused, so no new run): recorded on the Policy, then deleted.
    await client.mergePatch(TernTypes.policy, 'tern-system', 'doomed', { spec: { paused: true } });
    await rec.reconcileOnce();
    assert.ok(
      logs.some((l) => /policy doomed: recorded 1 orphaned snapshot/.test(l)),
      logs.join('\n'),
    );
    assert.ok(
      logs.some((l) => l.includes(`deleted 1 orphaned snapshot(s): app/${orphaned[0]}`)),
      logs.join('\n'),
    );
    assert.deepEqual(await snapshotsInApp(), before);
    const pst = (await client.get(TernTypes.policy, 'tern-system', 'doomed'))['status'] as
      { orphanedSnapshots?: unknown[] } | undefined;
    assert.equal(pst?.orphanedSnapshots, undefined);
    for (let i = 0; await client.find(T.volumeSnapshotContent, undefined, content); i++) {
      assert.ok(i < 300, 'orphaned content deleted by the driver');
      await new Promise((r) => setTimeout(r, 100));
    }
  });

  test('orphaned snapshots recorded on a Policy are deleted by a new reconciler (after a Tern restart)', async () => {
    const vs = o('snapshot.storage.k8s.io/v1', 'VolumeSnapshot', 'left-behind', 'app', {
      spec: { volumeSnapshotClassName: 'snap', source: { persistentVolumeClaimName: 'data' } },
    });
    await client.create(T.volumeSnapshot, vs);
    const p = await client.get(TernTypes.policy, 'tern-system', 'doomed');
    await client.replaceStatus(TernTypes.policy, {
      ...p,
      status: {
        ...(p['status'] as object),
        orphanedSnapshots: [{ namespace: 'app', volumeSnapshot: 'left-behind' }],
      },
    });
    const logs: string[] = [];
    await new PolicyReconciler({
      client,
      namespace: 'tern-system',
      log: (l) => logs.push(l),
    }).reconcileOnce();
    assert.equal(await client.find(T.volumeSnapshot, 'app', 'left-behind'), undefined, logs.join('\n'));
    const st = (await client.get(TernTypes.policy, 'tern-system', 'doomed'))['status'] as {
      orphanedSnapshots?: unknown;
    };
    assert.equal(st.orphanedSnapshots, undefined);
  });
});
