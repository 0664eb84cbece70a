// A store lost in the middle of a run, and a source glob that matches no file:
// each fails the run loudly, leaves the previous version serving and a failed
// run record, and the next run succeeds without manual cleanup. This file has
// its own Postgres, since it stops it.
import { rename } from 'node:fs/promises';
import path from 'node:path';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServer, type RunningServer } from '../../src/server.js';
import { listRuns } from '../../src/stores/metadata.js';
import { serverConfig, tempDir, writeJobs, writeParquet } from '../support/fixtures.js';
import { startPostgres, startRedis, type PostgresServer, type RedisServer } from '../support/servers.js';

const rowsSql = (n: number, score: string) => `SELECT 'k' || i AS id, TIMESTAMP '2026-03-01' + INTERVAL (i) SECOND AS t, ${score} AS score FROM range(1, ${n + 1}) t(i)`;

describe('stores lost during a sync run', () => {
  let redis: RedisServer;
  let postgres: PostgresServer;
  let server: RunningServer;
  let dir: string;
  let source: string;
  let baseUrl: string;
  let keys: Redis;

  const publishSource = async (sql: string) => {
    await writeParquet(path.join(dir, 'next.parquet'), sql);
    await rename(path.join(dir, 'next.parquet'), source);
  };
  const served = async () => {
    const response = await fetch(`${baseUrl}/features/v1/batch`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ view: 'scores', entity_ids: ['k1', 'k700'] }) });
    return { status: response.status, version: response.headers.get('Feature-Version'), body: (await response.json()) as { results: { status: string; features?: { score: number } }[] } };
  };
  /** Resolves once the running sync has written part of `version` into Redis. */
  const loadUnderWay = (version: number) =>
    expect
      .poll(async () => (await keys.scan('0', 'MATCH', `fs:scores:${version}:*`, 'COUNT', 10_000))[1].length, { timeout: 60_000, interval: 10 })
      .toBeGreaterThan(0);

  beforeAll(async () => {
    [redis, postgres] = await Promise.all([startRedis(), startPostgres()]);
    keys = new Redis(redis.url, { maxRetriesPerRequest: 1 });
    keys.on('error', () => undefined);
    dir = await tempDir('store-loss');
    source = path.join(dir, 'scores.parquet');
    await publishSource(rowsSql(1000, 'i * 1.0'));
    await writeJobs(dir, [
      { view: 'scores', source, entity_key: 'id', event_time: 't', features: { score: { type: 'double' } } },
      { view: 'nothing', source: path.join(dir, 'incoming', '*.parquet'), entity_key: 'id', event_time: 't', features: { score: { type: 'double' } } },
    ]);
    // No retries: each loss must show as one failed run.
    server = await startServer(serverConfig({ DATABASE_URL: postgres.url, REDIS_URL: redis.url, SYNC_JOBS_DIR: dir, SYNC_BATCH_ROWS: '2048', SYNC_RETRY_ATTEMPTS: '1' }));
    expect(await server.runner.run('scores', 'manual')).toMatchObject({ status: 'succeeded', version: 1 });
    baseUrl = `http://127.0.0.1:${server.port}`;
  }, 120_000);

  afterAll(async () => {
    keys?.disconnect();
    await server?.close();
    await Promise.all([redis?.destroy(), postgres?.destroy()]);
  });

  it('a source glob that matches no file fails the run, saying so, and publishes nothing', async () => {
    const summary = await server.runner.run('nothing', 'manual');
    expect(summary.status).toBe('failed');
    expect(summary.error).toMatch(/incoming\/\*\.parquet/);
    expect(server.catalog.get('nothing')!.current).toBeNull();
    expect((await fetch(`${baseUrl}/features/v1/k1?view=nothing`)).status).toBe(503);
  });

  it('Redis stopped mid-load: the run fails, version 1 stays served, the next run succeeds', async () => {
    await publishSource(rowsSql(400_000, 'i * 2.0'));
    const run = server.runner.run('scores', 'manual');
    await loadUnderWay(2);
    await redis.stop();
    const summary = await run;
    expect(summary.status).toBe('failed');
    // The run itself says what broke; its process did not just die.
    expect(summary.error).toBeTruthy();
    expect(summary.error).not.toMatch(/sync process exited/);
    expect(summary.error).toMatch(/Redis/);
    // Postgres answers while Redis is away: still version 1, its values.
    const during = await served();
    expect(during).toMatchObject({ status: 200, version: '1' });
    expect(during.body.results.map((r) => r.features?.score)).toEqual([1, 700]);
    await redis.start();
    const next = await server.runner.run('scores', 'manual');
    expect(next).toMatchObject({ status: 'succeeded', rowsRead: 400_000, rowsWritten: 400_000 });
    await expect.poll(async () => (await served()).body.results.map((r) => r.features?.score), { timeout: 10_000 }).toEqual([2, 1400]);
  }, 180_000);

  it('Postgres stopped mid-load: the run fails, Redis keeps serving the published version, the next run succeeds', async () => {
    const before = await served();
    await publishSource(rowsSql(400_000, 'i * 3.0'));
    const run = server.runner.run('scores', 'manual');
    const next = Number(before.version) + 1;
    await loadUnderWay(next);
    await postgres.stop();
    const summary = await run;
    expect(summary.status).toBe('failed');
    expect(summary.error).not.toMatch(/sync process exited/);
    expect(summary.error).toMatch(/Postgres/);
    // What Redis holds of the published version is still served, with its values.
    const during = await served();
    expect(during).toMatchObject({ status: 200, version: before.version });
    expect(during.body.results.map((r) => r.features?.score)).toEqual([2, 1400]);
    await postgres.start();
    await expect.poll(async () => (await served()).status, { timeout: 15_000 }).toBe(200);
    expect((await served()).version).toBe(before.version);
    const again = await server.runner.run('scores', 'manual');
    expect(again).toMatchObject({ status: 'succeeded', rowsRead: 400_000, rowsWritten: 400_000 });
    await expect.poll(async () => (await served()).body.results.map((r) => r.features?.score), { timeout: 10_000 }).toEqual([3, 2100]);
    const runs = await listRuns(server.db, 'scores', 20);
    // No run is left "running"; the interrupted one is recorded as failed (or abandoned, closed by the next run).
    expect(runs.filter((r) => r.status === 'running')).toEqual([]);
    expect(runs.filter((r) => r.status === 'failed' || r.status === 'abandoned').length).toBeGreaterThanOrEqual(2);
  }, 180_000);
});
