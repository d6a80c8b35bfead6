/** Restore transforms (JSON Patch by kind + name regex) and capture sanitizing, without a server. */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { InputError } from '../../src/core/index.ts';
import {
  applyTransforms,
  parseBundle,
  parseHooks,
  parseTransforms,
  sanitize,
  skipReason,
  type KubeObject,
} from '../../src/platforms/kubernetes/index.ts';

const pvc = (name: string, sc = 'standard'): KubeObject => ({
  apiVersion: 'v1',
  kind: 'PersistentVolumeClaim',
  metadata: { name, namespace: 'shop', labels: { tier: 'db' } },
  spec: { storageClassName: sc, accessModes: ['ReadWriteOnce'], resources: { requests: { storage: '1Gi' } } },
});

describe('transforms', () => {
  test('selected by kind and whole-name regex; RFC 6902 ops', () => {
    const ts = parseTransforms([
      {
        kinds: ['PersistentVolumeClaim'],
        name: 'data-.*',
        ops: [{ op: 'replace', path: '/spec/storageClassName', value: 'fast' }],
      },
      {
        kinds: ['PersistentVolumeClaim'],
        ops: [{ op: 'add', path: '/spec/accessModes/-', value: 'ReadOnlyMany' }],
      },
      {
        labelSelector: { tier: 'db' },
        ops: [
          { op: 'add', path: '/metadata/labels/restored', value: 'yes' },
          { op: 'remove', path: '/metadata/labels/tier' },
        ],
      },
      {
        name: 'data-a',
        ops: [{ op: 'copy', from: '/spec/storageClassName', path: '/metadata/labels/sc' }],
      },
    ]);
    const a = applyTransforms(pvc('data-a'), ts);
    assert.deepEqual(a.applied, [0, 1, 2, 3]);
    assert.equal((a.object['spec'] as { storageClassName: string }).storageClassName, 'fast');
    assert.deepEqual((a.object['spec'] as { accessModes: string[] }).accessModes, [
      'ReadWriteOnce',
      'ReadOnlyMany',
    ]);
    assert.deepEqual(a.object.metadata.labels, { restored: 'yes', sc: 'fast' });
    // "xdata-a" does not match "data-.*" as a whole name.
    const x = applyTransforms(pvc('xdata-a'), ts);
    assert.equal((x.object['spec'] as { storageClassName: string }).storageClassName, 'standard');
    assert.deepEqual(x.applied, [1, 2]);
  });

  test('a failing test op skips the transform; other failures name the object', () => {
    const ts = parseTransforms([
      {
        ops: [
          { op: 'test', path: '/spec/storageClassName', value: 'standard' },
          { op: 'replace', path: '/spec/storageClassName', value: 'premium' },
        ],
      },
    ]);
    assert.equal(
      (applyTransforms(pvc('a', 'standard'), ts).object['spec'] as { storageClassName: string })
        .storageClassName,
      'premium',
    );
    assert.deepEqual(applyTransforms(pvc('b', 'other'), ts).applied, []);
    const bad = parseTransforms([{ ops: [{ op: 'replace', path: '/spec/nothing/here', value: 1 }] }]);
    assert.throws(
      () => applyTransforms(pvc('c'), bad),
      (err: unknown) =>
        err instanceof InputError &&
        /transform #1 cannot be applied to PersistentVolumeClaim c/.test(err.message),
    );
    // The input object is never modified.
    const orig = pvc('d');
    applyTransforms(orig, parseTransforms([{ ops: [{ op: 'remove', path: '/spec' }] }]));
    assert.ok(orig['spec']);
  });

  test('invalid transforms and hooks are InputErrors', () => {
    assert.throws(() => parseTransforms([{ ops: [] }]), InputError);
    assert.throws(() => parseTransforms([{ ops: [{ op: 'frobnicate', path: '/a' }] }]), InputError);
    assert.throws(
      () => parseTransforms([{ name: '(', ops: [{ op: 'remove', path: '/a' }] }]),
      /invalid transform name regex/,
    );
    assert.throws(() => parseHooks([{ name: 'x', when: 'later', command: ['true'] }]), InputError);
    assert.equal(parseHooks([{ name: 'x', when: 'pre-snapshot', command: ['true'] }])[0]!.timeoutSeconds, 60);
    assert.throws(() => parseBundle('{"format":"other"}'), InputError);
    assert.throws(() => parseBundle('not json'), /not valid JSON/);
  });
});

describe('sanitize', () => {
  test('server fields go, user fields stay; unresolvable owner references dropped', () => {
    const svc: KubeObject = {
      apiVersion: 'v1',
      kind: 'Service',
      metadata: {
        name: 'web',
        namespace: 'shop',
        uid: 'u1',
        resourceVersion: '5',
        generation: 1,
        creationTimestamp: '2026-01-01T00:00:00Z',
        managedFields: [],
        labels: { app: 'web' },
        ownerReferences: [
          { apiVersion: 'x/v1', kind: 'Owner', name: 'kept', uid: 'in-capture' },
          { apiVersion: 'x/v1', kind: 'Owner', name: 'gone', uid: 'elsewhere' },
        ],
      },
      spec: { clusterIP: '10.0.0.7', clusterIPs: ['10.0.0.7'], ports: [{ port: 80 }] },
      status: { loadBalancer: {} },
    };
    const s = sanitize(svc, new Set(['in-capture']));
    assert.deepEqual(s, {
      apiVersion: 'v1',
      kind: 'Service',
      metadata: {
        name: 'web',
        namespace: 'shop',
        labels: { app: 'web' },
        ownerReferences: [{ apiVersion: 'x/v1', kind: 'Owner', name: 'kept', uid: 'in-capture' }],
      },
      spec: { ports: [{ port: 80 }] },
    });
    const headless = sanitize({ ...svc, spec: { clusterIP: 'None' } }, new Set());
    assert.equal((headless['spec'] as { clusterIP: string }).clusterIP, 'None');
  });

  test('what the cluster makes by itself is skipped', () => {
    const uids = new Set(['dep-uid']);
    const o = (
      kind: string,
      name: string,
      extra: Record<string, unknown> = {},
      meta: Record<string, unknown> = {},
    ): KubeObject => ({ apiVersion: 'v1', kind, metadata: { name, ...meta }, ...extra });
    assert.match(skipReason(o('ConfigMap', 'kube-root-ca.crt'), uids)!, /cluster/);
    assert.match(
      skipReason(o('Secret', 'sa-token', { type: 'kubernetes.io/service-account-token' }), uids)!,
      /token/,
    );
    assert.match(
      skipReason(
        o(
          'ReplicaSet',
          'web-1',
          {},
          {
            ownerReferences: [
              { apiVersion: 'apps/v1', kind: 'Deployment', name: 'web', uid: 'dep-uid', controller: true },
            ],
          },
        ),
        uids,
      )!,
      /owned by Deployment\/web/,
    );
    assert.equal(
      skipReason(
        o(
          'ReplicaSet',
          'orphan',
          {},
          {
            ownerReferences: [
              { apiVersion: 'apps/v1', kind: 'Deployment', name: 'x', uid: 'other', controller: true },
            ],
          },
        ),
        uids,
      ),
      undefined,
    );
    assert.equal(skipReason(o('Secret', 'db', { type: 'Opaque' }), uids), undefined);
  });
});
