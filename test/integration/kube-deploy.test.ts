/**
 * The deploy/ artifacts against a real kube-apiserver: Tern CRDs install and validate (CEL rules, status
 * subresources), the plain manifests and the Helm chart (rendered by a helm built from the Go module proxy)
 * pass a server-side dry run, and the RBAC grants what the controller needs and no more.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import YAML from 'yaml';
import { ForbiddenError, InputError } from '../../src/core/index.ts';
import {
  KubeClient,
  KubeTypes as T,
  discover,
  typeFor,
  type KubeObject,
  type ResourceType,
} from '../../src/platforms/kubernetes/index.ts';
import { installCrdDir, kubeSkipReason, startKube, type Kube } from '../harness/kube.ts';

const ROOT = path.resolve(import.meta.dirname, '..', '..');
const DEPLOY = path.join(ROOT, 'deploy');
const skip = kubeSkipReason();
const peers = process.env['TERN_PEERS_DIR'] ?? path.join(os.homedir(), '.cache', 'tern-peers');
const HELM = path.join(peers, 'helm', 'bin', 'helm');

const tern = (kind: string, plural: string): ResourceType => ({
  group: 'tern.io',
  version: 'v1alpha1',
  apiVersion: 'tern.io/v1alpha1',
  kind,
  plural,
  namespaced: true,
  verbs: [],
});
const profiles = tern('Profile', 'profiles');
const policies = tern('Policy', 'policies');
const restorePoints = tern('RestorePoint', 'restorepoints');
const restoreActions = tern('RestoreAction', 'restoreactions');

function docs(text: string): KubeObject[] {
  return YAML.parseAllDocuments(text)
    .map((d) => d.toJS() as KubeObject | null)
    .filter((d): d is KubeObject => !!d && typeof d === 'object' && 'kind' in d);
}

describe('deploy: Tern CRDs, manifests and Helm chart (real kube-apiserver)', { skip }, () => {
  let kube: Kube;
  let client: KubeClient;

  before(async () => {
    kube = await startKube();
    client = new KubeClient(kube.kubeConfig());
  });
  after(async () => {
    await kube?.stop();
  });

  /** Server-side dry run of every object (namespaces created for real first); returns the kinds. */
  async function dryRunAll(objects: KubeObject[]): Promise<string[]> {
    const { types } = await discover(client);
    const kinds: string[] = [];
    for (const o of objects.filter((x) => x.kind === 'Namespace')) {
      if (!(await client.find(T.namespace, undefined, o.metadata.name))) await client.create(T.namespace, o);
      kinds.push('Namespace');
    }
    for (const o of objects.filter((x) => x.kind !== 'Namespace')) {
      const t = typeFor(types, o.apiVersion, o.kind);
      assert.ok(t, `type of ${o.apiVersion} ${o.kind}`);
      const out = await client.create(t, o, { dryRun: true });
      assert.equal(out.metadata.name, o.metadata.name);
      assert.equal(
        await client.find(t, o.metadata.namespace, o.metadata.name),
        undefined,
        'dry run created nothing',
      );
      kinds.push(o.kind);
    }
    return kinds.sort();
  }

  test('CRDs install, validate with CEL and have status subresources', async () => {
    const names = await installCrdDir(kube.kubeConfig(), path.join(DEPLOY, 'crds'));
    assert.deepEqual(names.sort(), [
      'policies.tern.io',
      'profiles.tern.io',
      'restoreactions.tern.io',
      'restorepoints.tern.io',
    ]);
    for (const f of fs.readdirSync(path.join(DEPLOY, 'crds')))
      assert.equal(
        fs.readFileSync(path.join(DEPLOY, 'helm', 'tern', 'crds', f), 'utf8'),
        fs.readFileSync(path.join(DEPLOY, 'crds', f), 'utf8'),
        `helm chart carries the same ${f}`,
      );
    await client.create(T.namespace, { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'apps' } });
    const meta = (name: string) => ({ name, namespace: 'apps' });
    await client.create(profiles, {
      apiVersion: 'tern.io/v1alpha1',
      kind: 'Profile',
      metadata: meta('offsite'),
      spec: { kind: 'location', url: 's3://bucket/tern', secretRef: { name: 'offsite-keys' } },
    });
    await assert.rejects(
      client.create(profiles, {
        apiVersion: 'tern.io/v1alpha1',
        kind: 'Profile',
        metadata: meta('broken'),
        spec: { kind: 'location' },
      }),
      (err: unknown) => err instanceof InputError && /a location profile needs url/.test(err.message),
    );
    const policy = await client.create(policies, {
      apiVersion: 'tern.io/v1alpha1',
      kind: 'Policy',
      metadata: meta('shop-daily'),
      spec: {
        app: { namespace: 'shop' },
        frequency: '@daily',
        retention: { daily: 7, weekly: 4 },
        export: { mode: 'datamover', locationProfile: 'offsite' },
        hooks: [{ name: 'flush', when: 'pre-snapshot', command: ['sync'] }],
      },
    });
    assert.equal((policy['spec'] as { paused: boolean }).paused, false, 'defaults applied');
    assert.equal((policy['spec'] as { retention: { latest: number } }).retention.latest, 1);
    await assert.rejects(
      client.create(policies, {
        apiVersion: 'tern.io/v1alpha1',
        kind: 'Policy',
        metadata: meta('bad-export'),
        spec: { app: { namespace: 'shop' }, frequency: '@daily', export: { mode: 'snapshot-copy' } },
      }),
      (err: unknown) => err instanceof InputError && /snapshot-copy export needs region/.test(err.message),
    );
    const rp = await client.create(restorePoints, {
      apiVersion: 'tern.io/v1alpha1',
      kind: 'RestorePoint',
      metadata: meta('shop-20260101'),
      spec: {
        app: 'shop',
        policy: 'shop-daily',
        consistentAt: '2026-01-01T00:00:00Z',
        sizeBytes: 6291456,
        volumes: [{ pvc: 'data-a', snapshotHandle: 'east/pvc-1/snap' }],
      },
    });
    await assert.rejects(
      client.replace(restorePoints, { ...rp, spec: { ...(rp['spec'] as object), sizeBytes: 1 } }),
      (err: unknown) => err instanceof InputError && /a restore point is immutable/.test(err.message),
    );
    const ra = await client.create(restoreActions, {
      apiVersion: 'tern.io/v1alpha1',
      kind: 'RestoreAction',
      metadata: meta('restore-1'),
      spec: {
        restorePoint: 'shop-20260101',
        targetNamespace: 'shop-dr',
        transforms: [
          {
            kinds: ['PersistentVolumeClaim'],
            ops: [{ op: 'replace', path: '/spec/storageClassName', value: 'fast' }],
          },
        ],
      },
    });
    // Status only through the subresource: a write to the object ignores it, the subresource keeps it.
    await client.replace(restoreActions, { ...ra, status: { state: 'Complete' } });
    assert.equal((await client.get(restoreActions, 'apps', 'restore-1'))['status'], undefined);
    const cur = await client.get(restoreActions, 'apps', 'restore-1');
    await client.replaceStatus(restoreActions, {
      ...cur,
      status: { state: 'Running', attempt: 1, phases: [{ name: 'plan', startedAt: '2026-01-01T00:00:00Z' }] },
    });
    assert.equal(
      ((await client.get(restoreActions, 'apps', 'restore-1'))['status'] as { state: string }).state,
      'Running',
    );
    await assert.rejects(
      client.replaceStatus(restoreActions, {
        ...(await client.get(restoreActions, 'apps', 'restore-1')),
        status: { state: 'Exploded' },
      }),
      InputError,
    );
  });

  test('plain manifests: server-side dry run, and the RBAC is least privilege', async () => {
    const objects = docs(fs.readFileSync(path.join(DEPLOY, 'manifests', 'tern.yaml'), 'utf8'));
    const kinds = await dryRunAll(objects);
    assert.deepEqual(kinds, [
      'ClusterRole',
      'ClusterRole',
      'ClusterRoleBinding',
      'ClusterRoleBinding',
      'Deployment',
      'Namespace',
      'Role',
      'RoleBinding',
      'Service',
      'ServiceAccount',
    ]);
    // Bind for real, then ask the API server what the service account may do.
    const { types } = await discover(client);
    for (const o of objects.filter((x) => /Role/.test(x.kind)))
      await client.create(typeFor(types, o.apiVersion, o.kind)!, o);
    const can = async (
      verb: string,
      group: string,
      resource: string,
      namespace?: string,
      subresource?: string,
    ) => {
      const r = await client.request<{ status: { allowed: boolean } }>(
        'POST',
        '/apis/authorization.k8s.io/v1/subjectaccessreviews',
        {
          body: {
            apiVersion: 'authorization.k8s.io/v1',
            kind: 'SubjectAccessReview',
            spec: {
              user: 'system:serviceaccount:tern-system:tern',
              groups: [
                'system:serviceaccounts',
                'system:serviceaccounts:tern-system',
                'system:authenticated',
              ],
              resourceAttributes: { verb, group, resource, namespace, subresource },
            },
          },
        },
      );
      return r.status.allowed;
    };
    assert.equal(await can('list', 'apps', 'deployments', 'shop'), true);
    assert.equal(await can('get', '', 'secrets', 'shop'), true);
    assert.equal(await can('create', 'snapshot.storage.k8s.io', 'volumesnapshots', 'shop'), true);
    assert.equal(await can('patch', 'snapshot.storage.k8s.io', 'volumesnapshotcontents'), true);
    assert.equal(await can('update', 'tern.io', 'restoreactions', 'apps', 'status'), true);
    assert.equal(await can('create', 'apps', 'deployments', 'shop'), true, 'restore');
    assert.equal(await can('delete', 'apps', 'deployments', 'shop'), false, 'never deletes applications');
    assert.equal(await can('delete', '', 'secrets', 'shop'), false);
    assert.equal(await can('patch', 'apps', 'deployments', 'shop'), false);
    assert.equal(await can('escalate', 'rbac.authorization.k8s.io', 'clusterroles'), false);
    // Leader election: get/create/update the Lease in Tern's namespace, nothing more.
    for (const verb of ['get', 'create', 'update'])
      assert.equal(await can(verb, 'coordination.k8s.io', 'leases', 'tern-system'), true, verb);
    assert.equal(await can('delete', 'coordination.k8s.io', 'leases', 'tern-system'), false);
    assert.equal(await can('delete', 'coordination.k8s.io', 'leases', 'kube-system'), false);
  });

  test('Helm chart: rendered by helm, server-side dry run, same objects as the plain manifests', async (t) => {
    if (!fs.existsSync(HELM)) return t.skip(`helm not built (${HELM}): run scripts/peers.d/31-helm.sh`);
    const rendered = execFileSync(
      HELM,
      ['template', 'tern-chart', path.join(DEPLOY, 'helm', 'tern'), '--namespace', 'tern-helm'],
      { encoding: 'utf8' },
    );
    const objects = docs(rendered);
    await client.create(T.namespace, {
      apiVersion: 'v1',
      kind: 'Namespace',
      metadata: { name: 'tern-helm' },
    });
    const kinds = await dryRunAll(objects);
    const plain = docs(fs.readFileSync(path.join(DEPLOY, 'manifests', 'tern.yaml'), 'utf8'))
      .map((o) => o.kind)
      .filter((k) => k !== 'Namespace')
      .sort();
    assert.deepEqual(kinds, plain);
    const dep = objects.find((o) => o.kind === 'Deployment')!;
    assert.match(JSON.stringify(dep), /ghcr\.io\/tern-backup\/tern:0\.1\.0/);
    // Values switch parts off.
    const noRestore = docs(
      execFileSync(
        HELM,
        [
          'template',
          'tern-chart',
          path.join(DEPLOY, 'helm', 'tern'),
          '--namespace',
          'tern-helm',
          '--set',
          'rbac.clusterWideRestore=false',
        ],
        { encoding: 'utf8' },
      ),
    );
    assert.ok(
      !noRestore.some((o) => o.kind === 'ClusterRoleBinding' && o.metadata.name === 'tern-chart-restore'),
    );
    assert.ok(noRestore.some((o) => o.kind === 'ClusterRole' && o.metadata.name === 'tern-chart-restore'));
  });

  test('the limited user cannot dry-run the manifests (RBAC enforced on dry runs too)', async () => {
    const limited = new KubeClient(kube.kubeConfig('limited'));
    const sa = docs(fs.readFileSync(path.join(DEPLOY, 'manifests', 'tern.yaml'), 'utf8')).find(
      (o) => o.kind === 'ServiceAccount',
    )!;
    await assert.rejects(
      limited.create(
        {
          group: '',
          version: 'v1',
          apiVersion: 'v1',
          kind: 'ServiceAccount',
          plural: 'serviceaccounts',
          namespaced: true,
          verbs: [],
        },
        sa,
        { dryRun: true },
      ),
      ForbiddenError,
    );
  });
});
