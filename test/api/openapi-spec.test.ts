// openapi.yaml is the contract: it is well formed, the SDK is generated from
// its current text, the server's routes are the documented ones, and the
// response checker used by the other tests does reject what the spec forbids.
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import type { paths } from '../../src/sdk/schema.js';
import { assertMatchesSpec, spec, specOperations } from '../support/openapi.js';
import { tempDir } from '../support/fixtures.js';

const goodFeature = {
  view: 'items',
  entity_id: 'x',
  event_time: '2026-01-01T00:00:00.000000Z',
  features: { a: 1, b: 'two', c: null, d: true },
  metadata: { version: 1, as_of: '2026-01-01T00:00:00.000000Z', published_at: '2026-01-01T00:00:00.000Z', age_seconds: 5, freshness_objective_seconds: 60, fresh: true },
};
const featureHeaders = {
  'Content-Type': 'application/json',
  ETag: 'W/"items.1.0123abcd"',
  'Last-Modified': 'Thu, 01 Jan 2026 00:00:00 GMT',
  'Cache-Control': 'private, max-age=10',
  'Feature-View': 'items',
  'Feature-Version': '1',
  'Feature-As-Of': '2026-01-01T00:00:00.000000Z',
  'Feature-Age': '5',
  'Feature-Freshness': 'fresh',
  'Feature-Freshness-Objective': '60',
  'Feature-Tier': 'redis',
  'Request-Id': 'r1',
  'Server-Timing': 'hot;dur=0.12, total;dur=0.50',
};
const respond = (body: unknown, status = 200, headers: Record<string, string> = featureHeaders) => new Response(JSON.stringify(body), { status, headers });

describe('openapi.yaml', () => {
  it('is OpenAPI 3.1 with an operationId on every operation and problem+json for every error', () => {
    expect(spec.openapi).toBe('3.1.0');
    const ops = specOperations();
    expect(ops).toEqual(
      expect.arrayContaining([
        { method: 'GET', path: '/features/v1/{entity_id}' },
        { method: 'POST', path: '/features/v1/batch' },
        { method: 'GET', path: '/healthz' },
        { method: 'GET', path: '/readyz' },
        { method: 'GET', path: '/metrics' },
        { method: 'GET', path: '/openapi.yaml' },
      ]),
    );
    for (const { method, path: p } of ops) {
      const op = spec.paths[p][method.toLowerCase()];
      expect(op.operationId, `${method} ${p}`).toBeTruthy();
      for (const [status, response] of Object.entries(op.responses as Record<string, { $ref?: string; content?: object }>)) {
        // /readyz answers 503 with its status document, not a problem.
        if (Number(status) < 400 || p === '/readyz') continue;
        const resolved = response.$ref ? spec.components.responses[response.$ref.split('/').at(-1)!] : response;
        expect(Object.keys(resolved.content), `${method} ${p} ${status}`).toEqual(['application/problem+json']);
      }
    }
  });

  it('has every $ref resolvable', () => {
    const refs = [...JSON.stringify(spec).matchAll(/"\$ref":"([^"]+)"/g)].map((m) => m[1]!);
    expect(refs.length).toBeGreaterThan(20);
    for (const ref of refs) {
      const target = ref
        .slice(2)
        .split('/')
        .reduce((at: Record<string, unknown> | undefined, key) => at?.[key] as Record<string, unknown> | undefined, spec);
      expect(target, ref).toBeDefined();
    }
  });

  it('generated the committed SDK types (run `npm run sdk` after editing openapi.yaml)', async () => {
    const out = path.join(await tempDir('sdk'), 'schema.ts');
    execFileSync(path.resolve('node_modules/.bin/openapi-typescript'), ['openapi.yaml', '-o', out], { stdio: 'ignore' });
    expect(readFileSync(path.resolve('src/sdk/schema.ts'), 'utf8')).toBe(readFileSync(out, 'utf8'));
  });

  it('bounds the runs limit and the batch body as the routes check them, and types the SDK to match', () => {
    const runs = spec.paths['/sync/v1/jobs/{job}/runs'].get;
    expect(runs.parameters.find((p: { name: string }) => p.name === 'limit').schema).toEqual({ type: 'integer', minimum: 1, maximum: 100, default: 20 });
    const batch = spec.components.schemas.BatchRequest;
    expect(batch.properties.entity_ids).toMatchObject({ minItems: 1, maxItems: 1000 });
    expect(batch.properties.features).toMatchObject({ minItems: 1, items: { type: 'string', minLength: 1 } });
    // Type-checked by `tsc --noEmit -p .`: the SDK takes the limit as the number it is.
    const query = { limit: 5 } satisfies NonNullable<paths['/sync/v1/jobs/{job}/runs']['get']['parameters']['query']>;
    expect(query.limit).toBe(5);
  });

  it('documents exactly the routes the server has', async () => {
    const { createApp } = await import('../../src/api/app.js');
    const { tracingOff } = await import('../../src/observability/tracing.js');
    const app = createApp({ tracing: tracingOff } as never);
    const served = app.routes
      .filter((r) => r.method !== 'ALL')
      .map((r) => `${r.method} ${r.path.replace(/:([a-z_]+)/g, '{$1}')}`)
      // PUT, PATCH and DELETE /features/v1/batch only answer 405; GET /features/v1/batch is the lookup of entity "batch", not a route of its own.
      .filter((r) => !r.startsWith('PUT') && !r.startsWith('PATCH') && !r.startsWith('DELETE'));
    expect(new Set(served)).toEqual(new Set(specOperations().map((o) => `${o.method} ${o.path}`)));
  });
});

