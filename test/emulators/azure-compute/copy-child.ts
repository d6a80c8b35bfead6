/** Runs one AzurePlatform.copySnapshot in its own process, so a test can SIGKILL it mid-copy. */
import { AzurePlatform } from '../../../src/platforms/azure/index.ts';
import type { SnapshotRef } from '../../../src/platforms/index.ts';

const config = JSON.parse(process.env['TERN_AZ_CONFIG'] ?? '{}') as Record<string, unknown>;
const snapshot = JSON.parse(process.env['TERN_AZ_SNAPSHOT'] ?? '{}') as SnapshotRef;
const toRegion = process.env['TERN_AZ_TO'] ?? '';
const p = new AzurePlatform(config);
const r = await p.copySnapshot(snapshot, toRegion, {
  onProgress: (pr) => process.stdout.write(`${JSON.stringify(pr)}\n`),
});
process.stdout.write(`${JSON.stringify({ done: r.snapshot.id })}\n`);
