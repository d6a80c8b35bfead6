/** The OpenAPI 3.1 document, generated from the route table and the zod schemas (z.toJSONSchema). */
import { z } from 'zod';
import type { RouteSpec } from './router.ts';
import { REQUEST_COMPONENTS, RESPONSE_COMPONENTS } from './schemas.ts';

type Json = Record<string, unknown>;

let cachedSchemas: Record<string, Json> | undefined;

function toComponents(components: Record<string, z.ZodType>, io: 'input' | 'output'): Record<string, Json> {
  const reg = z.registry<{ id: string }>();
  for (const [id, schema] of Object.entries(components)) reg.add(schema, { id });
  const out = z.toJSONSchema(reg, {
    uri: (id) => `#/components/schemas/${id}`,
    io,
    unrepresentable: 'any',
  }) as { schemas: Record<string, Json> };
  const prefix = io === 'input' ? 'In_' : 'Out_';
  const schemas: Record<string, Json> = {};
  for (const [id, s] of Object.entries(out.schemas)) {
    const { $schema: _s, $id: _i, $defs, ...rest } = s;
    schemas[id] = rest;
    // Shared nested definitions become components of their own.
    for (const [defId, def] of Object.entries(($defs ?? {}) as Record<string, Json>))
      schemas[`${prefix}${id}_${defId}`] = def;
  }
  // "#/components/schemas/X#/$defs/Y" is not a valid JSON pointer inside one document; point at the lifted copy.
  const text = JSON.stringify(schemas).replace(
    /#\/components\/schemas\/([A-Za-z0-9_]+)#\/\$defs\/([A-Za-z0-9_]+)/g,
    `#/components/schemas/${prefix}$1_$2`,
  );
  return JSON.parse(text) as Record<string, Json>;
}

/** Components from the zod schemas: request bodies on their input side, responses on their output side. */
function componentSchemas(): Record<string, Json> {
  cachedSchemas ??= {
    ...toComponents(REQUEST_COMPONENTS, 'input'),
    ...toComponents(RESPONSE_COMPONENTS, 'output'),
  };
  return cachedSchemas;
}

const ref = (name: string): Json => ({ $ref: `#/components/schemas/${name}` });

export function buildOpenApi(routes: readonly RouteSpec[], version: string): Json {
  const paths: Record<string, Record<string, Json>> = {};
  for (const r of routes) {
    const p = r.path.replace(/:([A-Za-z]+)/g, '{$1}');
    const params: Json[] = [];
    for (const m of r.path.matchAll(/:([A-Za-z]+)/g))
      params.push({ name: m[1], in: 'path', required: true, schema: { type: 'string' } });
    for (const [q, description] of Object.entries(r.doc.query ?? {}))
      params.push({ name: q, in: 'query', required: false, description, schema: { type: 'string' } });
    const responses: Record<string, Json> = {};
    for (const [status, shape] of Object.entries(r.doc.responses)) {
      if (shape === 'none') responses[status] = { description: 'no content' };
      else if (Array.isArray(shape))
        responses[status] = {
          description: 'OK',
          content: { 'application/json': { schema: { type: 'array', items: ref(shape[0]) } } },
        };
      else if (typeof shape === 'object')
        responses[status] = { description: 'OK', content: { [shape.mediaType]: { schema: {} } } };
      else responses[status] = { description: 'OK', content: { 'application/json': { schema: ref(shape) } } };
    }
    const errorResponse = (description: string): Json => ({
      description,
      content: { 'application/json': { schema: ref('Error') } },
    });
    if (r.doc.body || params.length > 0)
      responses['400'] = errorResponse('invalid input (details.fields lists each field)');
    if (!r.public) responses['401'] = errorResponse('missing or wrong bearer token');
    responses.default = errorResponse('error (404, 409, 422, 423, 499, 507, 500…)');
    const op: Json = {
      operationId: `${r.method.toLowerCase()}${p.replace(/[{}]/g, '').replace(/[^A-Za-z0-9]+(.)?/g, (_m, c: string | undefined) => (c ? c.toUpperCase() : ''))}`,
      summary: r.doc.summary,
      tags: [r.doc.tag],
      ...(params.length > 0 ? { parameters: params } : {}),
      ...(r.doc.body
        ? { requestBody: { required: true, content: { 'application/json': { schema: ref(r.doc.body) } } } }
        : {}),
      responses,
      ...(r.public ? { security: [] } : {}),
    };
    (paths[p] ??= {})[r.method.toLowerCase()] = op;
  }
  return {
    openapi: '3.1.0',
    info: {
      title: 'Tern API',
      version,
      description:
        'Backup and disaster recovery for Kubernetes applications. All /v1 routes need a bearer token.',
    },
    servers: [{ url: '/' }],
    security: [{ bearer: [] }],
    paths: Object.fromEntries(Object.entries(paths).sort(([a], [b]) => a.localeCompare(b))),
    components: {
      schemas: componentSchemas(),
      securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } },
    },
  };
}
