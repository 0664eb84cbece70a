// API keys: hashed in Postgres, scoped to views, effective without restart;
// and an attack suite of missing, wrong, revoked and other-view keys and of
// hostile input, each answered with the right 4xx problem, never a 5xx.
import net from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { startServer, type RunningServer } from '../../src/server.js';
import { createApiKey, listApiKeys, revokeApiKey } from '../../src/stores/api-keys.js';
import { ensureSchema, META_SCHEMA } from '../../src/stores/metadata.js';
import { PostgresDatabase } from '../../src/stores/postgres.js';
import { freshDatabase } from '../support/db.js';
import { serverConfig, tempDir, writeJobs, writeParquet } from '../support/fixtures.js';
import { assertMatchesSpec } from '../support/openapi.js';
import { startRedis, type RedisServer } from '../support/servers.js';

describe('API keys and hostile input', () => {
  let redis: RedisServer;
  let database: { url: string; drop(): Promise<void> };
  let db: PostgresDatabase;
  let server: RunningServer;
  let baseUrl: string;
  let dir: string;
  let itemsKey: string;
  let allKey: string;

  const get = async (url: string, key?: string, headers: Record<string, string> = {}) => {
    const response = await fetch(`${baseUrl}${url}`, { headers: { ...(key ? { Authorization: `Bearer ${key}` } : {}), ...headers } });
    await assertMatchesSpec('GET', new URL(`${baseUrl}${url}`).pathname, response);
    return response;
  };
  const config = () => serverConfig({ DATABASE_URL: database.url, REDIS_URL: redis.url, SYNC_JOBS_DIR: dir, AUTH_MODE: 'keys', CATALOG_REFRESH_MS: '100' });

  beforeAll(async () => {
    redis = await startRedis();
    database = await freshDatabase(inject('databaseUrl'), 'auth');
    db = new PostgresDatabase({ url: database.url });
    dir = await tempDir('auth');
    const items = await writeParquet(path.join(dir, 'items.parquet'), `SELECT 'i' || i AS id, TIMESTAMP '2026-01-01' AS t, i AS n FROM range(1, 11) t(i)`);
    const secrets = await writeParquet(path.join(dir, 'secrets.parquet'), `SELECT 's' || i AS id, TIMESTAMP '2026-01-01' AS t, i * 100 AS salary FROM range(1, 11) t(i)`);
    const legacySource = await writeParquet(path.join(dir, 'legacy.parquet'), `SELECT 'l' || i AS id, TIMESTAMP '2026-01-01' AS t, i AS n FROM range(1, 4) t(i)`);
    // Deprecated in favour of secrets, which not every key that reads it may read.
    const legacy = { view: 'legacy', source: legacySource, entity_key: 'id', event_time: 't', features: { n: { type: 'integer' } }, deprecated: { since: '2026-01-01', sunset: '2030-01-01', successor: 'secrets' } };
    await writeJobs(dir, [
      { view: 'items', source: items, entity_key: 'id', event_time: 't', features: { n: { type: 'integer' } } },
      { view: 'secrets', source: secrets, entity_key: 'id', event_time: 't', features: { salary: { type: 'integer' } } },
      legacy,
    ]);
  });

  afterAll(async () => {
    await server?.close();
    await db?.close();
    await redis?.destroy();
    await database?.drop();
  });

  it('refuses to start in keys mode while no key exists, saying how to create one', async () => {
    await expect(startServer(config())).rejects.toThrow(/no API keys exist.*npm run ctl -- keys create <name> --views.*or set AUTH_MODE=open/);
  });

  it('stores keys hashed and lists them without secrets', async () => {
    await ensureSchema(db);
    itemsKey = (await createApiKey(db, 'items-reader', ['items'])).token;
    allKey = (await createApiKey(db, 'admin', ['*'])).token;
    expect(itemsKey).toMatch(/^fsk_[a-f0-9]{12}_[A-Za-z0-9_-]{43}$/);
    const stored = await db.query<{ hash: string }>(`SELECT hash FROM ${META_SCHEMA}.api_keys`);
    expect(stored.map((r) => r.hash).join()).not.toContain(itemsKey.slice(18));
    expect(stored.every((r) => /^[a-f0-9]{64}$/.test(r.hash))).toBe(true);
    expect(JSON.stringify(await listApiKeys(db))).not.toMatch(/fsk_/);

    server = await startServer(config());
    baseUrl = `http://127.0.0.1:${server.port}`;
    expect((await server.runner.run('items', 'manual')).status).toBe('succeeded');
    expect((await server.runner.run('secrets', 'manual')).status).toBe('succeeded');
    expect((await server.runner.run('legacy', 'manual')).status).toBe('succeeded');
  });

  it('serves a key the views it may read', async () => {
    const response = await get('/features/v1/i3?view=items', itemsKey);
    expect(response.status).toBe(200);
    expect(((await response.json()) as { features: { n: number } }).features.n).toBe(3);
    expect((await get('/features/v1/s3?view=secrets', allKey)).status).toBe(200);
  });

  describe('attack suite', () => {
    const cases: [string, () => Promise<Response>, number, RegExp][] = [
      ['no key', () => get('/features/v1/i1?view=items'), 401, /send an API key/],
      ['a wrong key', () => get('/features/v1/i1?view=items', 'fsk_000000000000_' + 'A'.repeat(43)), 401, /not valid, or has been revoked/],
      ['a malformed key', () => get('/features/v1/i1?view=items', 'hunter2'), 401, /not valid/],
      ['a key with a changed secret', () => get('/features/v1/i1?view=items', itemsKey.slice(0, -1) + (itemsKey.endsWith('A') ? 'B' : 'A')), 401, /not valid/],
      ['Basic instead of Bearer', () => get('/features/v1/i1?view=items', undefined, { Authorization: `Basic ${Buffer.from('a:b').toString('base64')}` }), 401, /send an API key/],
      ['another view, existing entity', () => get('/features/v1/s1?view=secrets', itemsKey), 403, /may not read view "secrets"/],
      ['another view, missing entity', () => get('/features/v1/nobody?view=secrets', itemsKey), 403, /may not read view "secrets"/],
      ['another view in a batch', () => fetch(`${baseUrl}/features/v1/batch`, { method: 'POST', headers: { Authorization: `Bearer ${itemsKey}`, 'Content-Type': 'application/json' }, body: '{"view":"secrets","entity_ids":["s1"]}' }), 403, /may not read view "secrets"/],
      ['another job\'s runs', () => get('/sync/v1/jobs/secrets/runs', itemsKey), 403, /may not read view "secrets"/],
      ['an unknown view lists only the key\'s views', () => get('/features/v1/i1?view=nope', itemsKey), 400, /views: items$/],
      ['an SQL-looking id', () => get(`/features/v1/${encodeURIComponent("1; DROP TABLE featurestore.runs; --")}?view=items`, itemsKey), 400, /not a valid entity id/],
      ['a path-traversal id', () => get('/features/v1/..%2F..%2Fsecrets?view=items', itemsKey), 400, /not a valid entity id/],
      ['an unknown parameter', () => get('/features/v1/i1?view=items&debug=1', itemsKey), 400, /unknown query parameter "debug"/],
      ['an oversized id', () => get(`/features/v1/${'a'.repeat(5000)}?view=items`, itemsKey), 400, /not a valid entity id/],
    ];
    for (const [name, send, status, detail] of cases) {
      it(`${name} → ${status}`, async () => {
        const response = await send();
        expect(response.status).toBe(status);
        const body = await response.text();
        expect(JSON.parse(body).detail).toMatch(detail);
        expect(body).not.toContain(itemsKey);
        expect(body).not.toMatch(/stack|SELECT |127\.0\.0\.1|postgres:\/\//);
      });
    }

    it('a 403 for another view is the same whether the entity exists or not', async () => {
      const existing = (await (await get('/features/v1/s1?view=secrets', itemsKey)).json()) as Record<string, unknown>;
      const missing = (await (await get('/features/v1/s999?view=secrets', itemsKey)).json()) as Record<string, unknown>;
      const strip = (b: Record<string, unknown>) => ({ ...b, instance: undefined });
      expect(strip(existing)).toEqual(strip(missing));
    });

    it('oversized headers are refused by the HTTP layer (431), not served, as problem+json', async () => {
      const response = await fetch(`${baseUrl}/features/v1/i1?view=items`, { headers: { Authorization: `Bearer ${itemsKey}`, 'X-Padding': 'x'.repeat(20_000) } });
      expect(response.status).toBe(431);
      expect(response.headers.get('Content-Type')).toBe('application/problem+json');
      expect(response.headers.get('Connection')).toBe('close');
      const body = await response.text();
      expect(JSON.parse(body)).toMatchObject({ type: 'urn:feature-serving:problem:headers-too-large', status: 431, detail: expect.stringMatching(/headers .* larger than the \d+-byte limit/) });
      expect(body).not.toContain(itemsKey);
    });

    it('a request that is not HTTP is answered 400 as problem+json, and the connection closed', async () => {
      const raw = await new Promise<string>((resolve, reject) => {
        const socket = net.connect(Number(new URL(baseUrl).port), '127.0.0.1');
        let received = '';
        socket.setEncoding('utf8');
        socket.on('data', (chunk: string) => (received += chunk));
        socket.on('end', () => resolve(received));
        socket.on('error', reject);
        socket.write('GET /features/v1/i1 HTTP/1.1\r\nHost: x\r\nBad Header Without Colon\r\n\r\n');
      });
      const [head, body] = raw.split('\r\n\r\n', 2) as [string, string];
      expect(head).toMatch(/^HTTP\/1\.1 400 Bad Request\r\n/);
      expect(head).toMatch(/\r\nContent-Type: application\/problem\+json\r\n/i);
      expect(head).toMatch(/\r\nConnection: close(\r\n|$)/i);
      expect(JSON.parse(body)).toMatchObject({ type: 'urn:feature-serving:problem:invalid-request', status: 400, detail: expect.stringMatching(/could not be parsed as HTTP/) });
    });
  });

  it('without ?view= only the key\'s views are searched, and /sync/v1/jobs lists only them', async () => {
    expect((await get('/features/v1/s1', itemsKey)).status).toBe(404);
    expect((await get('/features/v1/s1', allKey)).status).toBe(200);
    const jobs = (await (await get('/sync/v1/jobs', itemsKey)).json()) as { jobs: { job: string }[] };
    expect(jobs.jobs.map((j) => j.job)).toEqual(['items']);
  });

  it('names a deprecated view\'s successor only to a key that may read the successor', async () => {
    const legacyOnly = (await createApiKey(db, 'legacy-reader', ['legacy'])).token;
    const withSuccessor = (await createApiKey(db, 'legacy-and-secrets', ['legacy', 'secrets'])).token;
    for (const key of [legacyOnly, withSuccessor]) await expect.poll(async () => (await get('/features/v1/l1?view=legacy', key)).status, { timeout: 5_000 }).toBe(200);
    const batch = async (key: string) => {
      const response = await fetch(`${baseUrl}/features/v1/batch`, { method: 'POST', headers: { Authorization: `Bearer ${key}`, 'Content-Type': 'application/json' }, body: '{"view":"legacy","entity_ids":["l1"]}' });
      await assertMatchesSpec('POST', '/features/v1/batch', response.clone());
      return response;
    };
    const successorOf = async (key: string) => {
      const { jobs } = (await (await get('/sync/v1/jobs', key)).json()) as { jobs: { job: string; deprecated: { successor: string | null } | null }[] };
      return jobs.find((j) => j.job === 'legacy')!.deprecated!.successor;
    };

    // Still told the view is deprecated and when it goes away, but not what replaces it.
    for (const response of [await get('/features/v1/l1?view=legacy', legacyOnly), await get('/features/v1/l1', legacyOnly), await batch(legacyOnly)]) {
      expect(response.status).toBe(200);
      expect(response.headers.get('Deprecation')).toBe(`@${Date.parse('2026-01-01') / 1000}`);
      expect(response.headers.get('Sunset')).toBe(new Date('2030-01-01').toUTCString());
      expect(response.headers.get('Link')).toBeNull();
      expect(JSON.stringify([...response.headers])).not.toContain('secrets');
    }
    expect(await successorOf(legacyOnly)).toBeNull();

    expect((await get('/features/v1/l1?view=legacy', withSuccessor)).headers.get('Link')).toBe('</features/v1/l1?view=secrets>; rel="successor-version"');
    expect((await batch(withSuccessor)).headers.get('Link')).toBe('</features/v1/batch>; rel="successor-version"');
    expect(await successorOf(withSuccessor)).toBe('secrets');
    expect(await successorOf(allKey)).toBe('secrets');
  });

  it('needs no key for health, readiness, metrics and the contract', async () => {
    for (const url of ['/healthz', '/readyz', '/metrics', '/openapi.yaml']) expect((await fetch(`${baseUrl}${url}`)).status).toBe(200);
  });

  it('rate-limits each key with a token bucket shared by all server processes through Redis', async () => {
    const limited = (await createApiKey(db, 'limited', ['items'], { perSecond: 0.5, burst: 6 })).token;
    // A second server process on the same stores draws on the same bucket.
    const other = await startServer(config());
    try {
      const urls = [baseUrl, `http://127.0.0.1:${other.port}`];
      await expect.poll(async () => (await get('/features/v1/i1?view=items', limited)).status, { timeout: 5_000 }).not.toBe(401);
      const statuses: number[] = [];
      let last: Response | undefined;
      for (let i = 0; i < 10; i++) {
        last = await fetch(`${urls[i % 2]}/features/v1/i1?view=items`, { headers: { Authorization: `Bearer ${limited}` } });
        statuses.push(last.status);
        if (last.status === 200) expect(last.headers.get('RateLimit-Policy')).toBe('"per-key";q=6;w=12');
      }
      // 6 in the burst (one spent by the poll above), then refused, whichever process answered.
      expect(statuses.filter((s) => s === 200)).toHaveLength(5);
      expect(statuses.slice(5).every((s) => s === 429)).toBe(true);
      await assertMatchesSpec('GET', '/features/v1/i1', last!);
      expect(last!.headers.get('Retry-After')).toBe('2');
      expect(last!.headers.get('RateLimit')).toMatch(/^"per-key";r=0;t=2$/);
      expect(((await last!.json()) as { detail: string }).detail).toMatch(/API key "limited" is over its limit of 0.5 requests per second \(burst 6\)/);
      // Other keys are not affected.
      expect((await get('/features/v1/i1?view=items', itemsKey)).status).toBe(200);
    } finally {
      await other.close();
    }
  });

  it('takes a new key and a revocation into account without a restart', async () => {
    const late = (await createApiKey(db, 'late', ['items'])).token;
    await expect.poll(async () => (await get('/features/v1/i1?view=items', late)).status, { timeout: 5_000 }).toBe(200);
    expect(await revokeApiKey(db, 'late')).toBe(1);
    await expect.poll(async () => (await get('/features/v1/i1?view=items', late)).status, { timeout: 5_000 }).toBe(401);
    expect((await get('/features/v1/i1?view=items', itemsKey)).status).toBe(200);
  });
});