describe('the response checker', () => {
  it('accepts a response that follows the spec', async () => {
    await assertMatchesSpec('GET', '/features/v1/x', respond(goodFeature));
  });

  it('rejects a body without metadata', async () => {
    const { metadata: _, ...body } = goodFeature;
    await expect(assertMatchesSpec('GET', '/features/v1/x', respond(body))).rejects.toThrow(/must have required property 'metadata'/);
  });

  it('rejects an undocumented status, a missing required header and a wrong media type', async () => {
    await expect(assertMatchesSpec('GET', '/features/v1/x', respond(goodFeature, 418))).rejects.toThrow(/status 418 is not documented/);
    const { 'Feature-Version': _, ...headers } = featureHeaders;
    await expect(assertMatchesSpec('GET', '/features/v1/x', respond(goodFeature, 200, headers))).rejects.toThrow(/required header Feature-Version is missing/);
    await expect(assertMatchesSpec('GET', '/features/v1/x', respond(goodFeature, 200, { ...featureHeaders, 'Content-Type': 'text/html' }))).rejects.toThrow(/Content-Type "text\/html" is not documented/);
    await expect(assertMatchesSpec('GET', '/features/v1/x', respond(goodFeature, 200, { ...featureHeaders, 'Feature-Freshness': 'maybe' }))).rejects.toThrow(/header Feature-Freshness/);
  });

  it('rejects a batch result that mixes the two statuses and a problem without a type', async () => {
    const batch = { view: 'items', metadata: goodFeature.metadata, results: [{ entity_id: 'x', status: 'NOT_FOUND', features: {} }] };
    const headers = { ...featureHeaders, 'Cache-Control': 'no-store' };
    await expect(assertMatchesSpec('POST', '/features/v1/batch', respond(batch, 200, headers))).rejects.toThrow(/body does not match/);
    const problem = new Response(JSON.stringify({ title: 'x', status: 400, detail: 'y' }), { status: 400, headers: { 'Content-Type': 'application/problem+json' } });
    await expect(assertMatchesSpec('GET', '/features/v1/x', problem)).rejects.toThrow(/required property 'type'/);
  });
});
