/**
 * The 'snapshot-copy' exporter of the engine (src/engine/exporter.ts): each volume's local snapshot is copied
 * by the platform to `policy.export.region`, incrementally on top of the previous export's copy. Produces a
 * 'region-copy' tier; `expire` deletes the copies that export retention dropped.
 */
import { InputError, NotFoundError, throwIfAborted } from '../../core/index.ts';
import type { Tier } from '../../core/model.ts';
import type { CopyResult, Platform, SnapshotRef } from '../../platforms/index.ts';
import { registerExporter } from '../exporter.ts';
import type { ExpireContext, ExportContext, Exporter, ExportResult } from '../exporter.ts';

/** A reference to a snapshot by its provider id (what tiers store); the platform resolves the rest. */
export function snapshotById(id: string, region: string, like?: Partial<SnapshotRef>): SnapshotRef {
  return {
    id,
    volumeId: like?.volumeId ?? '',
    region,
    sizeBytes: like?.sizeBytes ?? 0,
    createdAt: like?.createdAt ?? '',
    kind: like?.kind ?? 'block',
  };
}

async function copyIncremental(
  platform: Platform,
  snap: SnapshotRef,
  region: string,
  prevCopy: SnapshotRef | undefined,
  base: SnapshotRef | undefined,
  ctx: ExportContext,
  onBytes: (n: number) => void,
): Promise<CopyResult> {
  const opts = {
    signal: ctx.signal,
    onProgress: (p: { bytesRead: number; bytesTransferred: number }) => onBytes(p.bytesTransferred),
  };
  if (!prevCopy) return platform.copySnapshot(snap, region, opts);
  try {
    return await platform.copySnapshot(snap, region, {
      ...opts,
      previousCopy: prevCopy,
      ...(base ? { baseSnapshot: base } : {}),
    });
  } catch (err) {
    // The previous copy (or its base) is gone: copy in full.
    if (!(err instanceof NotFoundError)) throw err;
    return platform.copySnapshot(snap, region, opts);
  }
}

export const snapshotCopyExporter: Exporter = {
  kind: 'snapshot-copy',
  tierKind: 'region-copy',

  async export(ctx: ExportContext): Promise<ExportResult> {
    const exp = ctx.policy.export;
    if (exp?.mode !== 'snapshot-copy')
      throw new InputError(`policy "${ctx.policy.name}" has no snapshot-copy export`);
    if (exp.region === ctx.app.region)
      throw new InputError(`snapshot copy needs another region than the app's ("${exp.region}")`);
    const prevTier = ctx.previous?.tier.kind === 'region-copy' ? ctx.previous.tier : undefined;
    const snapshots: Record<string, string> = {};
    const total = Object.values(ctx.snapshots).reduce((n, s) => n + s.sizeBytes, 0) || 1;
    let bytesRead = 0;
    let bytesTransferred = 0;
    let incremental = Object.keys(ctx.snapshots).length > 0;
    for (const [volume, snap] of Object.entries(ctx.snapshots)) {
      throwIfAborted(ctx.signal);
      const prevId = prevTier?.snapshots[volume];
      const prevCopy = prevId ? snapshotById(prevId, exp.region, snap) : undefined;
      const sent = bytesTransferred;
      const r = await copyIncremental(
        ctx.platform,
        snap,
        exp.region,
        prevCopy,
        ctx.previous?.snapshots[volume],
        ctx,
        (n) =>
          ctx.onProgress({
            phase: `copy ${volume}`,
            bytesRead: bytesRead + n,
            bytesTransferred: sent + n,
            bytesTotal: total,
          }),
      );
      snapshots[volume] = r.snapshot.id;
      bytesRead += r.incremental ? r.bytesTransferred : snap.sizeBytes;
      bytesTransferred += r.bytesTransferred;
      incremental &&= r.incremental;
    }
    const tier: Tier = { kind: 'region-copy', region: exp.region, snapshots };
    return { tier, bytesRead, bytesTransferred, incremental };
  },

  async expire(ctx: ExpireContext, tiers: Tier[]): Promise<void> {
    for (const t of tiers) {
      if (t.kind !== 'region-copy') continue;
      for (const id of Object.values(t.snapshots)) {
        throwIfAborted(ctx.signal);
        await ctx.platform
          .deleteSnapshot(snapshotById(id, t.region), { signal: ctx.signal })
          .catch((err: unknown) => {
            if (!(err instanceof NotFoundError)) throw err;
          });
      }
    }
  },
};

registerExporter(snapshotCopyExporter);
