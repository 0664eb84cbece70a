// Cache-Control on single lookups against real Postgres and Redis: a client may
// keep a fresh answer only while it stays fresh, never past the freshness
// objective, however far away the next scheduled sync is.
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { freshnessHeaders, freshnessOf } from '../../src/api/freshness.js';
import { startServer, type RunningServer } from '../../src/server.js';
import { freshDatabase } from '../support/db.js';
import { serverConfig, tempDir, writeJobs, writeParquet } from '../support/fixtures.js';
import { assertMatchesSpec } from '../support/openapi.js';
import { startRedis, type RedisServer } from '../support/servers.js';

const OBJECTIVE = 2 * 3600;

describe('Cache-Control of a fresh answer', () => {
  let redis: RedisServer;
  let database: { url: string; drop(): Promise<void> };
  let server: RunningServer;
  let base: string;

  const get = async (url: string, headers: Record<string, string> = {}) => {
    const response = await fetch(`${base}${url}`, { headers });
    await assertMatchesSpec('GET', new URL(`${base}${url}`).pathname, response);
    return response;
  };

  beforeAll(async () => {
    redis = await startRedis();
    database = await freshDatabase(inject('databaseUrl'), 'freshness');
    const dir = await tempDir('freshness');
    // Data 119 minutes old under a 2-hour objective, synced once a year: fresh for one more minute.
    const asOf = new Date(Date.now() - 119 * 60_000).toISOString().replace('T', ' ').replace('Z', '');
    const source = await writeParquet(path.join(dir, 'yearly.parquet'), `SELECT 'y' || i AS id, TIMESTAMP '${asOf}' AS t, i AS n FROM range(1, 4) t(i)`);
    await writeJobs(dir, [{ view: 'yearly', source, entity_key: 'id', event_time: 't', features: { n: { type: 'integer' } }, schedule: '0 0 1 1 *', freshness: '2h' }]);
    server = await startServer(serverConfig({ DATABASE_URL: database.url, REDIS_URL: redis.url, SYNC_JOBS_DIR: dir }));
    expect(await server.runner.run('yearly', 'manual')).toMatchObject({ status: 'succeeded' });
    base = `http://127.0.0.1:${server.port}`;
  });

  afterAll(async () => {
    await server?.close();
    await redis?.destroy();
    await database?.drop();
  });

  it('lets a client keep it no longer than the objective leaves, on a 200 and on a 304', async () => {
    const response = await get('/features/v1/y1?view=yearly');
    expect(response.status).toBe(200);
    expect(response.headers.get('Feature-Freshness')).toBe('fresh');
    const left = OBJECTIVE - Number(response.headers.get('Feature-Age'));
    expect(left).toBeGreaterThan(0);
    expect(left).toBeLessThanOrEqual(60);
    // The next sync is months away (at most a year): it does not bound the answer, the objective does.
    expect(response.headers.get('Cache-Control')).toBe(`private, max-age=${left}`);

    const revalidated = await get('/features/v1/y1?view=yearly', { 'If-None-Match': response.headers.get('ETag')! });
    expect(revalidated.status).toBe(304);
    const maxAge = Number(/^private, max-age=(\d+)$/.exec(revalidated.headers.get('Cache-Control')!)![1]);
    expect(maxAge).toBe(OBJECTIVE - Number(revalidated.headers.get('Feature-Age')));
  });

  it('is bounded by the next sync when that comes first, and says no-cache once no freshness is left', () => {
    const view = server.catalog.get('yearly')!;
    const version = view.current!;
    const asOfMs = version.asOfMs!;
    const headersAt = (now: number, nextRun: Date | null) => {
      const headers: Record<string, string> = {};
      freshnessHeaders(headers, view, version, freshnessOf(view, version, now), nextRun, now);
      return headers;
    };
    // An hour of freshness left, the next sync in 10 minutes.
    expect(headersAt(asOfMs + 3600_000, new Date(asOfMs + 4200_000))['Cache-Control']).toBe('private, max-age=600');
    // Ten minutes left, the next sync in an hour.
    expect(headersAt(asOfMs + 6600_000, new Date(asOfMs + 10_200_000))['Cache-Control']).toBe('private, max-age=600');
    // Exactly at the objective: still fresh, but nothing left to cache.
    const atObjective = headersAt(asOfMs + OBJECTIVE * 1000, new Date(asOfMs + 365 * 86_400_000));
    expect(atObjective['Feature-Freshness']).toBe('fresh');
    expect(atObjective['Cache-Control']).toBe('private, no-cache');
    // Past it: stale.
    const stale = headersAt(asOfMs + OBJECTIVE * 1000 + 1000, new Date(asOfMs + 365 * 86_400_000));
    expect(stale['Feature-Freshness']).toBe('stale');
    expect(stale['Cache-Control']).toBe('private, no-cache');
  });
});
