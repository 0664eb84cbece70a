// The catalog only moves forward, and says so when the database shows an older
// switch than the one it serves (a restore), instead of going quiet about it.
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { loadJobDefinitions } from '../../src/jobs/definition.js';
import { startServer, type RunningServer } from '../../src/server.js';
import { Catalog } from '../../src/stores/catalog.js';
import { META_SCHEMA } from '../../src/stores/metadata.js';
import { freshDatabase } from '../support/db.js';
import { serverConfig, tempDir, writeJobs, writeParquet } from '../support/fixtures.js';
import { startRedis, type RedisServer } from '../support/servers.js';

describe('catalog', () => {
  let redis: RedisServer;
  let database: { url: string; drop(): Promise<void> };
  let server: RunningServer;
  let dir: string;

  beforeAll(async () => {
    redis = await startRedis();
    database = await freshDatabase(inject('databaseUrl'), 'catalog');
    dir = await tempDir('catalog');
    const source = await writeParquet(path.join(dir, 'items.parquet'), `SELECT 'e' || i AS id, TIMESTAMP '2026-01-01' AS t, i AS n FROM range(1, 11) t(i)`);
    await writeJobs(dir, [{ view: 'items', source, entity_key: 'id', event_time: 't', features: { n: { type: 'integer' } } }]);
    server = await startServer(serverConfig({ DATABASE_URL: database.url, REDIS_URL: redis.url, SYNC_JOBS_DIR: dir }));
    expect(await server.runner.run('items', 'manual')).toMatchObject({ status: 'succeeded' });
    expect(await server.runner.run('items', 'manual', { force: true })).toMatchObject({ status: 'succeeded' });
  }, 60_000);

  afterAll(async () => {
    await server?.close();
    await redis?.destroy();
    await database?.drop();
  });

  it('keeps serving what it served when the database shows an older switch, and reports it once', async () => {
    const reports: [string, number, number, { served: number; found: number }][] = [];
    const catalog = new Catalog(server.db, await loadJobDefinitions(dir), (...report) => reports.push(report));
    await catalog.refresh();
    const served = catalog.get('items')!.current!;
    expect(served.generation).toBeGreaterThan(1);
    // As a restore from an earlier backup would leave it (the trigger would otherwise raise it).
    await server.db.query(`ALTER TABLE ${META_SCHEMA}.views DISABLE TRIGGER views_next_generation`);
    await server.db.query(`UPDATE ${META_SCHEMA}.views SET generation = 1 WHERE view = 'items'`);
    await server.db.query(`ALTER TABLE ${META_SCHEMA}.views ENABLE TRIGGER views_next_generation`);
    await catalog.refresh();
    await catalog.refresh();
    expect(catalog.get('items')!.current).toBe(served);
    expect(reports).toEqual([['items', served.generation, 1, { served: served.version, found: served.version }]]);

    // Then switched again after the restore, up to the generation served but to another version: that too.
    await server.db.query(`ALTER TABLE ${META_SCHEMA}.views DISABLE TRIGGER views_next_generation`);
    await server.db.query(`UPDATE ${META_SCHEMA}.views SET generation = $1, current_version = $2 WHERE view = 'items'`, [served.generation, served.version - 1]);
    await server.db.query(`ALTER TABLE ${META_SCHEMA}.views ENABLE TRIGGER views_next_generation`);
    await catalog.refresh();
    await catalog.refresh();
    expect(catalog.get('items')!.current).toBe(served);
    expect(reports).toEqual([
      ['items', served.generation, 1, { served: served.version, found: served.version }],
      ['items', served.generation, served.generation, { served: served.version, found: served.version - 1 }],
    ]);

    // Or switched again as often as it lost: the served generation and version number, but another publish.
    await server.db.query(`ALTER TABLE ${META_SCHEMA}.views DISABLE TRIGGER views_next_generation`);
    await server.db.query(`UPDATE ${META_SCHEMA}.views SET current_version = $1 WHERE view = 'items'`, [served.version]);
    await server.db.query(`ALTER TABLE ${META_SCHEMA}.views ENABLE TRIGGER views_next_generation`);
    await server.db.query(`UPDATE ${META_SCHEMA}.versions SET published_at = published_at + interval '1 second' WHERE view = 'items' AND version = $1`, [served.version]);
    await catalog.refresh();
    await catalog.refresh();
    expect(catalog.get('items')!.current).toBe(served);
    expect(reports).toHaveLength(3);
    expect(reports[2]).toEqual(['items', served.generation, served.generation, { served: served.version, found: served.version }]);

    // A later switch to that other publish of the same version number serves it, not the object of the old publish:
    // its own as-of and publish time (and so its own ETags).
    await server.db.query(`UPDATE ${META_SCHEMA}.versions SET as_of = as_of + interval '30 days' WHERE view = 'items' AND version = $1`, [served.version]);
    await server.db.query(`UPDATE ${META_SCHEMA}.views SET switched_at = now() WHERE view = 'items'`);
    await catalog.refresh();
    const republished = catalog.get('items')!.current!;
    expect(republished.generation).toBe(served.generation + 1);
    expect(republished.version).toBe(served.version);
    expect(republished.publishedAt.getTime()).toBe(served.publishedAt.getTime() + 1000);
    expect(Date.parse(republished.asOf!)).toBe(Date.parse(served.asOf!) + 30 * 86_400_000);
    // A switch back to the same publish (a rollback there, say) keeps its resolved object.
    await server.db.query(`UPDATE ${META_SCHEMA}.views SET switched_at = now() WHERE view = 'items'`);
    await catalog.refresh();
    expect(catalog.get('items')!.current).toMatchObject({ generation: served.generation + 2, select: republished.select, asOf: republished.asOf });
  });
});
