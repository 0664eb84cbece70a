// End to end through the generated SDK: Parquet → sync → Postgres + Redis →
// HTTP, against real servers. Every response is checked against openapi.yaml.
import path from 'node:path';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { startServer, type RunningServer } from '../../src/server.js';
import { createFeatureClient } from '../../src/sdk/client.js';
import { hotKey } from '../../src/stores/hot-tier.js';
import { HOT_FORMAT } from '../../src/stores/hot-value.js';
import { freshDatabase } from '../support/db.js';
import { duck, serverConfig, tempDir, writeJobs, writeParquet } from '../support/fixtures.js';
import { assertMatchesSpec } from '../support/openapi.js';
import { startRedis, type RedisServer } from '../support/servers.js';

const ROWS = 2500;
const ISO = `'%Y-%m-%dT%H:%M:%S.%fZ'`;

// Values chosen to break naive encodings: quotes, commas, newlines, unicode,
// empty strings next to NULLs, the largest exact integer, tiny and negative doubles.
const ITEMS_SQL = `
  SELECT
    'e' || lpad(i::VARCHAR, 6, '0') AS id,
    TIMESTAMP '2026-01-01 00:00:00' + INTERVAL (i) SECOND AS updated_at,
    CASE WHEN i % 7 = 0 THEN NULL ELSE i * 3 END::INTEGER AS clicks,
    CASE WHEN i % 11 = 0 THEN NULL WHEN i % 13 = 0 THEN -1e-300 ELSE i / 7.0 END::DOUBLE AS score,
    CASE WHEN i % 17 = 0 THEN NULL ELSE i % 2 = 0 END AS active,
    CASE i % 6 WHEN 0 THEN 'plain' WHEN 1 THEN 'with "quotes", commas' WHEN 2 THEN 'multi' || chr(10) || 'line' WHEN 3 THEN 'ünïcødé ✓' WHEN 4 THEN '' ELSE NULL END AS label,
    TIMESTAMPTZ '2025-06-01 12:00:00.123456+00' + INTERVAL (i) MINUTE AS last_seen,
    CASE WHEN i = 1 THEN 9007199254740991 WHEN i = 2 THEN -9007199254740991 ELSE i END::BIGINT AS big,
    0.1::DOUBLE * i AS frac,
    'ignored' AS extra_column
  FROM range(1, ${ROWS + 1}) t(i)
  UNION ALL SELECT 'shared-1', TIMESTAMP '2026-01-01', 1, 1.5, true, 'x', TIMESTAMPTZ '2025-01-01 00:00:00+00', 1, 0.5, 'ignored'`;

const ACCOUNTS_SQL = `
  SELECT 'acct-' || i AS account, DATE '2026-02-01' AS as_of, i * 1.25 AS balance FROM range(1, 51) t(i)
  UNION ALL SELECT 'shared-1', DATE '2026-02-01', 0
  UNION ALL SELECT 'batch', DATE '2026-02-01', 42`;

const ITEM_FEATURES = ['clicks', 'score', 'active', 'label', 'last_seen', 'big', 'frac'] as const;

type Expected = { eventTime: string; features: Record<string, unknown> };

const hotTierErrors = (metrics: string) => Number(/^featurestore_hot_tier_errors_total (\d+)/m.exec(metrics)?.[1] ?? 0);

