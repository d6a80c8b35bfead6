/**
 * A test stand-in for a CSI driver with its sidecars (external-provisioner, external-snapshotter) and the
 * few kube-controller-manager loops the tests need, talking to a real kube-apiserver. Volumes are served by
 * the `local` platform (block volumes = files in a region directory):
 *  - PVCs of a StorageClass whose provisioner is `driver` get a new local volume (or one restored from the
 *    VolumeSnapshot named in spec.dataSource), a CSI PersistentVolume, and both are bound;
 *  - VolumeSnapshots of a PVC get a local snapshot, a VolumeSnapshotContent whose snapshotHandle is the local
 *    snapshot id, and readyToUse; pre-provisioned contents (source.snapshotHandle) are checked and bound;
 *  - contents whose VolumeSnapshot is gone are deleted with their snapshot when their policy is Delete;
 *    PVs whose claim is gone likewise; PVC protection finalizers are removed (no pods use the claims).
 * `deleteNamespace` plays the namespace controller: delete everything in it, then finalize it.
 */
import type { KubeConfig } from '@kubernetes/client-node';
import type { LocalPlatform, SnapshotRef } from '../../src/platforms/index.ts';
import {
  KubeClient,
  KubeTypes as T,
  discover,
  type KubeObject,
} from '../../src/platforms/kubernetes/index.ts';
import { describeError } from '../../src/core/index.ts';

export interface CsiControllerOptions {
  kc: KubeConfig;
  platform: LocalPlatform;
  region: string;
  driver: string;
  pollMs?: number;
}

function quantityBytes(q: string | undefined): number {
  const m = /^(\d+)(Ki|Mi|Gi|k|M|G)?$/.exec(q ?? '');
  if (!m) return 0;
  const mult: Record<string, number> = {
    '': 1,
    Ki: 1024,
    Mi: 1024 ** 2,
    Gi: 1024 ** 3,
    k: 1e3,
    M: 1e6,
    G: 1e9,
  };
  return Number(m[1]) * (mult[m[2] ?? ''] ?? 1);
}

const snapRef = (id: string, region: string): SnapshotRef => ({
  id,
  volumeId: '',
  region,
  sizeBytes: 0,
  createdAt: '',
  kind: 'block',
});

type Obj = KubeObject & { spec?: Record<string, unknown>; status?: Record<string, unknown> };

export class TestCsiController {
  readonly client: KubeClient;
  readonly errors: string[] = [];
  private readonly o: CsiControllerOptions;
  private running = false;
  private loop: Promise<void> | undefined;
  private wake: (() => void) | undefined;

  constructor(o: CsiControllerOptions) {
    this.o = o;
    this.client = new KubeClient(o.kc, { timeoutMs: 5000 });
  }

  start(): void {
    this.running = true;
    this.loop = (async () => {
      while (this.running) {
        try {
          await this.reconcile();
        } catch (err) {
          this.note(`reconcile: ${describeError(err)}`);
        }
        await new Promise<void>((r) => {
          this.wake = r;
          setTimeout(r, this.o.pollMs ?? 100);
        });
      }
    })();
  }

  async stop(): Promise<void> {
    this.running = false;
    this.wake?.();
    await this.loop;
  }

  private note(msg: string): void {
    this.errors.push(msg);
    if (this.errors.length > 50) this.errors.shift();
  }

