/**
 * Smoke test of `tern demo --platform azure`: the DR experiment on the azure platform against the local Azure
 * sandbox (Azurite + the compute emulator). Both paths restore data that checks out, the snapshot copy's
 * second run is incremental (only the changed pages move), and RPO/RTO are sane.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { tern } from '../harness/tern-server.ts';

const MiB = 1 << 20;

test('tern demo --platform azure --size 16MiB --json', { timeout: 300_000 }, async () => {
  const out = await tern(['demo', '--platform', 'azure', '--size', '16MiB', '--json'], {
    AZURE_STORAGE_CONNECTION_STRING: '',
    AZURE_STORAGE_KEY: '',
  });
  assert.equal(out.code, 0, out.stderr + out.stdout);
  const r = out.json as {
    platform: string;
    size: number;
    changedBytes: number;
    paths: {
      path: string;
      exportFirstMs: number;
      exportIncrementalMs: number;
      restoreMs: number;
      rtoMs: number;
      rpoMs: number;
      bytesFirst: number;
      bytesIncremental: number;
      checksumOk: boolean;
    }[];
    report: { rule321: { ok: boolean } }[];
  };
  assert.equal(r.platform, 'azure');
  assert.equal(r.size, 16 * MiB);
  assert.deepEqual(r.paths.map((p) => p.path).sort(), ['repository', 'snapshot-copy']);
  for (const p of r.paths) {
    assert.equal(p.checksumOk, true, `${p.path}: restored data checks out`);
    // The whole disk (random data, incompressible; the repository adds a little framing).
    assert.ok(
      p.bytesFirst >= 16 * MiB && p.bytesFirst <= 16.5 * MiB,
      `${p.path}: the first export moves the whole disk (${p.bytesFirst})`,
    );
    // 1% of the disk changed in 4 KiB pages: the second export moves about that, never the whole disk.
    assert.ok(
      p.bytesIncremental >= r.changedBytes * 0.9 && p.bytesIncremental <= p.bytesFirst * 0.05,
      `${p.path}: incremental moved ${p.bytesIncremental} for ${r.changedBytes} changed`,
    );
    assert.ok(p.exportFirstMs > 0 && p.exportIncrementalMs > 0);
    assert.ok(p.rtoMs >= p.restoreMs && p.rtoMs < 120_000, `${p.path} RTO ${p.rtoMs}`);
    assert.ok(p.rpoMs > 0 && p.rpoMs < 120_000, `${p.path} RPO ${p.rpoMs}`);
  }
  assert.equal(r.report[0]?.rule321.ok, true, 'datamover + snapshot copy together meet 3-2-1');
});
