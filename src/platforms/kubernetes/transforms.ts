/**
 * Restore transforms: JSON Patch (RFC 6902) operations applied to the objects a selector picks
 * (kinds, a name regex, optionally a label). A `test` op that fails means "this transform does not apply
 * to this object" (a condition), not an error; any other failing op is an InputError naming the object.
 */
import { z } from 'zod';
import { InputError } from '../../core/index.ts';
import type { KubeObject } from './client.ts';

const op = z.discriminatedUnion('op', [
  z.object({ op: z.literal('add'), path: z.string(), value: z.unknown() }),
  z.object({ op: z.literal('replace'), path: z.string(), value: z.unknown() }),
  z.object({ op: z.literal('test'), path: z.string(), value: z.unknown() }),
  z.object({ op: z.literal('remove'), path: z.string() }),
  z.object({ op: z.literal('copy'), path: z.string(), from: z.string() }),
  z.object({ op: z.literal('move'), path: z.string(), from: z.string() }),
]);
export type PatchOp = z.infer<typeof op>;

export const transformSchema = z.object({
  /** Kinds this applies to (e.g. ["PersistentVolumeClaim"]); empty or absent = every kind. */
  kinds: z.array(z.string()).optional(),
  /** Regular expression the object name must match (whole name). */
  name: z.string().optional(),
  labelSelector: z.record(z.string(), z.string()).optional(),
  ops: z.array(op).min(1),
});
export type Transform = z.infer<typeof transformSchema>;

export function parseTransforms(input: unknown): Transform[] {
  const r = z.array(transformSchema).safeParse(input);
  if (!r.success) {
    const i = r.error.issues[0];
    throw new InputError(`invalid transforms: ${i ? `${i.path.join('.')}: ${i.message}` : 'invalid'}`, {
      cause: r.error,
    });
  }
  for (const t of r.data) {
    if (t.name !== undefined) {
      try {
        new RegExp(t.name);
      } catch (err) {
        throw new InputError(`invalid transform name regex "${t.name}"`, { cause: err });
      }
    }
  }
  return r.data;
}

class TestFailed extends Error {}

function parsePointer(p: string): string[] {
  if (p === '') return [];
  if (!p.startsWith('/')) throw new Error(`bad JSON pointer "${p}"`);
  return p
    .slice(1)
    .split('/')
    .map((s) => s.replace(/~1/g, '/').replace(/~0/g, '~'));
}

type Container = Record<string, unknown> | unknown[];

function parentOf(doc: unknown, tokens: string[]): { parent: Container; key: string } {
  let cur: unknown = doc;
  for (const t of tokens.slice(0, -1)) {
    if (Array.isArray(cur)) cur = cur[Number(t)];
    else if (cur && typeof cur === 'object') cur = (cur as Record<string, unknown>)[t];
    else cur = undefined;
    if (cur === undefined || cur === null || typeof cur !== 'object')
      throw new Error(`path /${tokens.join('/')} does not exist`);
  }
  if (tokens.length === 0) throw new Error('the whole document cannot be patched');
  return { parent: cur as Container, key: tokens[tokens.length - 1]! };
}

function getAt(doc: unknown, tokens: string[]): unknown {
  let cur: unknown = doc;
  for (const t of tokens) {
    if (Array.isArray(cur)) cur = cur[Number(t)];
    else if (cur && typeof cur === 'object') cur = (cur as Record<string, unknown>)[t];
    else return undefined;
  }
  return cur;
}

function arrayIndex(arr: unknown[], key: string, forAdd: boolean): number {
  if (forAdd && key === '-') return arr.length;
  if (!/^(0|[1-9]\d*)$/.test(key)) throw new Error(`bad array index "${key}"`);
  const i = Number(key);
  if (i > arr.length || (!forAdd && i === arr.length)) throw new Error(`array index ${i} out of range`);
  return i;
}

function applyOp(doc: unknown, o: PatchOp): void {
  const tokens = parsePointer(o.path);
  switch (o.op) {
    case 'test':
      if (JSON.stringify(getAt(doc, tokens)) !== JSON.stringify(o.value)) throw new TestFailed();
      return;
    case 'remove': {
      const { parent, key } = parentOf(doc, tokens);
      if (Array.isArray(parent)) parent.splice(arrayIndex(parent, key, false), 1);
      else if (key in parent) delete parent[key];
      else throw new Error(`path ${o.path} does not exist`);
      return;
    }
    case 'add':
    case 'replace':
    case 'copy':
    case 'move': {
      let value: unknown;
      if (o.op === 'copy' || o.op === 'move') {
        value = structuredClone(getAt(doc, parsePointer(o.from)));
        if (value === undefined) throw new Error(`from ${o.from} does not exist`);
        if (o.op === 'move') applyOp(doc, { op: 'remove', path: o.from });
      } else value = structuredClone(o.value);
      const { parent, key } = parentOf(doc, tokens);
      if (Array.isArray(parent)) {
        const i = arrayIndex(parent, key, o.op !== 'replace');
        if (o.op === 'replace') parent[i] = value;
        else parent.splice(i, 0, value);
      } else {
        if (o.op === 'replace' && !(key in parent)) throw new Error(`path ${o.path} does not exist`);
        parent[key] = value;
      }
      return;
    }
  }
}

export function selects(t: Transform, obj: KubeObject): boolean {
  if (t.kinds && t.kinds.length > 0 && !t.kinds.includes(obj.kind)) return false;
  if (t.name !== undefined && !new RegExp(`^(?:${t.name})$`).test(obj.metadata.name)) return false;
  if (t.labelSelector) {
    for (const [k, v] of Object.entries(t.labelSelector)) if (obj.metadata.labels?.[k] !== v) return false;
  }
  return true;
}

/** Applies every selecting transform in order; returns the new object and which transforms applied (indexes). */
export function applyTransforms(
  obj: KubeObject,
  transforms: Transform[],
): { object: KubeObject; applied: number[] } {
  let cur = obj;
  const applied: number[] = [];
  for (const [i, t] of transforms.entries()) {
    if (!selects(t, cur)) continue;
    const next = structuredClone(cur);
    try {
      for (const o of t.ops) applyOp(next, o);
    } catch (err) {
      if (err instanceof TestFailed) continue;
      throw new InputError(
        `transform #${i + 1} cannot be applied to ${cur.kind} ${cur.metadata.name}: ${(err as Error).message}`,
        {
          cause: err,
          details: { transform: i },
        },
      );
    }
    cur = next;
    applied.push(i);
  }
  return { object: cur, applied };
}