  async reconcile(): Promise<void> {
    const c = this.client;
    const classes = (await c.list(T.storageClass)).filter((sc) => sc['provisioner'] === this.o.driver);
    const pvcs = (await c.list(T.pvc)) as Obj[];
    const pvs = (await c.list(T.pv)) as Obj[];
    for (const pvc of pvcs) {
      try {
        if (pvc.metadata.deletionTimestamp) await this.releaseClaim(pvc);
        else if (!pvc.spec?.['volumeName']) {
          const sc = classes.find((k) => k.metadata.name === pvc.spec?.['storageClassName']);
          if (sc) await this.provision(pvc, sc);
        }
      } catch (err) {
        this.note(`pvc ${pvc.metadata.namespace}/${pvc.metadata.name}: ${describeError(err)}`);
      }
    }
    for (const pv of pvs) {
      try {
        await this.reclaim(pv, pvcs);
      } catch (err) {
        this.note(`pv ${pv.metadata.name}: ${describeError(err)}`);
      }
    }
    const snaps = (await c.list(T.volumeSnapshot).catch(() => [])) as Obj[];
    for (const vs of snaps) {
      if (vs.status?.['readyToUse'] || vs.status?.['error']) continue;
      try {
        await this.snapshot(vs);
      } catch (err) {
        this.note(`vs ${vs.metadata.namespace}/${vs.metadata.name}: ${describeError(err)}`);
      }
    }
    const contents = (await c.list(T.volumeSnapshotContent).catch(() => [])) as Obj[];
    for (const content of contents) {
      try {
        await this.reclaimContent(content, snaps);
      } catch (err) {
        this.note(`content ${content.metadata.name}: ${describeError(err)}`);
      }
    }
  }

  private async provision(pvc: Obj, sc: KubeObject): Promise<void> {
    const { platform, region, driver } = this.o;
    const c = this.client;
    const ns = pvc.metadata.namespace!;
    const pvName = `pvc-${pvc.metadata.uid}`;
    const request = (pvc.spec?.['resources'] as { requests?: { storage?: string } } | undefined)?.requests
      ?.storage;
    const ds = pvc.spec?.['dataSource'] as { kind?: string; name?: string } | undefined;
    if (!(await c.find(T.pv, undefined, pvName))) {
      let volumeId: string;
      const existing = (await platform.listVolumes(region)).find((v) => v.name === pvName);
      if (existing) volumeId = existing.id;
      else if (ds?.kind === 'VolumeSnapshot' && ds.name) {
        const vs = (await c.find(T.volumeSnapshot, ns, ds.name)) as Obj | undefined;
        const bound = vs?.status?.['boundVolumeSnapshotContentName'] as string | undefined;
        if (!vs?.status?.['readyToUse'] || !bound) return; // not ready yet: next round
        const content = (await c.get(T.volumeSnapshotContent, undefined, bound)) as Obj;
        const handle = content.status?.['snapshotHandle'] as string;
        volumeId = (await platform.restoreVolume(snapRef(handle, region), { name: pvName, region })).id;
      } else {
        volumeId = (
          await platform.createVolume(region, pvName, { kind: 'block', sizeBytes: quantityBytes(request) })
        ).id;
      }
      await c.create(T.pv, {
        apiVersion: 'v1',
        kind: 'PersistentVolume',
        metadata: { name: pvName, annotations: { 'pv.kubernetes.io/provisioned-by': driver } },
        spec: {
          capacity: { storage: request ?? '0' },
          accessModes: pvc.spec?.['accessModes'] ?? ['ReadWriteOnce'],
          persistentVolumeReclaimPolicy: (sc['reclaimPolicy'] as string | undefined) ?? 'Delete',
          storageClassName: sc.metadata.name,
          volumeMode: pvc.spec?.['volumeMode'] ?? 'Filesystem',
          csi: { driver, volumeHandle: volumeId },
          claimRef: {
            apiVersion: 'v1',
            kind: 'PersistentVolumeClaim',
            namespace: ns,
            name: pvc.metadata.name,
            uid: pvc.metadata.uid,
          },
        },
      });
    }
    const pv = await c.get(T.pv, undefined, pvName);
    await c.replaceStatus(T.pv, { ...pv, status: { phase: 'Bound' } });
    const fresh = (await c.get(T.pvc, ns, pvc.metadata.name)) as Obj;
    fresh.spec = { ...fresh.spec, volumeName: pvName };
    fresh.metadata.annotations = {
      ...fresh.metadata.annotations,
      'pv.kubernetes.io/bind-completed': 'yes',
      'pv.kubernetes.io/bound-by-controller': 'yes',
      'volume.kubernetes.io/storage-provisioner': driver,
    };
    const updated = (await c.replace(T.pvc, fresh)) as Obj;
    await c.replaceStatus(T.pvc, {
      ...updated,
      status: {
        phase: 'Bound',
        accessModes: updated.spec?.['accessModes'],
        capacity: { storage: request ?? '0' },
      },
    });
  }

