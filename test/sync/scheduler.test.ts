// The server runs each job on its cron schedule, in a child process.
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { startServer, type RunningServer } from '../../src/server.js';
import { listRuns } from '../../src/stores/metadata.js';
import { freshDatabase } from '../support/db.js';
import { serverConfig, tempDir, writeJobs, writeParquet } from '../support/fixtures.js';
import { startRedis, type RedisServer } from '../support/servers.js';

describe('scheduler', () => {
  let redis: RedisServer;
  let database: { url: string; drop(): Promise<void> };
  let server: RunningServer;

  beforeAll(async () => {
    redis = await startRedis();
    database = await freshDatabase(inject('databaseUrl'), 'sched');
    const dir = await tempDir('sched');
    const source = await writeParquet(path.join(dir, 's.parquet'), `SELECT 'k' || i AS id, TIMESTAMP '2026-01-01' AS t, i AS n FROM range(1, 11) t(i)`);
    // Six-field cron: every two seconds.
    await writeJobs(dir, [{ view: 'ticks', source, entity_key: 'id', event_time: 't', features: { n: { type: 'integer' } }, schedule: '*/2 * * * * *' }]);
    server = await startServer(serverConfig({ DATABASE_URL: database.url, REDIS_URL: redis.url, SYNC_JOBS_DIR: dir, SCHEDULER_ENABLED: 'true' }));
  });

  afterAll(async () => {
    await server?.close();
    await redis?.destroy();
    await database?.drop();
  });

  it('runs the job on its schedule and serves what it published', async () => {
    await expect.poll(async () => (await listRuns(server.db, 'ticks', 10)).filter((r) => r.trigger === 'schedule' && r.status === 'succeeded').length, { timeout: 15_000 }).toBeGreaterThanOrEqual(2);
    const response = await fetch(`http://127.0.0.1:${server.port}/features/v1/k3?view=ticks`);
    expect(response.status).toBe(200);
    expect(((await response.json()) as { features: { n: number } }).features.n).toBe(3);
  });
});