describe('features API end to end (real Postgres and Redis, through the SDK)', () => {
  let redis: RedisServer;
  let database: { url: string; drop(): Promise<void> };
  let server: RunningServer;
  let client: ReturnType<typeof createFeatureClient>;
  let baseUrl: string;
  let checked = 0;
  const expected = new Map<string, Expected>();

  // Every response the tests see is validated against openapi.yaml.
  const validatingFetch = async (input: Request | string | URL, init?: RequestInit): Promise<Response> => {
    const request = input instanceof Request ? input : new Request(input, init);
    const response = await fetch(request);
    await assertMatchesSpec(request.method, new URL(request.url).pathname, response);
    checked++;
    return response;
  };

  beforeAll(async () => {
    redis = await startRedis();
    database = await freshDatabase(inject('databaseUrl'), 'e2e');
    const dir = await tempDir('e2e');
    const items = await writeParquet(path.join(dir, 'items.parquet'), ITEMS_SQL);
    const accounts = await writeParquet(path.join(dir, 'accounts.parquet'), ACCOUNTS_SQL);
    await writeJobs(dir, [
      {
        view: 'items',
        source: items,
        entity_key: 'id',
        event_time: 'updated_at',
        features: { clicks: { type: 'integer' }, score: { type: 'double' }, active: { type: 'boolean' }, label: { type: 'string' }, last_seen: { type: 'timestamp' }, big: { type: 'integer' }, frac: { type: 'double' } },
        schedule: '*/5 * * * *',
        freshness: '3650d',
      },
      { view: 'accounts', source: accounts, entity_key: 'account', event_time: 'as_of', features: { balance: { type: 'double' } }, freshness: '1h' },
    ]);
    server = await startServer(serverConfig({ DATABASE_URL: database.url, REDIS_URL: redis.url, SYNC_JOBS_DIR: dir }));
    for (const view of ['items', 'accounts']) {
      const summary = await server.runner.run(view, 'manual');
      expect(summary, JSON.stringify(summary)).toMatchObject({ status: 'succeeded' });
    }
    baseUrl = `http://127.0.0.1:${server.port}`;
    client = createFeatureClient(baseUrl, { fetch: validatingFetch as typeof fetch });

    // DuckDB's own answer, read straight from the Parquet file.
    const rows = await duck<Record<string, unknown>>(
      `SELECT id, strftime(updated_at::TIMESTAMPTZ, ${ISO}) AS event_time, clicks, score, active, label, strftime(last_seen, ${ISO}) AS last_seen, big, frac FROM read_parquet('${items}')`,
    );
    for (const row of rows) {
      const features = Object.fromEntries(ITEM_FEATURES.map((name) => [name, typeof row[name] === 'bigint' ? Number(row[name]) : (row[name] ?? null)]));
      expected.set(row.id as string, { eventTime: row.event_time as string, features });
    }
  });

  afterAll(async () => {
    await server?.close();
    await redis?.destroy();
    await database?.drop();
  });

  it('serves every synced entity value for value as DuckDB reads it from the Parquet (batch)', async () => {
    const ids = [...expected.keys()];
    expect(ids.length).toBe(ROWS + 1);
    for (let start = 0; start < ids.length; start += 1000) {
      const chunk = ids.slice(start, start + 1000);
      const { data, error, response } = await client.POST('/features/v1/batch', { body: { view: 'items', entity_ids: chunk } });
      expect(error).toBeUndefined();
      expect(response.headers.get('Feature-Tier')).toBe('redis');
      for (const result of data!.results) {
        if (result.status !== 'PRESENT') throw new Error(`${result.entity_id} is ${result.status}`);
        const want = expected.get(result.entity_id)!;
        expect({ eventTime: result.event_time, features: result.features }).toEqual(want);
      }
    }
  });

  it('serves single entities with the same values, from Redis and from Postgres alike', async () => {
    const sample = [...expected.keys()].filter((_, i) => i % 97 === 0);
    for (const id of sample) {
      const { data, response } = await client.GET('/features/v1/{entity_id}', { params: { path: { entity_id: id }, query: { view: 'items' } } });
      expect(response.status).toBe(200);
      expect(response.headers.get('Feature-Tier')).toBe('redis');
      expect({ eventTime: data!.event_time, features: data!.features }).toEqual(expected.get(id));
    }
    // The same entities straight from Postgres (no hot tier) give the same answer.
    const { FeatureReader } = await import('../../src/stores/reader.js');
    const pgOnly = new FeatureReader(server.db, null, { fillTtlSeconds: 60 });
    const version = server.catalog.get('items')!.current!;
    const { rows, tier } = await pgOnly.read(version, sample);
    expect(tier).toBe('postgres');
    rows.forEach((row, i) => {
      const want = expected.get(sample[i]!)!;
      expect(row!.eventTime).toBe(want.eventTime);
      expect(Object.fromEntries(version.features.map((f, j) => [f.name, row!.values[j]]))).toEqual(want.features);
    });
  });

  it('says how fresh the data is, in headers and in the body', async () => {
    const { data, response } = await client.GET('/features/v1/{entity_id}', { params: { path: { entity_id: 'e000010' }, query: { view: 'items' } } });
    const h = response.headers;
    const asOf = [...expected.values()].map((e) => e.eventTime).sort().at(-1)!;
    expect(data!.metadata).toMatchObject({ version: 1, as_of: asOf, fresh: true, freshness_objective_seconds: 3650 * 86400 });
    expect(data!.metadata.age_seconds).toBeGreaterThanOrEqual(Math.floor((Date.now() - Date.parse(asOf)) / 1000) - 2);
    expect(h.get('Feature-Version')).toBe('1');
    expect(h.get('Feature-As-Of')).toBe(asOf);
    expect(h.get('Feature-Freshness')).toBe('fresh');
    expect(Number(h.get('Feature-Age'))).toBe(data!.metadata.age_seconds);
    expect(h.get('Age')).toBeNull();
    expect(new Date(h.get('Last-Modified')!).getTime()).toBe(Math.floor(Date.parse(asOf) / 1000) * 1000);
    // Fresh data may be cached until the next scheduled sync (every 5 minutes here); no-cache in its last second.
    const cacheControl = h.get('Cache-Control')!;
    expect(cacheControl).toMatch(/^private, (max-age=\d+|no-cache)$/);
    const maxAge = Number(/max-age=(\d+)/.exec(cacheControl)?.[1] ?? 0);
    expect(maxAge).toBeGreaterThanOrEqual(0);
    expect(maxAge).toBeLessThanOrEqual(300);

    // A view past its objective says so, and tells caches not to reuse it unchecked.
    const stale = await client.GET('/features/v1/{entity_id}', { params: { path: { entity_id: 'acct-3' }, query: { view: 'accounts' } } });
    expect(stale.data!.metadata.fresh).toBe(false);
    expect(stale.data!.features).toEqual({ balance: 3.75 });
    expect(stale.response.headers.get('Feature-Freshness')).toBe('stale');
    expect(stale.response.headers.get('Cache-Control')).toBe('private, no-cache');
  });

  it('answers 304 to a matching If-None-Match, and 200 when the selection differs', async () => {
    const first = await client.GET('/features/v1/{entity_id}', { params: { path: { entity_id: 'e000020' }, query: { view: 'items' } } });
    const etag = first.response.headers.get('ETag')!;
    expect(etag).toMatch(/^W\/"items\.1\.[0-9a-f]{8}"$/);
    const again = await validatingFetch(`${baseUrl}/features/v1/e000020?view=items`, { headers: { 'If-None-Match': `"other", ${etag}` } });
    expect(again.status).toBe(304);
    expect(again.headers.get('ETag')).toBe(etag);
    expect(again.headers.get('Feature-Version')).toBe('1');
    expect(await again.text()).toBe('');
    // If-None-Match compares weakly: the tag without its W/ matches too.
    expect((await validatingFetch(`${baseUrl}/features/v1/e000020?view=items`, { headers: { 'If-None-Match': etag.slice(2) } })).status).toBe(304);
    const subset = await validatingFetch(`${baseUrl}/features/v1/e000020?view=items&features=clicks`, { headers: { 'If-None-Match': etag } });
    expect(subset.status).toBe(200);
    expect(await subset.json()).toMatchObject({ features: { clicks: 60 } });
  });

  it('returns only the features asked for', async () => {
    const { data } = await client.GET('/features/v1/{entity_id}', { params: { path: { entity_id: 'e000003' }, query: { view: 'items', features: 'label,clicks' } } });
    expect(data!.features).toEqual({ label: 'ünïcødé ✓', clicks: 9 });
    const batch = await client.POST('/features/v1/batch', { body: { view: 'items', entity_ids: ['e000004'], features: ['label'] } });
    expect(batch.data!.results[0]).toMatchObject({ status: 'PRESENT', features: { label: '' } });
  });

  it('picks the view when only one holds the entity, and asks for one when several do', async () => {
    const item = await client.GET('/features/v1/{entity_id}', { params: { path: { entity_id: 'e000005' } } });
    expect(item.data!.view).toBe('items');
    const account = await client.GET('/features/v1/{entity_id}', { params: { path: { entity_id: 'acct-7' } } });
    expect(account.data!.view).toBe('accounts');
    const both = await client.GET('/features/v1/{entity_id}', { params: { path: { entity_id: 'shared-1' } } });
    expect(both.response.status).toBe(400);
    expect(both.error).toMatchObject({ type: 'urn:feature-serving:problem:ambiguous-entity', views: expect.arrayContaining(['items', 'accounts']) });
  });

  it('serves an entity whose id is "batch" singly, while POST /features/v1/batch stays the batch route', async () => {
    // Checked against getFeatures: the spec checker would take GET /features/v1/batch for the batch path, which has no GET.
    const single = async (query: string) => {
      const response = await fetch(`${baseUrl}/features/v1/batch${query}`);
      await assertMatchesSpec('GET', '/features/v1/{entity_id}', response.clone());
      return response;
    };
    for (const query of ['?view=accounts', '?view=accounts&features=balance', '']) {
      const response = await single(query);
      expect(response.status, query).toBe(200);
      expect(await response.json()).toMatchObject({ view: 'accounts', entity_id: 'batch', features: { balance: 42 } });
    }
    const missing = await single('?view=items');
    expect(missing.status).toBe(404);
    expect(await missing.json()).toMatchObject({ type: 'urn:feature-serving:problem:entity-not-found' });

    const batch = await client.POST('/features/v1/batch', { body: { view: 'accounts', entity_ids: ['batch', 'acct-2'] } });
    expect(batch.response.status).toBe(200);
    expect(batch.data!.results).toMatchObject([
      { entity_id: 'batch', status: 'PRESENT', features: { balance: 42 } },
      { entity_id: 'acct-2', status: 'PRESENT', features: { balance: 2.5 } },
    ]);
    const put = await validatingFetch(`${baseUrl}/features/v1/batch`, { method: 'PUT' });
    expect(put.status).toBe(405);
    expect(put.headers.get('Allow')).toBe('POST');
  });

  it('marks unknown ids in a batch as NOT_FOUND without failing the batch, in request order', async () => {
    const { data, response } = await client.POST('/features/v1/batch', { body: { view: 'items', entity_ids: ['nope-1', 'e000001', 'nope-2', 'e000001'] } });
    expect(response.status).toBe(200);
    expect(response.headers.get('Cache-Control')).toBe('no-store');
    expect(data!.results.map((r) => [r.entity_id, r.status])).toEqual([
      ['nope-1', 'NOT_FOUND'],
      ['e000001', 'PRESENT'],
      ['nope-2', 'NOT_FOUND'],
      ['e000001', 'PRESENT'],
    ]);
    const present = data!.results[1]!;
    expect(present.status === 'PRESENT' && present.features.big).toBe(9007199254740991);
  });

  it('reads an undecodable Redis value from Postgres, serves the entities after it, and repairs the key', async () => {
    const probe = new Redis(redis.url);
    try {
      const errorsBefore = hotTierErrors(await (await fetch(`${baseUrl}/metrics`)).text());
      // Bytes no release ever wrote (a corrupted or foreign value) for e000041, between two good ones.
      await probe.set(hotKey('items', 1, 'e000041'), Buffer.from([0x7f, 0x00]));
      const batch = await client.POST('/features/v1/batch', { body: { view: 'items', entity_ids: ['e000040', 'e000041', 'e000042'] } });
      expect(batch.response.status).toBe(200);
      expect(batch.response.headers.get('Feature-Tier')).toBe('postgres');
      expect(batch.data!.results.map((r) => [r.entity_id, r.status, r.status === 'PRESENT' ? r.features : null])).toEqual(
        ['e000040', 'e000041', 'e000042'].map((id) => [id, 'PRESENT', expected.get(id)!.features]),
      );
      expect(hotTierErrors(await (await fetch(`${baseUrl}/metrics`)).text())).toBe(errorsBefore + 1);

      // The single lookup too; the read from Postgres filled the key back with a good value.
      await probe.set(hotKey('items', 1, 'e000043'), Buffer.from([0x7f, 0x00]));
      const single = await client.GET('/features/v1/{entity_id}', { params: { path: { entity_id: 'e000043' }, query: { view: 'items' } } });
      expect(single.response.status).toBe(200);
      expect(single.response.headers.get('Feature-Tier')).toBe('postgres');
      expect(single.data!.features).toEqual(expected.get('e000043')!.features);
      await expect.poll(async () => (await probe.getBuffer(hotKey('items', 1, 'e000043')))?.[0], { timeout: 5_000 }).toBe(HOT_FORMAT);
      const repaired = await client.GET('/features/v1/{entity_id}', { params: { path: { entity_id: 'e000043' }, query: { view: 'items' } } });
      expect(repaired.response.headers.get('Feature-Tier')).toBe('redis');
      expect(repaired.data!.features).toEqual(expected.get('e000043')!.features);
    } finally {
      probe.disconnect();
    }
  });

  it('answers 404 for an unknown entity and for an unknown route, as problem+json', async () => {
    const missing = await client.GET('/features/v1/{entity_id}', { params: { path: { entity_id: 'does-not-exist' }, query: { view: 'items' } } });
    expect(missing.response.status).toBe(404);
    expect(missing.response.headers.get('Content-Type')).toBe('application/problem+json');
    expect(missing.error).toMatchObject({ type: 'urn:feature-serving:problem:entity-not-found', status: 404, detail: expect.stringContaining('does-not-exist') });
    const nowhere = await client.GET('/features/v1/{entity_id}', { params: { path: { entity_id: 'does-not-exist' } } });
    expect(nowhere.response.status).toBe(404);
    const route = await fetch(`${baseUrl}/nothing/here`);
    expect(route.status).toBe(404);
    expect(await route.json()).toMatchObject({ type: 'urn:feature-serving:problem:not-found' });
  });

  describe('rejects bad input with a 400 that says what was wrong', () => {
    const cases: [string, string, RegExp][] = [
      ['space in the id', '/features/v1/a%20b?view=items', /not a valid entity id/],
      ['over-long id', `/features/v1/${'x'.repeat(129)}?view=items`, /not a valid entity id/],
      ['path traversal id', '/features/v1/..%2F..%2Fetc%2Fpasswd?view=items', /not a valid entity id/],
      ['SQL-looking id', `/features/v1/${encodeURIComponent("x' OR '1'='1")}?view=items`, /not a valid entity id/],
      ['NUL in the id', '/features/v1/a%00b?view=items', /not a valid entity id/],
      ['unknown view', '/features/v1/e000001?view=nope', /there is no view "nope"; views: accounts, items/],
      ['unknown feature', '/features/v1/e000001?view=items&features=clicks,nope', /no feature "nope"; features: clicks, score/],
      ['empty feature list', '/features/v1/e000001?view=items&features=', /at least one feature/],
      ['unknown query parameter', '/features/v1/e000001?view=items&verbose=1', /unknown query parameter "verbose"/],
      ['repeated query parameter', '/features/v1/e000001?view=items&view=accounts', /given 2 times/],
    ];
    for (const [name, url, detail] of cases) {
      it(name, async () => {
        const response = await validatingFetch(`${baseUrl}${url}`);
        expect(response.status).toBe(400);
        const body = (await response.json()) as { detail: string; type: string };
        expect(body.detail).toMatch(detail);
        expect(JSON.stringify(body)).not.toMatch(/SELECT|featurestore|at .*\.ts:\d+/);
      });
    }
  });

  describe('rejects bad batch bodies', () => {
    const post = (body: string, type = 'application/json') => validatingFetch(`${baseUrl}/features/v1/batch`, { method: 'POST', headers: { 'Content-Type': type }, body });
    const cases: [string, () => Promise<Response>, number, RegExp][] = [
      ['not JSON', () => post('{"view": "items", '), 400, /not valid JSON/],
      ['a JSON array', () => post('["e000001"]'), 400, /invalid batch body/],
      ['no entity_ids', () => post('{"view":"items"}'), 400, /entity_ids/],
      ['empty entity_ids', () => post('{"view":"items","entity_ids":[]}'), 400, /at least one entity id/],
      ['too many ids', () => post(JSON.stringify({ view: 'items', entity_ids: Array.from({ length: 1001 }, (_, i) => `e${i}`) })), 400, /at most 1000/],
      ['a number as id', () => post('{"view":"items","entity_ids":[42]}'), 400, /entity_ids\[0\]/],
      ['a bad id', () => post('{"view":"items","entity_ids":["ok","no way"]}'), 400, /entity_ids\[1\] "no way" is not a valid entity id/],
      ['an unknown field', () => post('{"view":"items","entity_ids":["e1"],"limit":5}'), 400, /unknown field\(s\) limit/],
      ['an unknown view', () => post('{"view":"nope","entity_ids":["e1"]}'), 400, /there is no view "nope"/],
      ['an unknown feature', () => post('{"view":"items","entity_ids":["e1"],"features":["nope"]}'), 400, /no feature "nope"/],
      ['no view with several views', () => post('{"entity_ids":["e1"]}'), 400, /name the view/],
      ['the wrong media type', () => post('{"view":"items","entity_ids":["e1"]}', 'text/plain'), 415, /application\/json/],
      ['a body too large', () => post(JSON.stringify({ view: 'items', entity_ids: ['x'.repeat(200_000)] })), 413, /larger than/],
    ];
    for (const [name, send, status, detail] of cases) {
      it(name, async () => {
        const response = await send();
        expect(response.status).toBe(status);
        expect(response.headers.get('Content-Type')).toBe('application/problem+json');
        expect(((await response.json()) as { detail: string }).detail).toMatch(detail);
      });
    }
  });

  it('reports readiness and exposes request and sync metrics', async () => {
    const ready = await client.GET('/readyz');
    expect(ready.response.status).toBe(200);
    expect(ready.data).toMatchObject({ status: 'ready', checks: { postgres: 'ok', views: { items: { version: 1 }, accounts: { version: 1 } } } });
    expect((await client.GET('/healthz')).response.status).toBe(200);
    const metrics = await (await validatingFetch(`${baseUrl}/metrics`)).text();
    expect(metrics).toMatch(/http_server_request_duration_seconds_bucket\{[^}]*http_route="\/features\/v1\/:entity_id"/);
    expect(metrics).toMatch(/featurestore_sync_runs_total\{sync_job="items",status="succeeded"\} 1/);
    expect(metrics).toMatch(/featurestore_sync_rows_total\{sync_job="items"\} 2501/);
    expect(metrics).toMatch(/featurestore_view_version\{view="items"\} 1/);
    expect(metrics).not.toMatch(/e0000\d\d/);
    const spec = await validatingFetch(`${baseUrl}/openapi.yaml`);
    expect(await spec.text()).toMatch(/^openapi: 3\.1/m);
  });

  it('answers from Postgres, with the same values, while Redis is down, and from Redis again after it returns', async () => {
    const ids = ['e000100', 'e000101', 'e000102', 'shared-1'];
    const before = await client.POST('/features/v1/batch', { body: { view: 'items', entity_ids: ids } });
    expect(before.response.headers.get('Feature-Tier')).toBe('redis');
    await redis.stop();
    try {
      const during = await client.POST('/features/v1/batch', { body: { view: 'items', entity_ids: ids } });
      expect(during.response.status).toBe(200);
      expect(during.response.headers.get('Feature-Tier')).toBe('postgres');
      expect(during.data!.results).toEqual(before.data!.results);
      const single = await client.GET('/features/v1/{entity_id}', { params: { path: { entity_id: 'e000100' }, query: { view: 'items' } } });
      expect(single.response.status).toBe(200);
      expect(single.data!.features).toEqual(expected.get('e000100')!.features);
      const ready = await client.GET('/readyz');
      expect(ready.data).toMatchObject({ status: 'degraded', checks: { hot_tier: { status: 'unreachable' } } });
    } finally {
      await redis.start();
    }
    // Redis restarted empty (no persistence): misses are answered from Postgres and filled back.
    await expect.poll(async () => (await client.GET('/readyz')).data?.status, { timeout: 10_000 }).toBe('ready');
    const refill = await client.POST('/features/v1/batch', { body: { view: 'items', entity_ids: ids } });
    expect(refill.data!.results).toEqual(before.data!.results);
    await expect
      .poll(async () => (await client.POST('/features/v1/batch', { body: { view: 'items', entity_ids: ids } })).response.headers.get('Feature-Tier'), { timeout: 5_000 })
      .toBe('redis');
    const after = await client.POST('/features/v1/batch', { body: { view: 'items', entity_ids: ids } });
    expect(after.data!.results).toEqual(before.data!.results);
  });

  it('puts a request id and the safe headers on every kind of response, keeping a sane caller-sent id', async () => {
    const responses = [
      await fetch(`${baseUrl}/features/v1/e000001?view=items`),
      await fetch(`${baseUrl}/features/v1/e000001?view=items`, { headers: { 'If-None-Match': (await fetch(`${baseUrl}/features/v1/e000001?view=items`)).headers.get('ETag')! } }),
      await fetch(`${baseUrl}/features/v1/nope?view=items`),
      await fetch(`${baseUrl}/features/v1/batch`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{"view":"items","entity_ids":["e000001"]}' }),
      await fetch(`${baseUrl}/healthz`),
      await fetch(`${baseUrl}/no/such/route`),
    ];
    expect(responses.map((r) => r.status)).toEqual([200, 304, 404, 200, 200, 404]);
    for (const response of responses) {
      expect(response.headers.get('X-Content-Type-Options')).toBe('nosniff');
      expect(response.headers.get('X-Frame-Options')).toBe('DENY');
      expect(response.headers.get('Request-Id')).toMatch(/^[0-9a-f-]{36}$/);
      expect(response.headers.get('X-Powered-By')).toBeNull();
    }
    const kept = await fetch(`${baseUrl}/features/v1/e000001?view=items`, { headers: { 'Request-Id': 'caller-abc_123' } });
    expect(kept.headers.get('Request-Id')).toBe('caller-abc_123');
    const replaced = await fetch(`${baseUrl}/features/v1/e000001?view=items`, { headers: { 'Request-Id': 'bad id <script>' } });
    expect(replaced.headers.get('Request-Id')).toMatch(/^[0-9a-f-]{36}$/);
  });

  it('describes the sync jobs and their runs', async () => {
    const jobs = await client.GET('/sync/v1/jobs');
    expect(jobs.response.status).toBe(200);
    expect(jobs.data!.jobs.map((j) => j.job).sort()).toEqual(['accounts', 'items']);
    expect(jobs.data!.jobs.find((j) => j.job === 'items')).toMatchObject({ current_version: 1, rows: 2501, last_run: { status: 'succeeded', rows_read: 2501, rows_written: 2501 } });
    const runs = await client.GET('/sync/v1/jobs/{job}/runs', { params: { path: { job: 'items' }, query: { limit: 5 } } });
    expect(runs.data!.runs[0]).toMatchObject({ job: 'items', status: 'succeeded', details: { ignored_columns: ['extra_column'], rows_rejected: 0, duplicates_dropped: 0 } });
    const bad = await client.GET('/sync/v1/jobs/{job}/runs', { params: { path: { job: 'items' }, query: { limit: 500 } } });
    expect(bad.response.status).toBe(400);
  });

  it('reports SLO compliance from the lookups seen, and each view\'s freshness', async () => {
    const { data, response } = await client.GET('/slo/v1');
    expect(response.status).toBe(200);
    const latency = data!.objectives.find((o) => o.name === 'latency')!;
    expect(latency.total).toBeGreaterThan(10);
    expect(latency.target).toBe(0.99);
    expect(data!.freshness).toEqual(
      expect.arrayContaining([
        expect.objectContaining({ view: 'items', version: 1, fresh: true }),
        expect.objectContaining({ view: 'accounts', version: 1, fresh: false, objective_seconds: 3600 }),
      ]),
    );
    expect(data!.freshness.find((f) => f.view === 'accounts')!.seconds_to_objective).toBeLessThan(0);
  });

  it('shows a burned latency budget once lookups break the objective', async () => {
    // A second server on the same stores whose objective no lookup can meet.
    const strict = await startServer(serverConfig({ DATABASE_URL: database.url, REDIS_URL: redis.url, SYNC_JOBS_DIR: server.catalog.list()[0]!.job.file.replace(/\/[^/]+$/, ''), SLO_LATENCY_THRESHOLD_MS: '0.001' }));
    try {
      const strictClient = createFeatureClient(`http://127.0.0.1:${strict.port}`, { fetch: validatingFetch as typeof fetch });
      for (let i = 0; i < 20; i++) await strictClient.GET('/features/v1/{entity_id}', { params: { path: { entity_id: 'e000001' }, query: { view: 'items' } } });
      const { data } = await strictClient.GET('/slo/v1');
      const latency = data!.objectives.find((o) => o.name === 'latency')!;
      expect(latency).toMatchObject({ total: 20, good: 0, compliance: 0, met: false });
      expect(latency.error_budget_remaining).toBeLessThan(-90);
      expect(latency.burn_rates['5m']).toBeCloseTo(100);
      const metrics = await (await fetch(`http://127.0.0.1:${strict.port}/metrics`)).text();
      expect(metrics).toMatch(/http_server_request_duration_seconds_bucket\{le="0.000001",/);
    } finally {
      await strict.close();
    }
  });

  it('checked every response above against openapi.yaml', () => {
    expect(checked).toBeGreaterThan(40);
  });
});
