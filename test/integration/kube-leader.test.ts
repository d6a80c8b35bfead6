/**
 * Leader election for the in-cluster reconcilers against a real kube-apiserver: a coordination.k8s.io/v1
 * Lease, one holder at a time, takeover only after the lease duration without renewal, release on stop.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ManualClock } from '../../src/core/index.ts';
import { LeaderElector, LeaseType, leaderGated } from '../../src/engine/kube/leader.ts';
import { RestoreActionReconciler, TernTypes } from '../../src/engine/kube/reconciler.ts';
import { KubeClient, KubeTypes as T } from '../../src/platforms/kubernetes/index.ts';
import { installCrdDir, kubeSkipReason, startKube, type Kube } from '../harness/kube.ts';

const ROOT = path.resolve(import.meta.dirname, '..', '..');
const NS = 'tern-system';
const skip = kubeSkipReason();

describe('leader election (real kube-apiserver)', { skip }, () => {
  let kube: Kube;
  let client: KubeClient;

  before(async () => {
    kube = await startKube();
    client = new KubeClient(kube.kubeConfig());
    await installCrdDir(kube.kubeConfig(), path.join(ROOT, 'deploy', 'crds'));
    await client.create(T.namespace, { apiVersion: 'v1', kind: 'Namespace', metadata: { name: NS } });
  });
  after(async () => {
    await kube?.stop();
  });

  const holder = async (name: string): Promise<string | undefined> =>
    ((await client.get(LeaseType, NS, name))['spec'] as { holderIdentity?: string }).holderIdentity;

  test('injected clock: one holder; takeover only after a lease duration without renewal; release', async () => {
    const clock = new ManualClock(Date.UTC(2026, 5, 1));
    const events: string[] = [];
    const mk = (id: string) =>
      new LeaderElector({
        client,
        namespace: NS,
        name: 'manual',
        identity: id,
        leaseDurationMs: 15_000,
        clock,
        onStartedLeading: () => void events.push(`${id} leads`),
        onStoppedLeading: () => void events.push(`${id} stops`),
      });
    const a = mk('a');
    const b = mk('b');
    assert.equal(await a.tick(), true);
    assert.equal(await b.tick(), false);
    assert.equal(await holder('manual'), 'a');
    // a renews; b keeps seeing a changing record, so it never takes over.
    for (let i = 0; i < 5; i++) {
      clock.advance(10_000);
      assert.equal(await a.tick(), true);
      assert.equal(await b.tick(), false);
    }
    // a stops renewing (hung or dead): b waits a full lease duration from when it last saw a change.
    clock.advance(14_000);
    assert.equal(await b.tick(), false);
    clock.advance(1_000);
    assert.equal(await b.tick(), true);
    assert.equal(await holder('manual'), 'b');
    const lease = (await client.get(LeaseType, NS, 'manual'))['spec'] as { leaseTransitions: number };
    assert.equal(lease.leaseTransitions, 1);
    // a comes back: the lease is b's, and a has not renewed for longer than its renew deadline → steps down.
    assert.equal(await a.tick(), false);
    assert.equal(a.isLeader, false);
    // b stops cleanly: the lease is released, and a takes it on its next try without waiting.
    await b.stop();
    assert.equal(await holder('manual'), '');
    assert.equal(await a.tick(), true);
    assert.deepEqual(events, ['a leads', 'b leads', 'a stops', 'b stops', 'a leads']);
  });

  test('two reconciler replicas: only the leader acts; the other takes over within the lease duration', async () => {
    const leaseMs = 2000;
    const logs: Record<string, string[]> = { r1: [], r2: [], r3: [] };
    const replica = (id: string) => {
      const log = (line: string) => void logs[id]!.push(line);
      const rec = new RestoreActionReconciler({ client, namespace: NS, pollMs: 100, log });
      return leaderGated(
        { client, namespace: NS, identity: id, leaseDurationMs: leaseMs, retryPeriodMs: 100, log },
        [rec],
      );
    };
    const r1 = replica('r1');
    const r2 = replica('r2');
    r1.start();
    await new Promise((r) => setTimeout(r, 300));
    r2.start();
    const action = async (name: string) => {
      await client.create(TernTypes.restoreAction, {
        apiVersion: TernTypes.restoreAction.apiVersion,
        kind: 'RestoreAction',
        metadata: { name, namespace: NS },
        spec: { restorePoint: 'missing' },
      });
      for (let i = 0; ; i++) {
        const st = (await client.get(TernTypes.restoreAction, NS, name))['status'] as
          { state?: string } | undefined;
        if (st?.state === 'Failed') return;
        assert.ok(i < 200, `${name} not reconciled`);
        await new Promise((r) => setTimeout(r, 50));
      }
    };
    const acted = (name: string) =>
      Object.keys(logs).filter((id) => logs[id]!.some((l) => l.includes(`restore action ${name}:`)));
    try {
      await action('first');
      assert.equal(r1.isLeader, true);
      assert.equal(r2.isLeader, false);
      assert.equal(await holder('tern-reconciler'), 'r1');
      // Let several poll rounds pass: the follower must still not touch anything.
      await new Promise((r) => setTimeout(r, 500));
      assert.deepEqual(acted('first'), ['r1']);

      // The leader dies without releasing: r2 takes over once the lease has gone unrenewed for its duration.
      const died = Date.now();
      await r1.stop({ release: false });
      while (!r2.isLeader) {
        assert.ok(Date.now() - died < leaseMs + 3000, 'no takeover');
        await new Promise((r) => setTimeout(r, 20));
      }
      const takeoverMs = Date.now() - died;
      console.log(`# takeover after the leader died: ${takeoverMs} ms (lease ${leaseMs} ms)`);
      assert.ok(takeoverMs >= leaseMs - 300, `took over too early: ${takeoverMs} ms`);
      await action('second');
      assert.deepEqual(acted('second'), ['r2']);

      // A clean stop releases the lease: a new replica leads at once, well within the lease duration.
      const r3 = replica('r3');
      r3.start();
      await new Promise((r) => setTimeout(r, 300));
      assert.equal(r3.isLeader, false);
      const stopped = Date.now();
      await r2.stop();
      while (!r3.isLeader) {
        assert.ok(Date.now() - stopped < leaseMs, 'released lease not taken at once');
        await new Promise((r) => setTimeout(r, 20));
      }
      console.log(`# takeover after a clean release: ${Date.now() - stopped} ms`);
      await action('third');
      assert.deepEqual(acted('third'), ['r3']);
      await r3.stop();
    } finally {
      await r1.stop();
      await r2.stop();
    }
  });
  test('two tern server --kubernetes processes: the leader is killed (SIGKILL), the other takes over', async () => {
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-kube-leader-'));
    const kubeconfig = path.join(tmp, 'kubeconfig');
    fs.writeFileSync(kubeconfig, kube.kubeConfig().exportConfig());
    const servers: { id: string; child: ChildProcess; stderr: string }[] = [];
    const startServer = (id: string) => {
      const child = spawn(
        process.execPath,
        [
          path.join(ROOT, 'src', 'cli', 'main.ts'),
          'server',
          '--kubernetes',
          NS,
          '--lease-duration',
          '3',
          '--listen',
          '127.0.0.1:0',
          '--data-dir',
          path.join(tmp, id),
          '--quiet',
        ],
        {
          env: {
            ...process.env,
            KUBECONFIG: kubeconfig,
            POD_NAME: id,
            TERN_API_TOKEN: 'test-token-0123456789abcdef',
          },
          stdio: ['ignore', 'ignore', 'pipe'],
        },
      );
      const s = { id, child, stderr: '' };
      child.stderr!.on('data', (d: Buffer) => (s.stderr += d.toString()));
      servers.push(s);
      return s;
    };
    const waitFor = async (what: string, ok: () => boolean, ms: number) => {
      const deadline = Date.now() + ms;
      while (!ok()) {
        assert.ok(
          Date.now() < deadline,
          `${what}:\n${servers.map((x) => `${x.id}: ${x.stderr}`).join('\n')}`,
        );
        await new Promise((r) => setTimeout(r, 50));
      }
    };
    const leads = (s: { stderr: string }) => / leads \(lease tern-system\/tern-reconciler\)/.test(s.stderr);
    try {
      const a = startServer('pod-a');
      const b = startServer('pod-b');
      await waitFor('no leader', () => leads(a) || leads(b), 120_000);
      // Both are up (each logs its identity) and exactly one leads.
      await waitFor(
        'both up',
        () => a.stderr.includes('leader election as') && b.stderr.includes('leader election as'),
        120_000,
      );
      await new Promise((r) => setTimeout(r, 1000));
      const [leader, follower] = leads(a) ? [a, b] : [b, a];
      assert.equal(leads(follower), false);
      assert.match(String(await holder('tern-reconciler')), new RegExp(`^${leader.id}_`));
      const died = Date.now();
      leader.child.kill('SIGKILL');
      await waitFor('no takeover', () => leads(follower), 10_000);
      const ms = Date.now() - died;
      console.log(`# tern server takeover after SIGKILL of the leader: ${ms} ms (lease 3 s)`);
      assert.ok(ms >= 2000, `took over before the lease could have expired: ${ms} ms`);
      assert.match(follower.stderr, new RegExp(`took over the lease from ${leader.id}_`));
      assert.match(String(await holder('tern-reconciler')), new RegExp(`^${follower.id}_`));
      // The new leader reconciles.
      await client.create(TernTypes.restoreAction, {
        apiVersion: TernTypes.restoreAction.apiVersion,
        kind: 'RestoreAction',
        metadata: { name: 'after-takeover', namespace: NS },
        spec: { restorePoint: 'missing' },
      });
      await waitFor(
        'not reconciled',
        () => follower.stderr.includes('restore action after-takeover:'),
        30_000,
      );
    } finally {
      for (const s of servers) s.child.kill('SIGTERM');
      for (const s of servers)
        if (s.child.exitCode === null && s.child.signalCode === null)
          await new Promise((r) => s.child.once('exit', r));
      fs.rmSync(tmp, { recursive: true, force: true });
    }
  });
});
