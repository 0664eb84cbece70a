// A run that fails, at any point, leaves the previous version serving
// unchanged, says why in its run record, and the next run needs no cleanup.
import { execFileSync } from 'node:child_process';
import { rename } from 'node:fs/promises';
import path from 'node:path';
import { Redis } from 'ioredis';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { startServer, type RunningServer } from '../../src/server.js';
import { hotKey } from '../../src/stores/hot-tier.js';
import { getRun, listRuns, META_SCHEMA } from '../../src/stores/metadata.js';
import { freshDatabase } from '../support/db.js';
import { serverConfig, tempDir, writeJobs, writeParquet } from '../support/fixtures.js';
import { startRedis, type RedisServer } from '../support/servers.js';

const rowsSql = (n: number, score: string) => `SELECT 'k' || i AS id, TIMESTAMP '2026-03-01' + INTERVAL (i) SECOND AS t, ${score} AS score, 'v' || i AS label FROM range(1, ${n + 1}) t(i)`;

describe('failed sync runs', () => {
  let redis: RedisServer;
  let database: { url: string; drop(): Promise<void> };
  let server: RunningServer;
  let dir: string;
  let source: string;
  let baseUrl: string;
  let keys: Redis;

  const fetchScores = async (ids: string[]) => {
    const response = await fetch(`${baseUrl}/features/v1/batch`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ view: 'scores', entity_ids: ids }) });
    expect(response.status).toBe(200);
    return { version: response.headers.get('Feature-Version'), body: (await response.json()) as { results: { entity_id: string; status: string; features?: { score: number } }[] } };
  };

  /** Replaces the source file atomically, as an upstream job would. */
  const publishSource = async (sql: string) => {
    await writeParquet(path.join(dir, 'next.parquet'), sql);
    await rename(path.join(dir, 'next.parquet'), source);
  };

  beforeAll(async () => {
    redis = await startRedis();
    keys = new Redis(redis.url);
    database = await freshDatabase(inject('databaseUrl'), 'failures');
    dir = await tempDir('failures');
    source = path.join(dir, 'scores.parquet');
    await publishSource(rowsSql(1000, 'i * 1.0'));
    await writeJobs(dir, [{ view: 'scores', source, entity_key: 'id', event_time: 't', features: { score: { type: 'double' }, label: { type: 'string' } } }]);
    server = await startServer(serverConfig({ DATABASE_URL: database.url, REDIS_URL: redis.url, SYNC_JOBS_DIR: dir, SYNC_BATCH_ROWS: '2048' }));
    expect(await server.runner.run('scores', 'manual')).toMatchObject({ status: 'succeeded', version: 1, rowsRead: 1000, rowsWritten: 1000 });
    baseUrl = `http://127.0.0.1:${server.port}`;
  });

  afterAll(async () => {
    keys?.disconnect();
    await server?.close();
    await redis?.destroy();
    await database?.drop();
  });

  const sample = ['k1', 'k500', 'k1000'];
  const v1 = { version: '1', scores: [1, 500, 1000] };
  const expectVersion1Served = async () => {
    const { version, body } = await fetchScores(sample);
    expect(version).toBe(v1.version);
    expect(body.results.map((r) => r.features?.score)).toEqual(v1.scores);
    expect((await fetchScores(['k5000'])).body.results[0]!.status).toBe('NOT_FOUND');
  };

  it('a sync process killed half-way through the load leaves version 1 served; the next run reclaims its leftovers', async () => {
    await publishSource(rowsSql(300_000, 'i * 2.0'));
    const run = server.runner.run('scores', 'manual');
    // Wait until the doomed run has written part of version 2 into Redis, then kill it.
    let pid: number | undefined;
    await expect
      .poll(
        async () => {
          const [, found] = await keys.scan('0', 'MATCH', 'fs:scores:2:*', 'COUNT', 10_000);
          return found.length;
        },
        { timeout: 30_000, interval: 10 },
      )
      .toBeGreaterThan(0);
    pid = Number(execFileSync('pgrep', ['-P', String(process.pid), '-f', 'sync/child'], { encoding: 'utf8' }).trim().split('\n')[0]);
    process.kill(pid, 'SIGKILL');
    const summary = await run;
    expect(summary.status).toBe('failed');
    expect(summary.error).toMatch(/sync process exited \(SIGKILL\) before finishing; nothing of it was published/);
    await expectVersion1Served();
    const record = await getRun(server.db, summary.runId);
    expect(record).toMatchObject({ status: 'failed', version: 2 });

    const next = await server.runner.run('scores', 'manual');
    expect(next).toMatchObject({ status: 'succeeded', version: 3, rowsRead: 300_000, rowsWritten: 300_000 });
    expect(next.details.reclaimed_dead_versions).toEqual([{ version: 2, hot_keys: expect.any(Number) }]);
    const [, leftover] = await keys.scan('0', 'MATCH', 'fs:scores:2:*', 'COUNT', 1_000_000);
    expect(leftover).toEqual([]);
    const tables = await server.db.query<{ n: number }>(`SELECT count(*)::int AS n FROM pg_tables WHERE schemaname = 'featurestore_data' AND tablename = 'scores__v2'`);
    expect(tables[0]!.n).toBe(0);
    await expect.poll(async () => (await fetchScores(['k5000'])).version, { timeout: 5_000 }).toBe('3');
    expect((await fetchScores(['k5000'])).body.results[0]!.features!.score).toBe(10_000);

    // Back to a small source for the following cases (a shrink past the limit, so forced):
    // version 4, and version 3 is kept as the previous one.
    await publishSource(rowsSql(1000, 'i * 1.0'));
    expect(await server.runner.run('scores', 'manual', { force: true })).toMatchObject({ status: 'succeeded', version: 4, details: { forced: true } });
    await expect.poll(async () => (await fetchScores(sample)).version, { timeout: 5_000 }).toBe('4');
    v1.version = '4';
  });

  it('a source that breaks the contract fails before writing anything, naming the column', async () => {
    await publishSource(`SELECT 'k' || i AS id, TIMESTAMP '2026-03-01' AS t, 'high' AS score, 'v' AS label FROM range(1, 10) t(i)`);
    const summary = await server.runner.run('scores', 'manual');
    expect(summary.status).toBe('failed');
    expect(summary.error).toMatch(/feature column "score" has type VARCHAR, expected double/);
    await publishSource(`SELECT 'k' || i AS id, TIMESTAMP '2026-03-01' AS t, 'v' AS label FROM range(1, 10) t(i)`);
    const missing = await server.runner.run('scores', 'manual');
    expect(missing.error).toMatch(/feature column "score" is missing from the source/);
    await expectVersion1Served();
  });

  it('data that cannot be served exactly is refused with the reason', async () => {
    await publishSource(`SELECT 'k' || i AS id, TIMESTAMP '2026-03-01' AS t, CASE WHEN i = 4 THEN 'nan'::DOUBLE ELSE 1.0 END AS score, 'a' || chr(0) AS label FROM range(1, 10) t(i)`);
    const summary = await server.runner.run('scores', 'manual');
    expect(summary.status).toBe('failed');
    expect(summary.error).toMatch(/9 of 9 rows \(100\.00%\) of view "scores" broke its constraints; the limit \(max_reject_share\) is 0\.00%/);
    expect(summary.error).toMatch(/8 × label: contains a NUL character, which Postgres text cannot store/);
    expect(summary.error).toMatch(/1 × score: is NaN or infinite/);
    await publishSource(`SELECT CASE WHEN i = 2 THEN 'bad key' ELSE 'k' || i END AS id, TIMESTAMP '2026-03-01' AS t, 1.0 AS score, 'x' AS label FROM range(1, 10) t(i)`);
    expect((await server.runner.run('scores', 'manual')).error).toMatch(/1 × id: not a valid entity id; ids must match .* \(e\.g\. got "bad key"\)/);
    await expectVersion1Served();
  });

  it('a missing or corrupt source file fails the run and keeps serving', async () => {
    await rename(source, `${source}.moved`);
    const gone = await server.runner.run('scores', 'manual');
    expect(gone.status).toBe('failed');
    expect(gone.error).toMatch(/cannot read the Parquet source .*scores\.parquet/);
    await rename(`${source}.moved`, source);
    const { writeFile } = await import('node:fs/promises');
    await writeFile(source, 'PAR1 this is not parquet');
    const corrupt = await server.runner.run('scores', 'manual');
    expect(corrupt.status).toBe('failed');
    expect(corrupt.error).toMatch(/cannot read the Parquet source|parquet/i);
    await expectVersion1Served();
  });

  it('records every run, and no version is left half-written', async () => {
    const runs = await listRuns(server.db, 'scores', 50);
    expect(runs.filter((r) => r.status === 'running')).toEqual([]);
    expect(runs.filter((r) => r.status === 'failed').every((r) => r.error && r.finishedAt)).toBe(true);
    const versions = await server.db.query<{ version: number; state: string }>(`SELECT version, state FROM ${META_SCHEMA}.versions WHERE view = 'scores' ORDER BY version`);
    expect(versions.filter((v) => v.state === 'loading')).toEqual([]);
    expect(versions.filter((v) => v.state === 'published').map((v) => Number(v.version))).toEqual([3, 4]);
  });

  it('a failure after publishing (older versions cannot be reclaimed) keeps the new version served in full and the run succeeded, saying what was left; the next run reclaims it', async () => {
    const table = async (version: number) =>
      (await server.db.query<{ n: number }>(`SELECT count(*)::int AS n FROM pg_tables WHERE schemaname = 'featurestore_data' AND tablename = $1`, [`scores__v${version}`]))[0]!.n;
    // Redis refuses UNLINK, which reclaiming a version uses: its writes and reads still work.
    await keys.call('ACL', 'SETUSER', 'default', '-unlink');
    try {
      await publishSource(rowsSql(1000, 'i * 5.0'));
      const summary = await server.runner.run('scores', 'manual');
      expect(summary).toMatchObject({ status: 'succeeded', version: 5 });
      expect(summary.details.reclaim_failed).toMatch(/older versions were not reclaimed \(the next run retries\): .*unlink/i);
      expect(await getRun(server.db, summary.runId)).toMatchObject({ status: 'succeeded', version: 5, details: { reclaim_failed: summary.details.reclaim_failed } });
      // The published version is whole in Postgres: a Redis miss is answered from it, and an unknown id is still a 404.
      expect(await table(5)).toBe(1);
      await keys.del(hotKey('scores', 5, 'k500'));
      await expect.poll(async () => (await fetchScores(sample)).version, { timeout: 5_000 }).toBe('5');
      const { body } = await fetchScores(['k500', 'k1000', 'k5000']);
      expect(body.results.map((r) => [r.status, r.features?.score])).toEqual([['PRESENT', 2500], ['PRESENT', 5000], ['NOT_FOUND', undefined]]);
    } finally {
      await keys.call('ACL', 'SETUSER', 'default', '+unlink');
    }
    await publishSource(rowsSql(1000, 'i * 6.0'));
    const next = await server.runner.run('scores', 'manual');
    expect(next).toMatchObject({ status: 'succeeded', version: 6 });
    expect(next.details.reclaimed_versions).toEqual([{ version: 3, hot_keys: expect.any(Number) }, { version: 4, hot_keys: expect.any(Number) }]);
    expect(next.details.reclaim_failed).toBeUndefined();
    expect([await table(3), await table(4), await table(5), await table(6)]).toEqual([0, 0, 1, 1]);
  });

  it('a sync process that dies after publishing (while reclaiming) is reported as the success its record holds', async () => {
    // A reader's open transaction holds version 5's table, so the reclaim's DROP waits there.
    const reader = new pg.Client({ connectionString: database.url });
    await reader.connect();
    try {
      await reader.query('BEGIN');
      await reader.query('SELECT 1 FROM featurestore_data.scores__v5 LIMIT 1');
      await publishSource(rowsSql(1000, 'i * 7.0'));
      const run = server.runner.run('scores', 'manual');
      await expect.poll(async () => (await listRuns(server.db, 'scores', 1))[0], { timeout: 30_000, interval: 20 }).toMatchObject({ status: 'succeeded', version: 7 });
      process.kill(Number(execFileSync('pgrep', ['-P', String(process.pid), '-f', 'sync/child'], { encoding: 'utf8' }).trim().split('\n')[0]), 'SIGKILL');
      const summary = await run;
      expect(summary).toMatchObject({ status: 'succeeded', version: 7, rowsWritten: 1000, error: null });
      expect(summary.details.process_exited_after_publish).toMatch(/the sync process exited \(SIGKILL\) before finishing/);
      await expect.poll(async () => (await fetchScores(['k1'])).version, { timeout: 5_000 }).toBe('7');
      expect((await fetchScores(['k1'])).body.results[0]!.features!.score).toBe(7);
    } finally {
      await reader.end();
    }
  });

  it('a source replaced while a run reads it publishes nothing of that read; the retry publishes the new file whole, the same in both stores', async () => {
    await publishSource(rowsSql(300_000, 'i * 8.0'));
    const run = server.runner.run('scores', 'manual');
    // The load of version 8 is under way (it is in Redis) when upstream renames a new file into place.
    await expect.poll(async () => (await keys.scan('0', 'MATCH', 'fs:scores:8:*', 'COUNT', 10_000))[1].length, { timeout: 30_000, interval: 10 }).toBeGreaterThan(0);
    await publishSource(rowsSql(300_000, 'i * 9.0'));
    const summary = await run;
    expect(summary).toMatchObject({ status: 'succeeded', version: 9, rowsWritten: 300_000 });
    const [, attempt] = await listRuns(server.db, 'scores', 2);
    expect(attempt).toMatchObject({ status: 'failed', version: 8 });
    expect(attempt!.error).toMatch(/^the source .*scores\.parquet changed while the run read it \(a file was replaced, added or removed\)/);
    await expect.poll(async () => (await fetchScores(['k1'])).version, { timeout: 5_000 }).toBe('9');
    const { body } = await fetchScores(['k1', 'k150000', 'k300000']);
    expect(body.results.map((r) => r.features?.score)).toEqual([9, 1_350_000, 2_700_000]);
    const stored = await server.db.query<{ score: number }>(`SELECT score FROM featurestore_data.scores__v9 WHERE entity_id = ANY($1) ORDER BY score`, [['k1', 'k150000', 'k300000']]);
    expect(stored.map((r) => Number(r.score))).toEqual([9, 1_350_000, 2_700_000]);
  }, 120_000);

  it('a served version whose data is gone from both stores (dropped by hand, a partial restore) answers 503 with Retry-After, not a 500; the next sync serves again', async () => {
    await server.db.query('DROP TABLE featurestore_data.scores__v9');
    for (const id of ['k1', 'k2']) await keys.del(hotKey('scores', 9, id));
    // The read meets the missing table, re-reads the catalog, which still names version 9, and meets it again.
    const response = await fetch(`${baseUrl}/features/v1/batch`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ view: 'scores', entity_ids: ['k1', 'k2'] }) });
    expect(response.status).toBe(503);
    expect(response.headers.get('Retry-After')).toBe('1');
    expect(await response.json()).toMatchObject({ type: expect.stringMatching(/store-unavailable$/) });
    await publishSource(rowsSql(1000, 'i * 10.0'));
    expect(await server.runner.run('scores', 'manual', { force: true })).toMatchObject({ status: 'succeeded', version: 10 });
    await expect.poll(async () => (await fetchScores(['k1'])).version, { timeout: 5_000 }).toBe('10');
    expect((await fetchScores(['k2'])).body.results[0]!.features!.score).toBe(20);
  }, 60_000);
});
