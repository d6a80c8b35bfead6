/**
 * Kubernetes backup and restore against a real kube-apiserver + etcd (test/harness/kube.ts), with the CSI
 * driver played by test/kube/csi-controller.ts on the local platform. Skips, saying why, when the kube
 * binaries are not built (scripts/peers.d/30-kube.sh).
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import {
  ConflictError,
  ForbiddenError,
  InputError,
  NotFoundError,
  UnavailableError,
} from '../../src/core/index.ts';
import { LocalPlatform } from '../../src/platforms/index.ts';
import {
  KubeClient,
  KubeTypes as T,
  backupNamespace,
  captureNamespace,
  exportBackup,
  findVolumeExport,
  loadExportedBundle,
  parseBundle,
  parseTransforms,
  restoreBundle,
  deleteBackupSnapshots,
  repositoryVolumeRestorer,
  LocalCommandRunner,
  type Bundle,
  type HookRunner,
  type KubeObject,
  type SnapshotDataAccess,
} from '../../src/platforms/kubernetes/index.ts';
import { Repository, restoreImage } from '../../src/repo/index.ts';
import { LocalStore } from '../../src/storage/index.ts';
import { kubeSkipReason, startKube, type Kube } from '../harness/kube.ts';
import { TestCsiController, deleteNamespace } from '../kube/csi-controller.ts';

const DRIVER = 'local.csi.tern.io';
const NS = 'shop';
const skip = kubeSkipReason();
if (skip) console.log(`# kubernetes tests skipped: ${skip}`);

const apps = {
  group: 'apps',
  version: 'v1',
  apiVersion: 'apps/v1',
  kind: 'Deployment',
  plural: 'deployments',
  namespaced: true,
  verbs: [],
};
const rs = { ...apps, kind: 'ReplicaSet', plural: 'replicasets' };
const cm = {
  group: '',
  version: 'v1',
  apiVersion: 'v1',
  kind: 'ConfigMap',
  plural: 'configmaps',
  namespaced: true,
  verbs: [],
};
const secret = { ...cm, kind: 'Secret', plural: 'secrets' };
const svc = { ...cm, kind: 'Service', plural: 'services' };
const sa = { ...cm, kind: 'ServiceAccount', plural: 'serviceaccounts' };
const rbac = {
  group: 'rbac.authorization.k8s.io',
  version: 'v1',
  apiVersion: 'rbac.authorization.k8s.io/v1',
  namespaced: true,
  verbs: [],
};
const role = { ...rbac, kind: 'Role', plural: 'roles' };
const roleBinding = { ...rbac, kind: 'RoleBinding', plural: 'rolebindings' };
const clusterRole = { ...rbac, kind: 'ClusterRole', plural: 'clusterroles', namespaced: false };
const clusterRoleBinding = {
  ...rbac,
  kind: 'ClusterRoleBinding',
  plural: 'clusterrolebindings',
  namespaced: false,
};
const widget = {
  group: 'example.com',
  version: 'v1',
  apiVersion: 'example.com/v1',
  kind: 'Widget',
  plural: 'widgets',
  namespaced: true,
  verbs: [],
};

function obj(
  apiVersion: string,
  kind: string,
  name: string,
  ns: string | undefined,
  rest: Record<string, unknown> = {},
): KubeObject {
  return { apiVersion, kind, metadata: { name, ...(ns ? { namespace: ns } : {}) }, ...rest };
}

async function waitFor<R>(what: string, fn: () => Promise<R | undefined>, ms = 30_000): Promise<R> {
  const deadline = Date.now() + ms;
  for (;;) {
    const r = await fn();
    if (r !== undefined) return r;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((res) => setTimeout(res, 100));
  }
}

/** Comparable form: what restore does not promise to keep identical is removed. */
function normalize(objects: KubeObject[], ns: string): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const o of objects) {
    const c = structuredClone(o);
    if (c.kind === 'Namespace') {
      c.metadata.name = ns;
      delete c.metadata.labels?.['kubernetes.io/metadata.name'];
    } else c.metadata.namespace = ns;
    if (c.kind === 'PersistentVolumeClaim') {
      const spec = c['spec'] as Record<string, unknown>;
      delete spec['dataSource'];
      delete spec['dataSourceRef'];
    }
    if (c.kind === 'RoleBinding')
      for (const s of (c['subjects'] ?? []) as { namespace?: string }[]) if (s.namespace) s.namespace = ns;
    out[`${c.apiVersion}/${c.kind}/${c.metadata.name}`] = c;
  }
  return out;
}

