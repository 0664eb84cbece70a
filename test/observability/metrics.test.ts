// /metrics moves with what happens: the request histogram with traffic, the
// per-view gauges with each published version, the sync counters with runs.
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { startServer, type RunningServer } from '../../src/server.js';
import { freshDatabase } from '../support/db.js';
import { serverConfig, tempDir, writeJobs, writeParquet } from '../support/fixtures.js';
import { startRedis, type RedisServer } from '../support/servers.js';

describe('metrics follow traffic and syncs', () => {
  let redis: RedisServer;
  let database: { url: string; drop(): Promise<void> };
  let server: RunningServer;
  let dir: string;
  const scrape = async () => (await fetch(`http://127.0.0.1:${server.port}/metrics`)).text();
  const value = (text: string, series: RegExp) => Number(new RegExp(`^${series.source} ([0-9.e+-]+)$`, 'm').exec(text)?.[1] ?? NaN);
  const source = (rows: number, asOf: string) => writeParquet(path.join(dir, 'm.parquet'), `SELECT 'k' || i AS id, TIMESTAMP '${asOf}' AS t, i AS n FROM range(1, ${rows + 1}) t(i)`);

  beforeAll(async () => {
    redis = await startRedis();
    database = await freshDatabase(inject('databaseUrl'), 'metrics');
    dir = await tempDir('metrics');
    await source(10, '2026-01-01');
    await writeJobs(dir, [{ view: 'm', source: path.join(dir, 'm.parquet'), entity_key: 'id', event_time: 't', features: { n: { type: 'integer', min: 0 } as never }, max_reject_share: 0.5 } as never]);
    server = await startServer(serverConfig({ DATABASE_URL: database.url, REDIS_URL: redis.url, SYNC_JOBS_DIR: dir }));
  });

  afterAll(async () => {
    await server?.close();
    await redis?.destroy();
    await database?.drop();
  });

  it('before the first publish reports version 0 and an age counting from start, then the version, rows, age and margin', async () => {
    const before = await scrape();
    // No version yet: version 0, and the time served without one as its age, so FeatureViewStale fires if the first
    // sync never succeeds within the objective.
    expect(value(before, /featurestore_view_version\{view="m"\}/)).toBe(0);
    const waiting = value(before, /featurestore_view_age_seconds\{view="m"\}/);
    expect(waiting).toBeGreaterThanOrEqual(0);
    expect(waiting).toBeLessThan(120);
    // Every outcome's series is there at 0 before any run, so the first failure is an increase Prometheus sees.
    for (const status of ['succeeded', 'failed', 'skipped']) expect(value(before, new RegExp(`featurestore_sync_runs_total\\{sync_job="m",status="${status}"\\}`))).toBe(0);
    await server.runner.run('m', 'manual');
    const text = await scrape();
    expect(value(text, /featurestore_view_version\{view="m"\}/)).toBe(1);
    expect(value(text, /featurestore_view_rows\{view="m"\}/)).toBe(10);
    const age = value(text, /featurestore_view_age_seconds\{view="m"\}/);
    expect(age).toBeGreaterThan((Date.now() - Date.parse('2026-01-01T00:00:00Z')) / 1000 - 5);
    expect(value(text, /featurestore_view_freshness_margin_seconds\{view="m"\}/)).toBeCloseTo(86_400 - age, -1);
    expect(value(text, /featurestore_sync_runs_total\{sync_job="m",status="succeeded"\}/)).toBe(1);
  });

  it('counts requests in the duration histogram by route and status', async () => {
    const count = (text: string, status: string) => value(text, new RegExp(`http_server_request_duration_seconds_count\\{http_request_method="GET",http_route="/features/v1/:entity_id",http_response_status_code="${status}"\\}`));
    const before = await scrape();
    for (let i = 1; i <= 7; i++) await fetch(`http://127.0.0.1:${server.port}/features/v1/k${i}?view=m`);
    await fetch(`http://127.0.0.1:${server.port}/features/v1/nope?view=m`);
    const after = await scrape();
    expect(count(after, '200') - (count(before, '200') || 0)).toBe(7);
    expect(count(after, '404') - (count(before, '404') || 0)).toBe(1);
    expect(value(after, /featurestore_lookups_total\{view="m",tier="redis"\}/)).toBeGreaterThanOrEqual(7);
  });

  it('moves the version and age gauges when a newer version is published, and counts rejects', async () => {
    await writeParquet(path.join(dir, 'm.parquet'), `SELECT 'k' || i AS id, TIMESTAMP '2026-06-01' AS t, CASE WHEN i = 12 THEN -1 ELSE i END AS n FROM range(1, 13) t(i)`);
    expect((await server.runner.run('m', 'manual')).status).toBe('succeeded');
    const text = await scrape();
    expect(value(text, /featurestore_view_version\{view="m"\}/)).toBe(2);
    expect(value(text, /featurestore_view_rows\{view="m"\}/)).toBe(11);
    expect(value(text, /featurestore_view_age_seconds\{view="m"\}/)).toBeLessThan((Date.now() - Date.parse('2026-06-01T00:00:00Z')) / 1000 + 5);
    expect(value(text, /featurestore_sync_rejects_total\{sync_job="m"\}/)).toBe(1);
    expect(value(text, /featurestore_sync_rows_total\{sync_job="m"\}/)).toBe(21);
  });
});