  private async releaseClaim(pvc: Obj): Promise<void> {
    const f = pvc.metadata.finalizers ?? [];
    if (!f.includes('kubernetes.io/pvc-protection')) return;
    await this.client.mergePatch(T.pvc, pvc.metadata.namespace, pvc.metadata.name, {
      metadata: {
        finalizers: f.filter((x) => x !== 'kubernetes.io/pvc-protection'),
        resourceVersion: pvc.metadata.resourceVersion,
      },
    });
  }

  private async reclaim(pv: Obj, pvcs: Obj[]): Promise<void> {
    const csi = pv.spec?.['csi'] as { driver?: string; volumeHandle?: string } | undefined;
    if (csi?.driver !== this.o.driver) return;
    const ref = pv.spec?.['claimRef'] as { namespace?: string; name?: string; uid?: string } | undefined;
    if (!ref) return;
    if (pvcs.some((p) => p.metadata.uid === ref.uid)) return;
    if (pv.spec?.['persistentVolumeReclaimPolicy'] === 'Delete') {
      const name = csi.volumeHandle!.split('/')[1]!;
      const vol = (await this.o.platform.listVolumes(this.o.region)).find((v) => v.name === name);
      if (vol) await this.o.platform.deleteVolume(vol);
      await this.client.delete(T.pv, undefined, pv.metadata.name);
    } else if (pv.status?.['phase'] !== 'Released') {
      await this.client.replaceStatus(T.pv, { ...pv, status: { phase: 'Released' } });
    }
  }

  private async snapshot(vs: Obj): Promise<void> {
    const { platform, region, driver } = this.o;
    const c = this.client;
    const ns = vs.metadata.namespace!;
    const source = vs.spec?.['source'] as {
      persistentVolumeClaimName?: string;
      volumeSnapshotContentName?: string;
    };
    const className = vs.spec?.['volumeSnapshotClassName'] as string | undefined;
    const cls = className ? await c.find(T.volumeSnapshotClass, undefined, className) : undefined;
    if (!cls || cls['driver'] !== driver) return;
    const setError = (message: string) =>
      c.replaceStatus(T.volumeSnapshot, {
        ...vs,
        status: { readyToUse: false, error: { message, time: new Date().toISOString() } },
      });
    let content: Obj;
    if (source.volumeSnapshotContentName) {
      content = (await c.get(T.volumeSnapshotContent, undefined, source.volumeSnapshotContentName)) as Obj;
      const handle = (content.spec?.['source'] as { snapshotHandle?: string }).snapshotHandle;
      if (!handle) return setError('pre-provisioned content has no snapshotHandle').then(() => undefined);
      let size: number;
      try {
        const r = await platform.openSnapshot(snapRef(handle, region));
        size = r.size;
        await r.close();
      } catch (err) {
        await setError(`snapshot ${handle} not found: ${describeError(err)}`);
        return;
      }
      content.spec = {
        ...content.spec,
        volumeSnapshotRef: { ...(content.spec?.['volumeSnapshotRef'] as object), uid: vs.metadata.uid },
      };
      content = (await c.replace(T.volumeSnapshotContent, content)) as Obj;
      content = (await c.replaceStatus(T.volumeSnapshotContent, {
        ...content,
        status: {
          snapshotHandle: handle,
          readyToUse: true,
          restoreSize: size,
          creationTime: Date.now() * 1e6,
        },
      })) as Obj;
    } else {
      const pvc = (await c.find(T.pvc, ns, source.persistentVolumeClaimName!)) as Obj | undefined;
      const pvName = pvc?.spec?.['volumeName'] as string | undefined;
      if (!pvc || !pvName) return setError('the PVC is not bound').then(() => undefined);
      const pv = (await c.get(T.pv, undefined, pvName)) as Obj;
      const handle = (pv.spec?.['csi'] as { volumeHandle: string }).volumeHandle;
      const contentName = `snapcontent-${vs.metadata.uid}`;
      let found = (await c.find(T.volumeSnapshotContent, undefined, contentName)) as Obj | undefined;
      if (!found?.status?.['snapshotHandle']) {
        const vol = (await platform.listVolumes(region)).find((v) => v.id === handle);
        if (!vol) return setError(`volume ${handle} not found`).then(() => undefined);
        const snap = await platform.snapshot(vol);
        found ??= (await c.create(T.volumeSnapshotContent, {
          apiVersion: T.volumeSnapshotContent.apiVersion,
          kind: 'VolumeSnapshotContent',
          metadata: { name: contentName },
          spec: {
            deletionPolicy: cls['deletionPolicy'],
            driver,
            source: { volumeHandle: handle },
            volumeSnapshotClassName: className,
            volumeSnapshotRef: {
              apiVersion: vs.apiVersion,
              kind: 'VolumeSnapshot',
              name: vs.metadata.name,
              namespace: ns,
              uid: vs.metadata.uid,
            },
          },
        })) as Obj;
        found = (await c.replaceStatus(T.volumeSnapshotContent, {
          ...found,
          status: {
            snapshotHandle: snap.id,
            readyToUse: true,
            restoreSize: snap.sizeBytes,
            creationTime: Date.now() * 1e6,
          },
        })) as Obj;
      }
      content = found;
    }
    const fresh = await c.get(T.volumeSnapshot, ns, vs.metadata.name);
    await c.replaceStatus(T.volumeSnapshot, {
      ...fresh,
      status: {
        boundVolumeSnapshotContentName: content.metadata.name,
        readyToUse: true,
        restoreSize: String(content.status?.['restoreSize'] ?? 0),
        creationTime: new Date().toISOString(),
      },
    });
  }

