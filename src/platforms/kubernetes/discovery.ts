/** Discovery of every resource type the API server serves (built-in and custom), at each group's preferred version. */
import type { RunOptions } from '../../core/index.ts';
import { UnavailableError, describeError } from '../../core/index.ts';
import type { KubeClient, ResourceType } from './client.ts';

interface APIResource {
  name: string;
  namespaced: boolean;
  kind: string;
  verbs: string[];
}
interface APIResourceList {
  groupVersion: string;
  resources: APIResource[];
}
interface APIGroupList {
  groups: { name: string; preferredVersion?: { groupVersion: string; version: string } }[];
}

export interface Discovery {
  types: ResourceType[];
  /** Groups whose discovery failed (e.g. an aggregated API that is down): their types are missing. */
  warnings: string[];
}

function toTypes(list: APIResourceList, group: string, version: string): ResourceType[] {
  return (list.resources ?? [])
    .filter((r) => !r.name.includes('/'))
    .map((r) => ({
      group,
      version,
      apiVersion: group ? `${group}/${version}` : version,
      kind: r.kind,
      plural: r.name,
      namespaced: r.namespaced,
      verbs: r.verbs ?? [],
    }));
}

export async function discover(client: KubeClient, opts: RunOptions = {}): Promise<Discovery> {
  const core = await client.request<APIResourceList>('GET', '/api/v1', { signal: opts.signal });
  const types = toTypes(core, '', 'v1');
  const warnings: string[] = [];
  const groups = await client.request<APIGroupList>('GET', '/apis', { signal: opts.signal });
  const lists = await Promise.all(
    groups.groups.map(async (g) => {
      const pv = g.preferredVersion;
      if (!pv) return [];
      try {
        const list = await client.request<APIResourceList>('GET', `/apis/${pv.groupVersion}`, {
          signal: opts.signal,
        });
        return toTypes(list, g.name, pv.version);
      } catch (err) {
        // The API server itself being gone is not a per-group problem.
        if (err instanceof UnavailableError && !/\(\d+\)/.test(err.message)) throw err;
        warnings.push(`discovery of ${pv.groupVersion} failed: ${describeError(err)}`);
        return [];
      }
    }),
  );
  for (const l of lists) types.push(...l);
  return { types, warnings };
}

/** Finds the type of an apiVersion + kind among discovered types. */
export function typeFor(types: ResourceType[], apiVersion: string, kind: string): ResourceType | undefined {
  return types.find((t) => t.apiVersion === apiVersion && t.kind === kind);
}
