/**
 * Pre/post snapshot hooks (quiesce an app, flush a database). A hook is an exec-style command; where it runs
 * is a pluggable `HookRunner`: in a cluster, in a pod's container (needs a kubelet); on this host, a local
 * process (`LocalCommandRunner`, used by the embedded mode and the tests). Every hook is recorded as a phase.
 */
import { spawn } from 'node:child_process';
import { z } from 'zod';
import type { Clock } from '../../core/index.ts';
import { InputError, StorageError, describeError, systemClock } from '../../core/index.ts';
import type { PhaseRecord } from './bundle.ts';

export const hookSchema = z.object({
  name: z.string().min(1),
  when: z.enum(['pre-snapshot', 'post-snapshot']),
  command: z.array(z.string()).min(1),
  /** Where to run it (pod exec runners); the local runner ignores it. */
  pod: z.string().optional(),
  container: z.string().optional(),
  timeoutSeconds: z.number().int().positive().max(3600).default(60),
  onError: z.enum(['fail', 'continue']).default('fail'),
});
export type HookSpec = z.infer<typeof hookSchema>;

export function parseHooks(input: unknown): HookSpec[] {
  const r = z.array(hookSchema).safeParse(input);
  if (!r.success)
    throw new InputError(`invalid hooks: ${r.error.issues[0]?.message ?? 'invalid'}`, { cause: r.error });
  return r.data;
}

export interface HookResult {
  exitCode: number;
  stdout: string;
  stderr: string;
}

export interface HookRunner {
  run(hook: HookSpec, ctx: { namespace: string; signal?: AbortSignal }): Promise<HookResult>;
}

/** Runs the command as a local process, with TERN_NAMESPACE and TERN_HOOK in its environment. */
export class LocalCommandRunner implements HookRunner {
  run(hook: HookSpec, ctx: { namespace: string; signal?: AbortSignal }): Promise<HookResult> {
    return new Promise((resolve, reject) => {
      const [cmd, ...args] = hook.command as [string, ...string[]];
      const signal = ctx.signal
        ? AbortSignal.any([ctx.signal, AbortSignal.timeout(hook.timeoutSeconds * 1000)])
        : AbortSignal.timeout(hook.timeoutSeconds * 1000);
      const child = spawn(cmd, args, {
        env: { ...process.env, TERN_NAMESPACE: ctx.namespace, TERN_HOOK: hook.name },
        stdio: ['ignore', 'pipe', 'pipe'],
        signal,
      });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (d: Buffer) => (stdout = (stdout + d.toString()).slice(-4096)));
      child.stderr.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-4096)));
      child.on('error', (err) => reject(err));
      child.on('close', (code) => resolve({ exitCode: code ?? -1, stdout, stderr }));
    });
  }
}

/** Runs the hooks of one stage in order, each recorded as a phase. A failing `onError: fail` hook throws after being recorded. */
export async function runHooks(
  hooks: HookSpec[],
  when: HookSpec['when'],
  runner: HookRunner | undefined,
  ctx: { namespace: string; signal?: AbortSignal; clock?: Clock; phases: PhaseRecord[] },
): Promise<void> {
  const clock = ctx.clock ?? systemClock;
  for (const hook of hooks.filter((h) => h.when === when)) {
    if (!runner) throw new InputError(`hook "${hook.name}" needs a hook runner`);
    const startedAt = clock.now().toISOString();
    let failure: string | undefined;
    let detail: string;
    try {
      const r = await runner.run(hook, { namespace: ctx.namespace, signal: ctx.signal });
      detail = `exit ${r.exitCode}${r.stdout ? `; stdout: ${r.stdout.trim().slice(-500)}` : ''}${r.stderr ? `; stderr: ${r.stderr.trim().slice(-500)}` : ''}`;
      if (r.exitCode !== 0) failure = `hook "${hook.name}" (${when}) exited with ${r.exitCode}`;
    } catch (err) {
      detail = describeError(err);
      failure = `hook "${hook.name}" (${when}) failed: ${detail}`;
    }
    ctx.phases.push({
      name: `hook:${when}:${hook.name}`,
      startedAt,
      endedAt: clock.now().toISOString(),
      status: failure ? 'failed' : 'ok',
      detail,
    });
    if (failure && hook.onError === 'fail')
      throw new StorageError(failure, { details: { hook: hook.name, when } });
  }
}
