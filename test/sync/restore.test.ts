// Postgres restored to an earlier state while Redis kept its keys: the next
// sync gets a version number Postgres no longer knows but the hot tier still
// holds. None of the lost version's keys may be served as part of the new
// one (an entity the new data lacks would otherwise answer, from the old data),
// not even a key a lookup filled after the version was dropped.
import path from 'node:path';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { startServer, type RunningServer } from '../../src/server.js';
import { hotKey, hotVersionMark, type HotTier } from '../../src/stores/hot-tier.js';
import { MemoryHotTier } from '../../src/stores/memory.js';
import { META_SCHEMA } from '../../src/stores/metadata.js';
import { freshDatabase } from '../support/db.js';
import { serverConfig, tempDir, writeJobs, writeParquet } from '../support/fixtures.js';
import { startRedis, type RedisServer } from '../support/servers.js';

const itemsSql = (n: number, factor: number) => `SELECT 'e' || i AS id, TIMESTAMP '2026-01-01' AS t, i * ${factor} AS n FROM range(1, ${n + 1}) t(i)`;

describe('a database restored to an earlier state', () => {
  let redis: RedisServer;
  let keys: Redis;
  let database: { url: string; drop(): Promise<void> };
  let server: RunningServer;
  let dir: string;
  let baseUrl: string;

  beforeAll(async () => {
    redis = await startRedis();
    keys = new Redis(redis.url);
    database = await freshDatabase(inject('databaseUrl'), 'restore');
    dir = await tempDir('restore');
    const source = await writeParquet(path.join(dir, 'items.parquet'), itemsSql(10, 1));
    await writeJobs(dir, [{ view: 'items', source, entity_key: 'id', event_time: 't', features: { n: { type: 'integer' } } }]);
    server = await startServer(serverConfig({ DATABASE_URL: database.url, REDIS_URL: redis.url, SYNC_JOBS_DIR: dir, PORT: '0' }));
    baseUrl = `http://127.0.0.1:${server.port}`;
  }, 60_000);

  afterAll(async () => {
    await server?.close();
    keys?.disconnect();
    await redis?.destroy();
    await database?.drop();
  });

  const lookup = async (id: string) => {
    const response = await fetch(`${baseUrl}/features/v1/${id}?view=items`);
    return { status: response.status, version: response.headers.get('Feature-Version'), body: (await response.json()) as { features?: { n: number } } };
  };

  it('keeps a dropped version\'s mark past the fill TTL, so a fill that lands after the drop goes when the number is claimed again (Redis, embedded)', async () => {
    const tiers: [string, HotTier][] = [['Redis', server.hot], ['embedded', new MemoryHotTier(120)]];
    for (const [name, tier] of tiers) {
      expect(await tier.claimVersion('late', 1), name).toBe(true);
      await tier.set([[hotKey('late', 1, 'a'), Buffer.from('v1')]]);
      // Reclaimed as an old version: its keys go, its mark stays (for the fill TTL and a margin).
      expect(await tier.dropVersion('late', 1), name).toBe(1);
      if (name === 'Redis') {
        const ttl = await keys.ttl(hotVersionMark('late', 1));
        expect(ttl).toBeGreaterThan(86_400);
        expect(ttl).toBeLessThanOrEqual(86_400 + 600);
      }
      // A lookup's fill that was in flight during the drop lands after it, with the fill TTL.
      await tier.set([[hotKey('late', 1, 'b'), Buffer.from('v1')]], 120);
      // The number is claimed again (a restore): the mark says it was used, and the late key is dropped with it.
      expect(await tier.claimVersion('late', 1), name).toBe(false);
      expect(await tier.dropVersion('late', 1, { release: true }), name).toBe(1);
      expect(await tier.claimVersion('late', 1), name).toBe(true);
      expect(await tier.get([hotKey('late', 1, 'a'), hotKey('late', 1, 'b')]), name).toEqual([null, null]);
    }
  });

  it('drops the hot tier keys of a version number Postgres lost before loading that number again, saying so', async () => {
    expect(await server.runner.run('items', 'manual')).toMatchObject({ status: 'succeeded', version: 1 });
    expect(await server.runner.run('items', 'manual', { force: true })).toMatchObject({ status: 'succeeded', version: 2, details: expect.not.objectContaining({ stale_hot_keys_dropped: expect.anything() }) });
    expect(await keys.exists(hotVersionMark('items', 2))).toBe(1);
    expect((await keys.getBuffer(hotKey('items', 2, 'e7')))).not.toBeNull();

    // As a restore from a backup taken after version 1 leaves Postgres: no trace of version 2. Redis kept its keys.
    await server.db.query(`ALTER TABLE ${META_SCHEMA}.views DISABLE TRIGGER views_next_generation`);
    await server.db.query(`UPDATE ${META_SCHEMA}.views SET current_version = 1, previous_version = NULL, generation = 1 WHERE view = 'items'`);
    await server.db.query(`ALTER TABLE ${META_SCHEMA}.views ENABLE TRIGGER views_next_generation`);
    await server.db.query(`DELETE FROM ${META_SCHEMA}.versions WHERE view = 'items' AND version = 2`);
    await server.db.query(`DELETE FROM ${META_SCHEMA}.runs WHERE job = 'items' AND version = 2`);
    await server.db.query('DROP TABLE featurestore_data.items__v2');
    // The restarted API follows the restored database.
    await server.close();
    server = await startServer(serverConfig({ DATABASE_URL: database.url, REDIS_URL: redis.url, SYNC_JOBS_DIR: dir, PORT: '0' }));
    baseUrl = `http://127.0.0.1:${server.port}`;
    expect((await lookup('e7')).version).toBe('1');

    // New data without e6..e10: version 2 again, and the old version 2's e7 must not come back with it.
    await writeParquet(path.join(dir, 'items.parquet'), itemsSql(5, 100));
    const run = await server.runner.run('items', 'manual', { force: true });
    expect(run).toMatchObject({ status: 'succeeded', version: 2, details: { stale_hot_keys_dropped: 10 } });
    await expect.poll(async () => (await lookup('e1')).version, { timeout: 5_000 }).toBe('2');
    expect(await lookup('e1')).toMatchObject({ status: 200, body: { features: { n: 100 } } });
    expect((await lookup('e7')).status).toBe(404);
    expect(await keys.getBuffer(hotKey('items', 2, 'e7'))).toBeNull();
    expect(await keys.exists(hotVersionMark('items', 2))).toBe(1);
  });
});