describe('kubernetes backup and restore (real kube-apiserver)', { skip }, () => {
  let kube: Kube;
  let client: KubeClient;
  let csi: TestCsiController;
  let platform: LocalPlatform;
  let tmp: string;
  let bundle: Bundle;
  const data = new Map<string, Buffer>();
  const hookLog = () => path.join(tmp, 'hooks.log');

  const pvcPath = async (ns: string, name: string): Promise<string> => {
    const pvc = await client.get(T.pvc, ns, name);
    const pv = await client.get(T.pv, undefined, (pvc['spec'] as { volumeName: string }).volumeName);
    const handle = (pv['spec'] as { csi: { volumeHandle: string } }).csi.volumeHandle;
    const vol = (await platform.listVolumes('east')).find((v) => v.id === handle);
    assert.ok(vol, `volume ${handle} of ${ns}/${name}`);
    return platform.volumeDataPath(vol);
  };
  const bound = (ns: string, name: string) =>
    waitFor(`${ns}/${name} bound`, async () => {
      const p = await client.get(T.pvc, ns, name);
      return (p['status'] as { phase?: string } | undefined)?.phase === 'Bound' ? p : undefined;
    });
  const snapshotsIn = async (ns: string) => (await client.list(T.volumeSnapshot, ns)).length;

  before(async () => {
    const t0 = Date.now();
    kube = await startKube();
    console.log(`# kube-apiserver + etcd ready in ${Date.now() - t0} ms`);
    client = new KubeClient(kube.kubeConfig());
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-kube-test-'));
    fs.mkdirSync(path.join(tmp, 'east'));
    platform = new LocalPlatform({ regions: { east: path.join(tmp, 'east') } });
    csi = new TestCsiController({ kc: kube.kubeConfig(), platform, region: 'east', driver: DRIVER });
    csi.start();
    for (const name of ['tern-local', 'tern-local-fast'])
      await client.create(
        T.storageClass,
        obj('storage.k8s.io/v1', 'StorageClass', name, undefined, {
          provisioner: DRIVER,
          reclaimPolicy: 'Delete',
          volumeBindingMode: 'Immediate',
        }),
      );
    await client.create(
      T.volumeSnapshotClass,
      obj('snapshot.storage.k8s.io/v1', 'VolumeSnapshotClass', 'tern-local-snap', undefined, {
        driver: DRIVER,
        deletionPolicy: 'Delete',
      }),
    );
    await client.mergePatch(T.volumeSnapshotClass, undefined, 'tern-local-snap', {
      metadata: { annotations: { 'tern.io/is-snapshot-class': 'true' } },
    });
    // A custom resource type, to show CRs and their CRD travel with the namespace.
    await client.create(T.crd, {
      apiVersion: 'apiextensions.k8s.io/v1',
      kind: 'CustomResourceDefinition',
      metadata: { name: 'widgets.example.com' },
      spec: {
        group: 'example.com',
        scope: 'Namespaced',
        names: { kind: 'Widget', plural: 'widgets', singular: 'widget', listKind: 'WidgetList' },
        versions: [
          {
            name: 'v1',
            served: true,
            storage: true,
            schema: { openAPIV3Schema: { type: 'object', 'x-kubernetes-preserve-unknown-fields': true } },
          },
        ],
      },
    });
    await waitFor('widgets CRD', async () => {
      const c = await client.get(T.crd, undefined, 'widgets.example.com');
      const conds = (c['status'] as { conditions?: { type: string; status: string }[] }).conditions ?? [];
      return conds.some((x) => x.type === 'Established' && x.status === 'True') ? true : undefined;
    });

    // The application.
    await client.create(
      T.namespace,
      obj('v1', 'Namespace', NS, undefined, { metadata: { name: NS, labels: { team: 'web' } } }),
    );
    await client.create(cm, obj('v1', 'ConfigMap', 'settings', NS, { data: { 'app.conf': 'color=blue\n' } }));
    await client.create(
      secret,
      obj('v1', 'Secret', 'db-password', NS, { type: 'Opaque', stringData: { password: 's3cret' } }),
    );
    await client.create(sa, obj('v1', 'ServiceAccount', 'web', NS));
    await client.create(
      role,
      obj(role.apiVersion, 'Role', 'reader', NS, {
        rules: [{ apiGroups: [''], resources: ['configmaps'], verbs: ['get'] }],
      }),
    );
    await client.create(
      roleBinding,
      obj(roleBinding.apiVersion, 'RoleBinding', 'web-reader', NS, {
        roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: 'reader' },
        subjects: [{ kind: 'ServiceAccount', name: 'web', namespace: NS }],
      }),
    );
    for (const [name, size] of [
      ['data-a', '4Mi'],
      ['data-b', '2Mi'],
    ] as const)
      await client.create(
        T.pvc,
        obj('v1', 'PersistentVolumeClaim', name, NS, {
          spec: {
            storageClassName: 'tern-local',
            accessModes: ['ReadWriteOnce'],
            resources: { requests: { storage: size } },
          },
        }),
      );
    const dep = await client.create(
      apps,
      obj('apps/v1', 'Deployment', 'web', NS, {
        metadata: { name: 'web', namespace: NS, labels: { app: 'web' } },
        spec: {
          replicas: 2,
          selector: { matchLabels: { app: 'web' } },
          template: {
            metadata: { labels: { app: 'web' } },
            spec: {
              serviceAccountName: 'web',
              containers: [
                {
                  name: 'web',
                  image: 'nginx:1.27',
                  envFrom: [{ configMapRef: { name: 'settings' } }],
                  volumeMounts: [{ name: 'a', mountPath: '/data' }],
                },
              ],
              volumes: [{ name: 'a', persistentVolumeClaim: { claimName: 'data-a' } }],
            },
          },
        },
      }),
    );
    await client.create(
      svc,
      obj('v1', 'Service', 'web', NS, {
        spec: { selector: { app: 'web' }, ports: [{ port: 80, targetPort: 8080 }] },
      }),
    );
    await client.create(widget, obj('example.com/v1', 'Widget', 'gizmo', NS, { spec: { size: 3 } }));
    // What a cluster's controllers would have made: none of it is captured.
    await client.create(
      cm,
      obj('v1', 'ConfigMap', 'kube-root-ca.crt', NS, { data: { 'ca.crt': kube.caPem } }),
    );
    await client.create(
      secret,
      obj('v1', 'Secret', 'web-token-abcde', NS, {
        type: 'kubernetes.io/service-account-token',
        metadata: {
          name: 'web-token-abcde',
          namespace: NS,
          annotations: { 'kubernetes.io/service-account.name': 'web' },
        },
      }),
    );
    await client.create(
      rs,
      obj('apps/v1', 'ReplicaSet', 'web-5d4f8', NS, {
        metadata: {
          name: 'web-5d4f8',
          namespace: NS,
          labels: { app: 'web' },
          ownerReferences: [
            {
              apiVersion: 'apps/v1',
              kind: 'Deployment',
              name: 'web',
              uid: dep.metadata.uid!,
              controller: true,
            },
          ],
        },
        spec: {
          replicas: 2,
          selector: { matchLabels: { app: 'web' } },
          template: {
            metadata: { labels: { app: 'web' } },
            spec: { containers: [{ name: 'web', image: 'nginx:1.27' }] },
          },
        },
      }),
    );
    for (const [name, size] of [
      ['data-a', 4 << 20],
      ['data-b', 2 << 20],
    ] as const) {
      await bound(NS, name);
      const buf = crypto.randomBytes(size);
      buf.fill(0, 1 << 20, 2 << 20); // a zero MiB in the middle
      fs.writeFileSync(await pvcPath(NS, name), buf);
      data.set(name, buf);
    }
  });

  after(async () => {
    if (csi) await csi.stop();
    if (csi?.errors.length) console.log(`# csi controller notes: ${csi.errors.slice(-5).join(' | ')}`);
    await kube?.stop();
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
  });

  test('backup: manifests sanitized, CRs and cluster deps noted, hooks recorded, snapshots ready and retained', async () => {
    const t0 = Date.now();
    bundle = await backupNamespace(client, NS, {
      hookRunner: new LocalCommandRunner(),
      hooks: [
        {
          name: 'freeze',
          when: 'pre-snapshot',
          command: ['sh', '-c', `echo "freeze $TERN_NAMESPACE" >> ${hookLog()}`],
          timeoutSeconds: 10,
          onError: 'fail',
        },
        {
          name: 'thaw',
          when: 'post-snapshot',
          command: ['sh', '-c', `echo "thaw $TERN_NAMESPACE" >> ${hookLog()}`],
          timeoutSeconds: 10,
          onError: 'fail',
        },
      ],
      pollMs: 50,
    });
    console.log(
      `# backup of ${bundle.resources.length} objects + ${bundle.volumes.length} volumes in ${Date.now() - t0} ms`,
    );
    assert.deepEqual(parseBundle(JSON.parse(JSON.stringify(bundle))), bundle);
    const kinds = bundle.resources.map((r) => `${r.kind}/${r.metadata.name}`).sort();
    for (const k of [
      'Namespace/shop',
      'ConfigMap/settings',
      'Secret/db-password',
      'ServiceAccount/web',
      'Role/reader',
      'RoleBinding/web-reader',
      'PersistentVolumeClaim/data-a',
      'PersistentVolumeClaim/data-b',
      'Deployment/web',
      'Service/web',
      'Widget/gizmo',
    ])
      assert.ok(kinds.includes(k), `${k} captured (got ${kinds.join(', ')})`);
    for (const k of ['ConfigMap/kube-root-ca.crt', 'Secret/web-token-abcde', 'ReplicaSet/web-5d4f8'])
      assert.ok(
        !kinds.includes(k) && bundle.skipped.some((s) => `${s.kind}/${s.name}` === k),
        `${k} skipped`,
      );
    for (const r of bundle.resources) {
      for (const f of ['uid', 'resourceVersion', 'managedFields', 'creationTimestamp', 'generation'])
        assert.equal(r.metadata[f], undefined, `${r.kind}/${r.metadata.name} has no ${f}`);
      assert.equal(r['status'], undefined);
    }
    const service = bundle.resources.find((r) => r.kind === 'Service')!;
    assert.equal((service['spec'] as Record<string, unknown>)['clusterIP'], undefined);
    const pvcA = bundle.resources.find(
      (r) => r.kind === 'PersistentVolumeClaim' && r.metadata.name === 'data-a',
    )!;
    assert.equal((pvcA['spec'] as Record<string, unknown>)['volumeName'], undefined);
    assert.equal(pvcA.metadata.annotations?.['pv.kubernetes.io/bind-completed'], undefined);
    const clusterKinds = bundle.clusterResources.map((c) => `${c.kind}/${c.metadata.name}`);
    for (const k of [
      'CustomResourceDefinition/widgets.example.com',
      'StorageClass/tern-local',
      'VolumeSnapshotClass/tern-local-snap',
    ])
      assert.ok(clusterKinds.includes(k), `${k} noted`);
    assert.equal(clusterKinds.filter((k) => k.startsWith('PersistentVolume/')).length, 2);
    assert.deepEqual(
      bundle.phases.map((p) => `${p.name}:${p.status}`),
      [
        'capture:ok',
        'plan-snapshots:ok',
        'hook:pre-snapshot:freeze:ok',
        'snapshot:ok',
        'hook:post-snapshot:thaw:ok',
      ],
    );
    assert.equal(fs.readFileSync(hookLog(), 'utf8'), `freeze ${NS}\nthaw ${NS}\n`);
    assert.equal(bundle.volumes.length, 2);
    for (const v of bundle.volumes) {
      assert.equal(v.driver, DRIVER);
      assert.equal(v.volumeSnapshotClass, 'tern-local-snap');
      assert.match(v.snapshotHandle, /^east\/pvc-/);
      assert.equal(v.restoreSizeBytes, data.get(v.pvc)!.length);
      const content = await client.get(T.volumeSnapshotContent, undefined, v.volumeSnapshotContent);
      assert.equal((content['spec'] as { deletionPolicy: string }).deletionPolicy, 'Retain');
      // The snapshot holds the data as it was.
      const snapPath = platform.snapshotPath({
        id: v.snapshotHandle,
        volumeId: '',
        region: 'east',
        sizeBytes: 0,
        createdAt: '',
        kind: 'block',
      });
      assert.ok(fs.readFileSync(snapPath).equals(data.get(v.pvc)!));
    }
  });

  test('export to the datamover repository: volume images and the bundle read back byte for byte', async () => {
    const store = new LocalStore(path.join(tmp, 'repo'));
    const repo = await Repository.init(store, 'pw', { kdf: { N: 1024, r: 8, p: 1 }, workers: 1 });
    try {
      const access: SnapshotDataAccess = {
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
      };
      const t0 = Date.now();
      const r = await exportBackup(repo, bundle, access);
      console.log(
        `# export of ${r.volumes.reduce((n, v) => n + v.bytesRead, 0)} bytes in ${Date.now() - t0} ms`,
      );
      assert.equal(r.volumes.length, 2);
      assert.deepEqual(await loadExportedBundle(repo, bundle.id), bundle);
      for (const v of bundle.volumes) {
        const m = await findVolumeExport(repo, bundle.id, v.pvc);
        assert.equal(m.root.kind, 'image');
        if (m.root.kind !== 'image') continue;
        const out = path.join(tmp, `restored-${v.pvc}.img`);
        await restoreImage(repo, m.root.map, out);
        assert.ok(fs.readFileSync(out).equals(data.get(v.pvc)!), `${v.pvc} from the repository`);
      }
      await assert.rejects(loadExportedBundle(repo, 'no-such-backup'), NotFoundError);
    } finally {
      await repo.close();
    }
  });

  test('delete the namespace, restore it: every object equal after stripping, PVC data byte for byte', async () => {
    const original = await captureNamespace(client, NS);
    await deleteNamespace(kube.kubeConfig(), NS);
    assert.equal(await client.find(T.namespace, undefined, NS), undefined);
    // The volumes went with their claims (reclaim policy Delete); the retained snapshots did not.
    await waitFor('volumes reclaimed', async () =>
      (await platform.listVolumes('east')).length === 0 ? true : undefined,
    );

    const t0 = Date.now();
    const r = await restoreBundle(client, bundle, { pollMs: 50, timeoutMs: 60_000 });
    console.log(`# restore of ${r.applied.length} objects in ${Date.now() - t0} ms`);
    assert.equal(r.volumes.length, 2);
    assert.ok(r.plan.some((p) => p.kind === 'CustomResourceDefinition' && p.action === 'skip'));
    const order = r.plan.filter((p) => p.action !== 'skip').map((p) => p.kind);
    const at = (kind: string) => order.indexOf(kind);
    for (const [a, b] of [
      ['Namespace', 'ServiceAccount'],
      ['ServiceAccount', 'Secret'],
      ['Secret', 'ConfigMap'],
      ['ConfigMap', 'PersistentVolumeClaim'],
      ['PersistentVolumeClaim', 'Deployment'],
      ['Deployment', 'Service'],
    ] as const)
      assert.ok(at(a) >= 0 && at(a) < at(b), `${a} before ${b} in ${order.join(',')}`);

    const restored = await captureNamespace(client, NS);
    assert.deepEqual(normalize(restored.resources, NS), normalize(original.resources, NS));
    for (const [name, buf] of data)
      assert.ok(fs.readFileSync(await pvcPath(NS, name)).equals(buf), `${name} data`);
  });

  test('restore into another namespace with a storageClassName transform', async () => {
    const transforms = parseTransforms([
      {
        kinds: ['PersistentVolumeClaim'],
        name: 'data-.*',
        ops: [{ op: 'replace', path: '/spec/storageClassName', value: 'tern-local-fast' }],
      },
      { kinds: ['ConfigMap'], name: 'settings', ops: [{ op: 'add', path: '/data/site', value: 'dr' }] },
    ]);
    const r = await restoreBundle(client, bundle, { targetNamespace: 'shop-dr', transforms, pollMs: 50 });
    assert.ok(
      r.plan.filter((p) => p.kind === 'PersistentVolumeClaim').every((p) => p.transforms.includes(0)),
    );
    for (const [name, buf] of data) {
      const pvc = await bound('shop-dr', name);
      assert.equal((pvc['spec'] as { storageClassName: string }).storageClassName, 'tern-local-fast');
      assert.ok(fs.readFileSync(await pvcPath('shop-dr', name)).equals(buf), `${name} data in shop-dr`);
    }
    const settings = await client.get(cm, 'shop-dr', 'settings');
    assert.deepEqual(settings['data'], { 'app.conf': 'color=blue\n', site: 'dr' });
    const binding = await client.get(roleBinding, 'shop-dr', 'web-reader');
    assert.deepEqual(binding['subjects'], [{ kind: 'ServiceAccount', name: 'web', namespace: 'shop-dr' }]);
    assert.ok(await client.find(widget, 'shop-dr', 'gizmo'));
  });

  test('dry-run plans without creating; existing objects are skipped or overwritten', async () => {
    const plan = await restoreBundle(client, bundle, { targetNamespace: 'shop-plan', dryRun: true });
    assert.ok(
      plan.plan
        .filter((p) => p.namespace === 'shop-plan' || p.kind === 'Namespace')
        .every((p) => p.action === 'create'),
    );
    assert.equal(await client.find(T.namespace, undefined, 'shop-plan'), undefined);

    await client.mergePatch(cm, NS, 'settings', { data: { 'app.conf': 'color=red\n' } });
    const skipPlan = await restoreBundle(client, bundle, { dryRun: true });
    assert.ok(
      skipPlan.plan.every((p) => p.action === 'skip'),
      'everything exists',
    );
    const over = await restoreBundle(client, bundle, { existing: 'overwrite' });
    const byKind = (k: string) => over.plan.filter((p) => p.kind === k).map((p) => p.action);
    assert.deepEqual(byKind('ConfigMap'), ['overwrite']);
    assert.deepEqual(byKind('PersistentVolumeClaim'), ['skip', 'skip']);
    assert.deepEqual(byKind('Namespace'), ['skip']);
    assert.deepEqual((await client.get(cm, NS, 'settings'))['data'], { 'app.conf': 'color=blue\n' });
  });

  test('DR restore from the datamover repository: bundle and volume data from the repository, no CSI snapshot', async () => {
    const repo = await Repository.open(new LocalStore(path.join(tmp, 'repo')), 'pw', { workers: 1 });
    try {
      const imported = await loadExportedBundle(repo, bundle.id);
      const t0 = Date.now();
      const r = await restoreBundle(client, imported, {
        targetNamespace: 'shop-repo',
        pollMs: 50,
        volumeData: repositoryVolumeRestorer(repo, bundle.id, {
          volumePath: async (pv) => {
            const handle = (pv['spec'] as { csi: { volumeHandle: string } }).csi.volumeHandle;
            const vol = (await platform.listVolumes('east')).find((v) => v.id === handle);
            assert.ok(vol, `local volume ${handle}`);
            return platform.volumeDataPath(vol);
          },
        }),
      });
      console.log(
        `# restore from the repository (${r.volumes.reduce((n, v) => n + (v.bytesWritten ?? 0), 0)} bytes) in ${Date.now() - t0} ms`,
      );
      assert.deepEqual(
        r.volumes.map((v) => v.source),
        ['data', 'data'],
      );
      assert.ok(
        r.plan
          .filter((p) => p.kind === 'PersistentVolumeClaim')
          .every((p) => p.fromData && !p.fromSnapshotHandle),
      );
      // Data was in place before the workloads that mount it were created.
      const order = r.plan.map((p) => p.kind);
      assert.ok(order.lastIndexOf('PersistentVolumeClaim') < order.indexOf('Deployment'));
      assert.equal(await snapshotsIn('shop-repo'), 0);
      for (const [name, buf] of data) {
        const pvc = await client.get(T.pvc, 'shop-repo', name);
        assert.equal((pvc['spec'] as { dataSource?: unknown }).dataSource, undefined);
        assert.ok(
          fs.readFileSync(await pvcPath('shop-repo', name)).equals(buf),
          `${name} data from the repository`,
        );
      }
    } finally {
      await repo.close();
    }
  });

  test('CLI: tern kube backup writes a bundle, tern kube restore --dry-run prints the plan', async () => {
    const kubeconfig = path.join(tmp, 'kubeconfig');
    fs.writeFileSync(kubeconfig, kube.kubeConfig().exportConfig());
    const out = path.join(tmp, 'shop-dr.bundle.json');
    // Asynchronously: the test CSI controller runs in this process and must keep reconciling meanwhile.
    const tern = async (...args: string[]) =>
      (
        await promisify(execFile)(
          process.execPath,
          [
            path.join(import.meta.dirname, '..', '..', 'src', 'cli', 'main.ts'),
            'kube',
            ...args,
            '--kubeconfig',
            kubeconfig,
          ],
          { encoding: 'utf8', timeout: 120_000 },
        )
      ).stdout;
    const b = JSON.parse(await tern('backup', 'shop-dr', '--out', out, '--json')) as { volumes: unknown[] };
    assert.equal(b.volumes.length, 2);
    const cliBundle = parseBundle(fs.readFileSync(out, 'utf8'));
    assert.equal(cliBundle.namespace, 'shop-dr');
    const plan = JSON.parse(
      await tern('restore', '--bundle', out, '--target-namespace', 'shop-cli', '--dry-run', '--json'),
    ) as { dryRun: boolean; plan: { kind: string; action: string }[] };
    assert.equal(plan.dryRun, true);
    assert.ok(plan.plan.some((p) => p.kind === 'Deployment' && p.action === 'create'));
    const table = await tern('restore', '--bundle', out, '--dry-run');
    assert.match(table, /PersistentVolumeClaim\s+data-a\s+would skip/);
  });

  test('a restore that fails part-way removes what it created', async () => {
    // The Service is created last; this transform makes the API server reject it.
    const transforms = parseTransforms([
      { kinds: ['Service'], ops: [{ op: 'replace', path: '/spec/ports/0/port', value: 70000 }] },
    ]);
    await assert.rejects(
      restoreBundle(client, bundle, { targetNamespace: 'shop-bad', transforms, pollMs: 50 }),
      (err: unknown) => {
        assert.ok(err instanceof InputError, String(err));
        assert.match(err.message, /Kubernetes rejected POST \/api\/v1\/namespaces\/shop-bad\/services/);
        assert.equal((err.details as { leftovers?: string[] }).leftovers?.length, 0);
        return true;
      },
    );
    for (const t of [cm, secret, sa, apps, widget, T.volumeSnapshot])
      assert.deepEqual(await client.list(t, 'shop-bad'), [], `no ${t.kind} left`);
    await waitFor('claims gone', async () =>
      (await client.list(T.pvc, 'shop-bad')).length === 0 ? true : undefined,
    );
    const contents = await client.list(T.volumeSnapshotContent);
    assert.ok(
      !contents.some(
        (c) =>
          (c['spec'] as { volumeSnapshotRef: { namespace: string } }).volumeSnapshotRef.namespace ===
          'shop-bad',
      ),
    );
    const ns = await client.find(T.namespace, undefined, 'shop-bad');
    assert.ok(!ns || ns.metadata.deletionTimestamp, 'namespace deleted');
  });

  test('retiring a backup deletes its CSI snapshots; restored volumes keep their data', async () => {
    const snapPath = (handle: string) =>
      platform.snapshotPath({
        id: handle,
        volumeId: '',
        region: 'east',
        sizeBytes: 0,
        createdAt: '',
        kind: 'block',
      });
    for (const v of bundle.volumes) assert.ok(fs.existsSync(snapPath(v.snapshotHandle)));
    assert.deepEqual(await deleteBackupSnapshots(client, bundle), { missing: [] });
    await waitFor('snapshots retired', async () => {
      for (const v of bundle.volumes) {
        if (await client.find(T.volumeSnapshotContent, undefined, v.volumeSnapshotContent)) return undefined;
        if (fs.existsSync(snapPath(v.snapshotHandle))) return undefined;
      }
      return true;
    });
    for (const [name, buf] of data)
      assert.ok(fs.readFileSync(await pvcPath(NS, name)).equals(buf), `${name} still intact`);
    assert.equal((await deleteBackupSnapshots(client, bundle)).missing.length, 2);
  });

  test('errors: missing snapshot class, unbound PVC, RBAC forbidden — clear errors, nothing created', async () => {
    // A namespace whose claim cannot bind (no such storage class).
    await client.create(T.namespace, obj('v1', 'Namespace', 'pending', undefined));
    await client.create(
      T.pvc,
      obj('v1', 'PersistentVolumeClaim', 'stuck', 'pending', {
        spec: {
          storageClassName: 'nope',
          accessModes: ['ReadWriteOnce'],
          resources: { requests: { storage: '1Mi' } },
        },
      }),
    );
    await assert.rejects(backupNamespace(client, 'pending'), (err: unknown) => {
      assert.ok(err instanceof ConflictError, String(err));
      assert.match(err.message, /PVC pending\/stuck is not bound \(phase Pending\)/);
      return true;
    });
    assert.equal(await snapshotsIn('pending'), 0);

    // No snapshot class marked for the driver.
    await client.mergePatch(T.volumeSnapshotClass, undefined, 'tern-local-snap', {
      metadata: { annotations: { 'tern.io/is-snapshot-class': 'false' } },
    });
    try {
      const hookRan = { n: 0 };
      const runner: HookRunner = {
        run: () => ((hookRan.n += 1), Promise.resolve({ exitCode: 0, stdout: '', stderr: '' })),
      };
      await assert.rejects(
        backupNamespace(client, NS, {
          hookRunner: runner,
          hooks: [
            { name: 'freeze', when: 'pre-snapshot', command: ['true'], timeoutSeconds: 5, onError: 'fail' },
          ],
        }),
        (err: unknown) => {
          assert.ok(err instanceof NotFoundError, String(err));
          assert.match(
            err.message,
            /no VolumeSnapshotClass for CSI driver "local\.csi\.tern\.io" .*tern\.io\/is-snapshot-class: "true"/,
          );
          return true;
        },
      );
      assert.equal(hookRan.n, 0, 'no hook runs when the backup cannot be taken');
      assert.equal(await snapshotsIn(NS), 2, 'only the two snapshots of the first backup');
    } finally {
      await client.mergePatch(T.volumeSnapshotClass, undefined, 'tern-local-snap', {
        metadata: { annotations: { 'tern.io/is-snapshot-class': 'true' } },
      });
    }

    // The limited user may read the namespace and its config maps, nothing else.
    await client.create(
      clusterRole,
      obj(clusterRole.apiVersion, 'ClusterRole', 'ns-reader', undefined, {
        rules: [{ apiGroups: [''], resources: ['namespaces'], verbs: ['get'] }],
      }),
    );
    await client.create(
      clusterRoleBinding,
      obj(clusterRoleBinding.apiVersion, 'ClusterRoleBinding', 'limited-ns-reader', undefined, {
        roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: 'ns-reader' },
        subjects: [{ kind: 'User', name: 'tern-limited', apiGroup: 'rbac.authorization.k8s.io' }],
      }),
    );
    await client.create(
      role,
      obj(role.apiVersion, 'Role', 'cm-lister', NS, {
        rules: [{ apiGroups: [''], resources: ['configmaps'], verbs: ['list'] }],
      }),
    );
    await client.create(
      roleBinding,
      obj(roleBinding.apiVersion, 'RoleBinding', 'limited-cm', NS, {
        roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: 'cm-lister' },
        subjects: [{ kind: 'User', name: 'tern-limited', apiGroup: 'rbac.authorization.k8s.io' }],
      }),
    );
    await waitFor('RBAC in effect', async () => {
      const ok = await new KubeClient(kube.kubeConfig('limited')).list(cm, NS).then(
        () => true,
        () => false,
      );
      return ok ? true : undefined;
    });
    const limited = new KubeClient(kube.kubeConfig('limited'));
    await assert.rejects(backupNamespace(limited, NS), (err: unknown) => {
      assert.ok(err instanceof ForbiddenError, String(err));
      assert.match(err.message, /not allowed to list \S+ in namespace "shop"/);
      return true;
    });
    assert.equal(await snapshotsIn(NS), 2);
    await assert.rejects(
      restoreBundle(limited, bundle, { targetNamespace: 'shop-limited' }),
      (err: unknown) => {
        assert.ok(err instanceof ForbiddenError, String(err));
        assert.match(
          err.message,
          /the restore is not allowed to: .*create namespaces.*create persistentvolumeclaims in shop-limited/,
        );
        return true;
      },
    );
    assert.equal(await client.find(T.namespace, undefined, 'shop-limited'), undefined);
  });

  // Last: it kills the API server.
  test('API server stopped mid-backup: UnavailableError, post hook still runs, no bundle', async () => {
    const seen: string[] = [];
    const runner: HookRunner = {
      run: async (hook) => {
        seen.push(hook.name);
        if (hook.name === 'freeze') await kube.killApiServer();
        return { exitCode: 0, stdout: '', stderr: '' };
      },
    };
    let result: Bundle | undefined;
    await assert.rejects(
      (async () => {
        result = await backupNamespace(new KubeClient(kube.kubeConfig(), { timeoutMs: 5000 }), NS, {
          hookRunner: runner,
          hooks: [
            { name: 'freeze', when: 'pre-snapshot', command: ['x'], timeoutSeconds: 5, onError: 'fail' },
            { name: 'thaw', when: 'post-snapshot', command: ['x'], timeoutSeconds: 5, onError: 'fail' },
          ],
        });
      })(),
      (err: unknown) => {
        assert.ok(err instanceof UnavailableError, String(err));
        assert.match(
          err.message,
          /Kubernetes API https:\/\/127\.0\.0\.1:\d+ unreachable \(POST \/apis\/snapshot\.storage\.k8s\.io\/v1\/namespaces\/shop\/volumesnapshots\)/,
        );
        return true;
      },
    );
    assert.equal(result, undefined);
    assert.deepEqual(seen, ['freeze', 'thaw']);
  });
});
