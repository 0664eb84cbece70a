// A run's job lock lives in one database session, which an idle timeout, a
// connection reaper or a network reset can kill mid-run. Postgres then
// releases the lock and another process may start the job; the run that lost
// its lock must not publish over it, and must say why it failed.
import path from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { parseJobDefinition } from '../../src/jobs/definition.js';
import { silentLogger } from '../../src/observability/log.js';
import { ensureSchema, listRuns, META_SCHEMA } from '../../src/stores/metadata.js';
import { PostgresDatabase } from '../../src/stores/postgres.js';
import { RedisHotTier } from '../../src/stores/redis.js';
import { runSync } from '../../src/sync/engine.js';
import { freshDatabase } from '../support/db.js';
import { tempDir, writeParquet } from '../support/fixtures.js';
import { startRedis, type RedisServer } from '../support/servers.js';

describe('a run that loses its job lock', () => {
  let database: { url: string; drop(): Promise<void> };
  let redis: RedisServer;
  let admin: pg.Client;
  // Two processes: each its own pool and its own Redis connection.
  let dbA: PostgresDatabase;
  let dbB: PostgresDatabase;
  let hotA: RedisHotTier;
  let hotB: RedisHotTier;

  beforeAll(async () => {
    [database, redis] = await Promise.all([freshDatabase(inject('databaseUrl'), 'lock_loss'), startRedis()]);
    admin = new pg.Client({ connectionString: database.url });
    await admin.connect();
    dbA = new PostgresDatabase({ url: database.url });
    dbB = new PostgresDatabase({ url: database.url });
    await ensureSchema(dbA);
    hotA = new RedisHotTier({ url: redis.url, commandTimeoutMs: 5000 });
    hotB = new RedisHotTier({ url: redis.url, commandTimeoutMs: 5000 });
  });

  afterAll(async () => {
    await Promise.allSettled([dbA?.close(), dbB?.close(), hotA?.close(), hotB?.close(), admin?.end()]);
    await Promise.allSettled([redis?.destroy(), database?.drop()]);
  });

  it('publishes nothing once another run has taken the job over, and says its lock was lost', async () => {
    const dir = await tempDir('lock-loss');
    const source = await writeParquet(path.join(dir, 's.parquet'), `SELECT 'k' || i AS id, TIMESTAMP '2026-01-01' + to_seconds(i) AS t, i AS n FROM range(1, 200001) t(i)`);
    const job = parseJobDefinition(path.join(dir, 'v.yaml'), JSON.stringify({ view: 'v', source, entity_key: 'id', event_time: 't', features: { n: { type: 'integer' } }, schedule: '0 0 * * *', freshness: '1d' }));
    const lockHolders = () =>
      admin.query<{ pid: number }>(`SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`);

    let runA: number | undefined;
    const a = runSync(job, { db: dbA, hot: hotA, log: silentLogger, batchRows: 8192, onRunStarted: (id) => (runA = id) }, 'manual');
    await expect.poll(() => runA, { timeout: 30_000, interval: 5 }).toBeDefined();
    // A's lock session dies; once Postgres has released the lock, B starts the job.
    const { rows: holders } = await lockHolders();
    expect(holders).toHaveLength(1);
    await admin.query('SELECT pg_terminate_backend($1)', [holders[0]!.pid]);
    await expect.poll(async () => (await lockHolders()).rows.length, { timeout: 10_000, interval: 10 }).toBe(0);
    const [ra, rb] = await Promise.all([a, runSync(job, { db: dbB, hot: hotB, log: silentLogger, batchRows: 8192 }, 'manual')]);

    expect(rb).toMatchObject({ status: 'succeeded', rowsWritten: 200_000 });
    expect(ra.status).toBe('failed');
    expect(ra.error).toMatch(new RegExp(`^run ${runA} was closed by another run of its job while it ran \\(this run's job lock was lost[^)]*\\); nothing of this run was published`));
    // Not retried: another run holds the job now.
    expect(ra.runId).toBe(runA);
    expect(ra.transient).toBe(false);

    // Only B's version was ever published and is served; A's run stays closed as B recorded it.
    const runs = await listRuns(dbB, 'v', 10);
    expect(runs.map((r) => [r.runId, r.status])).toEqual([
      [rb.runId, 'succeeded'],
      [runA, 'abandoned'],
    ]);
    const versions = await admin.query<{ version: string; state: string }>(`SELECT version, state FROM ${META_SCHEMA}.versions WHERE view = 'v' ORDER BY version`);
    expect(versions.rows.filter((v) => v.state === 'published').map((v) => Number(v.version))).toEqual([rb.version]);
    const [view] = (await admin.query<{ current_version: string }>(`SELECT current_version FROM ${META_SCHEMA}.views WHERE view = 'v'`)).rows;
    expect(Number(view!.current_version)).toBe(rb.version);
    // Nothing of A's version is left behind in either store.
    if (ra.version !== null && ra.version !== rb.version) {
      const tables = await admin.query(`SELECT 1 FROM pg_tables WHERE schemaname = 'featurestore_data' AND tablename = $1`, [`v__v${ra.version}`]);
      expect(tables.rows).toEqual([]);
      expect((await hotB.client.scan('0', 'MATCH', `fs:v:${ra.version}:*`, 'COUNT', 1_000_000))[1]).toEqual([]);
    }
  }, 120_000);
});