  private async reclaimContent(content: Obj, snaps: Obj[]): Promise<void> {
    if (content.spec?.['driver'] !== this.o.driver || !content.status?.['readyToUse']) return;
    const ref = content.spec?.['volumeSnapshotRef'] as { uid?: string } | undefined;
    if (!ref?.uid || snaps.some((s) => s.metadata.uid === ref.uid)) return;
    if (content.spec?.['deletionPolicy'] !== 'Delete') return;
    const handle = content.status['snapshotHandle'] as string;
    await this.o.platform.deleteSnapshot(snapRef(handle, this.o.region)).catch(() => undefined);
    await this.client.delete(T.volumeSnapshotContent, undefined, content.metadata.name);
  }
}

/** Plays the namespace controller: deletes every object in the namespace, waits, then finalizes it. */
export async function deleteNamespace(kc: KubeConfig, ns: string, timeoutMs = 60_000): Promise<void> {
  const c = new KubeClient(kc);
  const { types } = await discover(c);
  const namespaced = types.filter(
    (t) => t.namespaced && t.verbs.includes('deletecollection') && t.verbs.includes('list'),
  );
  const deadline = Date.now() + timeoutMs;
  await c.delete(T.namespace, undefined, ns);
  for (;;) {
    let left = 0;
    for (const t of namespaced) {
      const items = await c.list(t, ns).catch(() => []);
      left += items.length;
      if (items.length > 0) await c.request('DELETE', KubeClient.path(t, ns), {}).catch(() => undefined);
    }
    if (left === 0) break;
    if (Date.now() > deadline) throw new Error(`namespace ${ns} still has ${left} objects`);
    await new Promise((r) => setTimeout(r, 100));
  }
  const nsObj = await c.find(T.namespace, undefined, ns);
  if (nsObj) {
    await c.request('PUT', `/api/v1/namespaces/${ns}/finalize`, {
      body: { ...nsObj, spec: { finalizers: [] } },
    });
  }
  while (await c.find(T.namespace, undefined, ns)) {
    if (Date.now() > deadline) throw new Error(`namespace ${ns} not gone`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
