// The optional in-process tier (PROCESS_CACHE_ENTRIES) in front of real Redis
// and Postgres: it answers repeated lookups with the same values, never with a
// version other than the one readers are switched to, and stays within its bound.
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { startServer, type RunningServer } from '../../src/server.js';
import { freshDatabase } from '../support/db.js';
import { serverConfig, tempDir, writeJobs, writeParquet } from '../support/fixtures.js';
import { startRedis, type RedisServer } from '../support/servers.js';

const itemsSql = (multiplier: number) => `
  SELECT 'e' || lpad(i::VARCHAR, 3, '0') AS id, TIMESTAMP '2026-01-01' + INTERVAL (${multiplier}) HOUR AS updated_at,
         i * ${multiplier} AS clicks, 'label ' || i AS label
  FROM range(1, 101) t(i)`;

describe('in-process tier (PROCESS_CACHE_ENTRIES) over real Redis and Postgres', () => {
  let redis: RedisServer;
  let database: { url: string; drop(): Promise<void> };
  let server: RunningServer;
  let base: string;
  let source: string;

  const get = async (id: string) => {
    const response = await fetch(`${base}/features/v1/${id}?view=items`);
    return { status: response.status, tier: response.headers.get('Feature-Tier'), version: response.headers.get('Feature-Version'), body: (await response.json()) as { features: { clicks: number; label: string }; metadata: { version: number } } };
  };

  beforeAll(async () => {
    redis = await startRedis();
    database = await freshDatabase(inject('databaseUrl'), 'pcache');
    const dir = await tempDir('pcache');
    source = path.join(dir, 'items.parquet');
    await writeParquet(source, itemsSql(1));
    await writeJobs(dir, [{ view: 'items', source, entity_key: 'id', event_time: 'updated_at', features: { clicks: { type: 'integer' }, label: { type: 'string' } }, freshness: '3650d' }]);
    server = await startServer(serverConfig({ DATABASE_URL: database.url, REDIS_URL: redis.url, SYNC_JOBS_DIR: dir, PROCESS_CACHE_ENTRIES: '10' }));
    expect(await server.runner.run('items', 'manual')).toMatchObject({ status: 'succeeded' });
    base = `http://127.0.0.1:${server.port}`;
  }, 60_000);

  afterAll(async () => {
    await server?.close();
    await redis?.destroy();
    await database?.drop();
  });

  it('answers a repeated lookup from memory with the same values', async () => {
    const first = await get('e001');
    expect(first).toMatchObject({ status: 200, tier: 'redis', body: { features: { clicks: 1, label: 'label 1' } } });
    const second = await get('e001');
    expect(second.tier).toBe('memory');
    expect(second.body.features).toEqual(first.body.features);
    expect(second.body.metadata.version).toBe(first.body.metadata.version);
  });

  it('answers a batch with hits and misses in request order, and an absent id as NOT_FOUND every time', async () => {
    for (let round = 0; round < 2; round++) {
      const response = await fetch(`${base}/features/v1/batch`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ view: 'items', entity_ids: ['e003', 'e001', 'nope', 'e002'] }) });
      const body = (await response.json()) as { results: { entity_id: string; status: string; features?: { clicks: number } }[] };
      expect(body.results.map((r) => [r.entity_id, r.status, r.features?.clicks])).toEqual([
        ['e003', 'PRESENT', 3],
        ['e001', 'PRESENT', 1],
        ['nope', 'NOT_FOUND', undefined],
        ['e002', 'PRESENT', 2],
      ]);
    }
  });

  it('never answers from a version readers have left: the lookup after a publish has the new values', async () => {
    expect((await get('e005')).body.features.clicks).toBe(5);
    expect((await get('e005')).tier).toBe('memory');
    await writeParquet(source, itemsSql(7));
    expect(await server.runner.run('items', 'manual')).toMatchObject({ status: 'succeeded', version: 2 });
    const after = await get('e005');
    expect(after).toMatchObject({ version: '2', body: { features: { clicks: 35 }, metadata: { version: 2 } } });
    expect(after.tier).not.toBe('memory');
    expect(await get('e005')).toMatchObject({ tier: 'memory', body: { features: { clicks: 35 } } });
  });

  it('keeps at most PROCESS_CACHE_ENTRIES rows per view, the oldest leaving first', async () => {
    for (let i = 10; i < 25; i++) await get(`e0${i}`);
    // e010 was among the first of the 15 read into a 10-entry cache: it has left; e024 is there.
    expect((await get('e024')).tier).toBe('memory');
    const evicted = await get('e010');
    expect(evicted.tier).toBe('redis');
    expect(evicted.body.features.clicks).toBe(70);
  });
});
