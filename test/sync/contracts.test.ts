// Sync jobs that data teams can trust: for each way data goes wrong, the run's
// status and message, its record's counts, and that what was served before a
// failed run is still served after it. Parquet written by DuckDB, real
// Postgres and Redis.
import { spawn } from 'node:child_process';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { parseJobDefinition, type JobDefinition } from '../../src/jobs/definition.js';
import { silentLogger } from '../../src/observability/log.js';
import { SyncDataError } from '../../src/sync/plan.js';
import { startServer, type RunningServer } from '../../src/server.js';
import { toServedVersion } from '../../src/stores/catalog.js';
import { hotKey } from '../../src/stores/hot-tier.js';
import { decodeHotValue } from '../../src/stores/hot-value.js';
import { getRun, META_SCHEMA, readPublishedVersions, rollbackView } from '../../src/stores/metadata.js';
import { FeatureReader } from '../../src/stores/reader.js';
import { isTransient, jobLockKey, runSync, type RunOptions, type RunSummary } from '../../src/sync/engine.js';
import { freshDatabase } from '../support/db.js';
import { serverConfig, tempDir, writeJobs, writeParquet, type JobYaml } from '../support/fixtures.js';
import { startRedis, type RedisServer } from '../support/servers.js';

describe('sync contracts, rejects, duplicates, guards and versions', () => {
  let redis: RedisServer;
  let database: { url: string; drop(): Promise<void> };
  let server: RunningServer;
  let dir: string;
  let baseUrl: string;

  /** Writes the view's source from SQL and runs its job once, in this process. */
  const sync = async (yaml: Omit<JobYaml, 'source'>, sql: string, options: RunOptions = {}): Promise<{ summary: RunSummary; job: JobDefinition }> => {
    const source = await writeParquet(path.join(dir, `${yaml.view}.parquet`), sql);
    const job = parseJobDefinition(path.join(dir, `${yaml.view}.yaml`), JSON.stringify({ schedule: '0 0 * * *', freshness: '1d', ...yaml, source }));
    const summary = await runSync(job, { db: server.db, hot: server.hot, log: silentLogger, batchRows: 1000, retry: { attempts: 1, baseDelayMs: 1 } }, 'manual', options);
    return { summary, job };
  };

  /** The version readers are switched to now, as the serving side resolves it. */
  const currentServedVersion = async (view: string) => {
    const published = (await readPublishedVersions(server.db)).find((v) => v.view === view);
    return published && toServedVersion(published);
  };

  /** What readers get now for these ids of a view (through the real read path). */
  const served = async (view: string, ids: string[]) => {
    const version = await currentServedVersion(view);
    if (!version) return { version: null, rows: ids.map(() => null) };
    const { rows } = await new FeatureReader(server.db, server.hot, { fillTtlSeconds: 60 }).read(version, ids);
    return { version: version.version, rows: rows.map((r) => (r ? Object.fromEntries(version.features.map((f, i) => [f.name, r.values[i]])) : null)) };
  };

  const rejectsOf = (runId: number) =>
    server.db.query<{ job: string; entity_id: string | null; column_name: string; reason: string }>(`SELECT job, entity_id, column_name, reason FROM ${META_SCHEMA}.rejects WHERE run_id = $1 ORDER BY entity_id`, [runId]);

  const base = { entity_key: 'id', event_time: 't', features: { score: { type: 'double' } } };
  const rows = (n: number, score = 'i * 1.0', extra = '') => `SELECT 'k' || i AS id, TIMESTAMP '2026-01-01' + INTERVAL (i) MINUTE AS t, ${score} AS score${extra} FROM range(1, ${n + 1}) t(i)`;

  beforeAll(async () => {
    redis = await startRedis();
    database = await freshDatabase(inject('databaseUrl'), 'contracts');
    dir = await tempDir('contracts');
    const prices = await writeParquet(path.join(dir, 'prices.parquet'), `SELECT 'p' || i AS sku, TIMESTAMP '2026-05-01' AS t, i * 10 AS price FROM range(1, 6) t(i)`);
    const pricesV2 = await writeParquet(path.join(dir, 'prices_v2.parquet'), `SELECT 'p' || i AS sku, TIMESTAMP '2026-05-02' AS t, (i * 1000)::BIGINT AS price_cents, 'EUR' AS currency FROM range(1, 6) t(i)`);
    await writeJobs(dir, [
      { view: 'prices', source: prices, entity_key: 'sku', event_time: 't', features: { price: { type: 'double' } } },
      { view: 'prices_v2', source: pricesV2, entity_key: 'sku', event_time: 't', features: { price_cents: { type: 'integer' }, currency: { type: 'string', allowed: ['EUR', 'USD'] } as never } },
    ]);
    // Deprecate v1 in favour of v2.
    const { readFile, writeFile } = await import('node:fs/promises');
    const v1 = JSON.parse(await readFile(path.join(dir, 'prices.yaml'), 'utf8'));
    await writeFile(path.join(dir, 'prices.yaml'), JSON.stringify({ ...v1, deprecated: { since: '2026-06-01', sunset: '2027-01-31', successor: 'prices_v2' } }));
    server = await startServer(serverConfig({ DATABASE_URL: database.url, REDIS_URL: redis.url, SYNC_JOBS_DIR: dir }));
    baseUrl = `http://127.0.0.1:${server.port}`;
  });

  afterAll(async () => {
    await server?.close();
    await redis?.destroy();
    await database?.drop();
  });

  describe('contract columns', () => {
    it('reports an extra source column and ignores it', async () => {
      const { summary } = await sync({ view: 'c_extra', ...base }, rows(10, 'i * 1.0', ", 'x' AS brand_new"));
      expect(summary).toMatchObject({ status: 'succeeded', rowsRead: 10, rowsWritten: 10, details: { ignored_columns: ['brand_new'] } });
      expect((await getRun(server.db, summary.runId))!.details).toMatchObject({ ignored_columns: ['brand_new'] });
    });

    it('fails on a removed, a renamed and a retyped column, naming expected and found, and keeps serving', async () => {
      expect((await sync({ view: 'c_cols', ...base }, rows(10))).summary.status).toBe('succeeded');
      const removed = await sync({ view: 'c_cols', ...base }, `SELECT 'k' || i AS id, TIMESTAMP '2026-01-02' AS t FROM range(1, 11) t(i)`);
      expect(removed.summary).toMatchObject({ status: 'failed', rowsWritten: 0 });
      expect(removed.summary.error).toMatch(/feature column "score" is missing from the source \(expected double/);
      const renamed = await sync({ view: 'c_cols', ...base }, `SELECT 'k' || i AS id, TIMESTAMP '2026-01-02' AS t, i * 2.0 AS rating FROM range(1, 11) t(i)`);
      expect(renamed.summary.error).toMatch(/feature column "score" is missing from the source .*Source columns: id VARCHAR, t TIMESTAMP, rating DECIMAL/);
      const retyped = await sync({ view: 'c_cols', ...base }, `SELECT 'k' || i AS id, TIMESTAMP '2026-01-02' AS t, 'high' AS score FROM range(1, 11) t(i)`);
      expect(retyped.summary.error).toMatch(/feature column "score" has type VARCHAR, expected double/);
      const record = await getRun(server.db, retyped.summary.runId);
      expect(record).toMatchObject({ status: 'failed', rowsWritten: 0, details: { contract_violations: [expect.stringContaining('"score" has type VARCHAR')] } });
      expect(await served('c_cols', ['k3'])).toEqual({ version: 1, rows: [{ score: 3 }] });
    });

    it('refuses a breaking change to a published contract and points to a new view version', async () => {
      const retype = await sync({ view: 'c_cols', entity_key: 'id', event_time: 't', features: { score: { type: 'string' } } }, `SELECT 'k' || i AS id, TIMESTAMP '2026-01-02' AS t, 'x' AS score FROM range(1, 11) t(i)`);
      expect(retype.summary.error).toMatch(/breaks what its callers rely on: feature "score" changed type from double to string\. Publish the new contract as a new view \(for example "c_cols_v2"\)/);
      // Adding a feature is compatible.
      const grow = await sync({ view: 'c_cols', entity_key: 'id', event_time: 't', features: { score: { type: 'double' }, rank: { type: 'integer' } } }, rows(10, 'i * 1.0', ', i AS rank'));
      expect(grow.summary).toMatchObject({ status: 'succeeded', version: 2 });
    });

    it('refuses another entity key, whose ids would be mixed with the old ones, and shows how to keep a renamed one', async () => {
      const keyed = (entityKey: string, transform?: string) => ({ view: 'c_rekey', entity_key: entityKey, event_time: 't', mode: 'incremental', features: { score: { type: 'double' } }, ...(transform ? { transform } : {}) }) as never;
      expect((await sync(keyed('user_id'), `SELECT 'u1' AS user_id, 'a1' AS acct, TIMESTAMP '2026-01-01' AS t, 1.0 AS score`)).summary).toMatchObject({ status: 'succeeded', version: 1 });
      const rekeyed = await sync(keyed('acct'), `SELECT 'u1' AS user_id, 'a1' AS acct, TIMESTAMP '2026-01-02' AS t, 2.0 AS score`);
      expect(rekeyed.summary.error).toMatch(
        /breaks what its callers rely on: the entity key changed from column "user_id" to "acct" \(if only the column's name changed and the ids are the same, keep entity_key: user_id and rename the column in a transform: SELECT \*, "acct" AS "user_id" FROM source\)\. Publish the new contract as a new view/,
      );
      expect(await served('c_rekey', ['u1', 'a1'])).toEqual({ version: 1, rows: [{ score: 1 }, null] });
      // The column renamed at the source, kept under its old name: compatible.
      const renamed = await sync(keyed('user_id', 'SELECT * EXCLUDE (uid), uid AS user_id FROM source'), `SELECT 'u1' AS uid, TIMESTAMP '2026-01-02' AS t, 2.0 AS score`);
      expect(renamed.summary).toMatchObject({ status: 'succeeded', version: 2 });
      expect(await served('c_rekey', ['u1'])).toEqual({ version: 2, rows: [{ score: 2 }] });
    });
  });

  describe('epoch time units', () => {
    const epochJob = (unit: string) => ({ view: 'c_epoch', entity_key: 'id', event_time: { column: 'ts', unit }, features: { score: { type: 'double' } } }) as never;
    const epochRows = (scale: string) => `SELECT 'k' || i AS id, (1767225600 + i * 60)::BIGINT ${scale} AS ts, i * 1.0 AS score FROM range(1, 21) t(i)`;

    it('serves epoch seconds as UTC times when declared as seconds', async () => {
      const { summary } = await sync(epochJob('s'), epochRows(''));
      expect(summary).toMatchObject({ status: 'succeeded', watermark: '2026-01-01T00:20:00.000000Z' });
      const version = (await currentServedVersion('c_epoch'))!;
      const { rows } = await new FeatureReader(server.db, server.hot, { fillTtlSeconds: 60 }).read(version, ['k1']);
      expect(rows[0]!.eventTime).toBe('2026-01-01T00:01:00.000000Z');
    });

    it('fails when seconds are declared but milliseconds arrive, and the reverse, saying which unit the data looks like', async () => {
      const ms = await sync(epochJob('s'), epochRows('* 1000'));
      expect(ms.summary.status).toBe('failed');
      expect(ms.summary.error).toMatch(/column "ts" is declared in epoch seconds but its values look like epoch milliseconds \(median 1767226\d+\); fix the source or declare unit: ms/);
      const s = await sync(epochJob('ms'), epochRows(''));
      expect(s.summary.error).toMatch(/column "ts" is declared in epoch milliseconds but its values look like epoch seconds/);
      expect(await served('c_epoch', ['k1'])).toEqual({ version: 1, rows: [{ score: 1 }] });
    });

    it('reads epoch seconds stored as 32-bit integers, and turns a number in another unit into a reject, never an overflow', async () => {
      const int32 = await sync({ ...(epochJob('s') as object), view: 'c_epoch32' } as never, `SELECT 'k' || i AS id, (1767225600 + i * 60)::INTEGER AS ts, i * 1.0 AS score FROM range(1, 21) t(i)`);
      expect(int32.summary).toMatchObject({ status: 'succeeded', rowsWritten: 20, watermark: '2026-01-01T00:20:00.000000Z' });
      // One value in microseconds among seconds: a million times too large for any time.
      const mixed = await sync({ ...(epochJob('s') as object), view: 'c_epoch_mixed', max_reject_share: 0.1 } as never, `SELECT 'k' || i AS id, CASE WHEN i = 3 THEN (1767225600 + i * 60) * 1000000 ELSE 1767225600 + i * 60 END::BIGINT AS ts, i * 1.0 AS score FROM range(1, 21) t(i)`);
      expect(mixed.summary).toMatchObject({ status: 'succeeded', rowsWritten: 19, details: { rows_rejected: 1 } });
      expect(await rejectsOf(mixed.summary.runId)).toMatchObject([{ entity_id: 'k3', column_name: 'ts', reason: 'the event time is null or not an epoch time in seconds' }]);
    });

    it('rejects values no contract type holds (microseconds declared as seconds, integers past 64 bits, infinite times) rather than loading nulls or failing the run', async () => {
      const job = { view: 'c_unfit', entity_key: 'id', event_time: 't', max_reject_share: 0.5, features: { seen: { type: 'timestamp', unit: 's' }, n: { type: 'integer' }, at: { type: 'timestamp' } } } as never;
      const { summary } = await sync(
        job,
        `SELECT 'k' || i AS id, CASE WHEN i = 4 THEN '-infinity'::TIMESTAMP ELSE TIMESTAMP '2026-01-01' END AS t,
                CASE WHEN i = 1 THEN 1767225600000000 ELSE 1767225600 + i END::BIGINT AS seen,
                CASE WHEN i = 2 THEN 18446744073709551615 ELSE i END::UBIGINT AS n,
                CASE WHEN i = 3 THEN 'infinity'::TIMESTAMP WHEN i = 6 THEN make_timestamp(-70000000000000000) ELSE TIMESTAMP '2025-06-01' END AS at
           FROM range(1, 11) t(i)`,
      );
      expect(summary).toMatchObject({ status: 'succeeded', rowsRead: 10, rowsWritten: 5, details: { rows_rejected: 5 } });
      expect(await rejectsOf(summary.runId)).toMatchObject([
        { entity_id: 'k1', column_name: 'seen', reason: 'is not an epoch time in seconds (got 1767225600000000)' },
        { entity_id: 'k2', column_name: 'n', reason: `is beyond ±${Number.MAX_SAFE_INTEGER}, which JSON clients cannot read exactly (got 18446744073709551615)` },
        { entity_id: 'k3', column_name: 'at', reason: 'is an infinite time, which JSON cannot carry (got infinity)' },
        { entity_id: 'k4', column_name: 't', reason: 'the event time is infinite (got -infinity)' },
        // A year BC: Postgres and DuckDB write it differently, so the stores would disagree.
        { entity_id: 'k6', column_name: 'at', reason: expect.stringMatching(/^is outside years 1 to 9999 \(got .*\)$/) },
      ]);
      expect((await served('c_unfit', ['k1', 'k5'])).rows).toEqual([null, { seen: '2026-01-01T00:00:05.000000Z', n: 5, at: '2025-06-01T00:00:00.000000Z' }]);
    });

    it('asks for a unit when an epoch number has none declared', async () => {
      const { summary } = await sync({ view: 'c_epoch2', entity_key: 'id', event_time: 'ts', features: { score: { type: 'double' } } }, epochRows(''));
      expect(summary.error).toMatch(/event-time column "ts" holds BIGINT numbers; if they are epoch times, declare their unit \(event_time: \{ column: ts, unit: s \| ms \| us \}\)/);
    });
  });

  describe('row rejects', () => {
    const constrained = (share: number) => ({
      view: 'c_rejects',
      entity_key: 'id',
      event_time: 't',
      max_reject_share: share,
      features: { score: { type: 'double', nullable: false, min: 0, max: 100 }, tier: { type: 'string', allowed: ['gold', 'silver'] } },
    });
    const data = (bad: number) =>
      `SELECT 'k' || i AS id, TIMESTAMP '2026-01-01' AS t,
              CASE WHEN i <= ${bad} AND i % 3 = 0 THEN NULL WHEN i <= ${bad} AND i % 3 = 1 THEN 150.0 ELSE 50.0 END AS score,
              CASE WHEN i <= ${bad} AND i % 3 = 2 THEN 'bronze' ELSE 'gold' END AS tier
         FROM range(1, 101) t(i)`;

    it('leaves out rows that break constraints when under the threshold, and records each with its reason', async () => {
      const { summary } = await sync(constrained(0.05), data(3));
      expect(summary).toMatchObject({ status: 'succeeded', rowsRead: 100, rowsWritten: 97, details: { rows_rejected: 3, duplicates_dropped: 0 } });
      expect(await rejectsOf(summary.runId)).toEqual([
        { job: 'c_rejects', entity_id: 'k1', column_name: 'score', reason: 'is above the maximum 100 (got 150.0)' },
        { job: 'c_rejects', entity_id: 'k2', column_name: 'tier', reason: 'is not an allowed value (got bronze)' },
        { job: 'c_rejects', entity_id: 'k3', column_name: 'score', reason: 'is null, and the contract says nullable: false' },
      ]);
      expect(await served('c_rejects', ['k1', 'k4'])).toMatchObject({ version: 1, rows: [null, { score: 50, tier: 'gold' }] });
    });

    it('fails the run over the threshold, publishes nothing of it, and keeps the rejects for inspection', async () => {
      const { summary } = await sync(constrained(0.05), data(10));
      expect(summary.status).toBe('failed');
      expect(summary.error).toMatch(/10 of 100 rows \(10\.00%\) of view "c_rejects" broke its constraints; the limit \(max_reject_share\) is 5\.00%\. Commonest: 4 × score: is above the maximum 100/);
      expect((await rejectsOf(summary.runId)).length).toBe(10);
      expect(await served('c_rejects', ['k1'])).toMatchObject({ version: 1, rows: [null] });
      // The default threshold is zero: one bad row fails the run.
      const strict = await sync({ ...constrained(0.05), max_reject_share: undefined } as never, data(1));
      expect(strict.summary.error).toMatch(/1 of 100 rows \(1\.00%\).*the limit \(max_reject_share\) is 0\.00%/);
    });

    it('rejects rows whose event time is far in the future, so they cannot move the watermark', async () => {
      const { summary } = await sync({ ...base, view: 'c_future', max_reject_share: 0.5 } as never, `SELECT 'k' || i AS id, CASE WHEN i = 1 THEN TIMESTAMP '2999-01-01' ELSE TIMESTAMP '2026-01-01' END AS t, 1.0 AS score FROM range(1, 5) t(i)`);
      expect(summary).toMatchObject({ status: 'succeeded', rowsWritten: 3, watermark: '2026-01-01T00:00:00.000000Z' });
      expect((await rejectsOf(summary.runId))[0]!.reason).toMatch(/the event time 2999-01-01T00:00:00.000000Z is more than a day in the future/);
    });
  });

  describe('duplicates', () => {
    it('keeps the latest event time per entity, breaks ties deterministically, and counts what it dropped', async () => {
      const sql = `SELECT * FROM (VALUES
          ('a', TIMESTAMP '2026-01-01 10:00', 1.0), ('a', TIMESTAMP '2026-01-01 12:00', 2.0), ('a', TIMESTAMP '2026-01-01 11:00', 3.0),
          ('b', TIMESTAMP '2026-01-01 09:00', 5.0), ('b', TIMESTAMP '2026-01-01 09:00', 4.0),
          ('c', TIMESTAMP '2026-01-01 08:00', 6.0)) v(id, t, score)`;
      const { summary } = await sync({ view: 'c_dups', ...base }, sql);
      expect(summary).toMatchObject({ status: 'succeeded', rowsRead: 6, rowsWritten: 3, details: { duplicates_dropped: 3, rows_rejected: 0 } });
      expect(await served('c_dups', ['a', 'b', 'c'])).toEqual({ version: 1, rows: [{ score: 2 }, { score: 5 }, { score: 6 }] });
      // The same rows in another order give the same answer.
      const reversed = `SELECT * FROM (${sql}) ORDER BY score DESC`;
      expect((await sync({ view: 'c_dups', ...base }, reversed)).summary.status).toBe('succeeded');
      expect(await served('c_dups', ['a', 'b', 'c'])).toEqual({ version: 2, rows: [{ score: 2 }, { score: 5 }, { score: 6 }] });
    });
  });

  describe('incremental mode', () => {
    const inc = { view: 'c_inc', entity_key: 'id', event_time: 't', mode: 'incremental', lookback: '1h', delete_column: 'gone', features: { score: { type: 'double', nullable: false } } } as never;
    const history: string[] = [];
    const append = (...rows: string[]) => {
      history.push(...rows);
      return `SELECT * FROM (VALUES ${history.join(', ')}) v(id, t, score, gone)`;
    };
    /** Scores as Postgres holds them, after checking Redis holds exactly the same. */
    const readBoth = async (ids: string[]) => {
      const version = (await currentServedVersion('c_inc'))!;
      const fromPg = await new FeatureReader(server.db, null, { fillTtlSeconds: 60 }).read(version, ids);
      const fromRedis = await server.hot.get(ids.map((id) => hotKey('c_inc', version.version, id)));
      expect(fromRedis.map((v) => (v ? decodeHotValue(v) : null))).toEqual(fromPg.rows);
      return { version: version.version, scores: fromPg.rows.map((r) => (r ? r.values[0] : null)) };
    };

    it('loads everything first, then only rows past the watermark minus the lookback, with upserts and deletes', async () => {
      const first = await sync(inc, append(...[1, 2, 3, 4, 5].map((i) => `('k${i}', TIMESTAMP '2026-02-01 10:00', ${i}.0, false)`)));
      expect(first.summary).toMatchObject({ status: 'succeeded', version: 1, rowsRead: 5, rowsWritten: 5 });
      const second = await sync(inc, append(`('k1', TIMESTAMP '2026-02-01 11:00', 10.0, false)`, `('k6', TIMESTAMP '2026-02-01 11:00', 6.0, false)`, `('k2', TIMESTAMP '2026-02-01 11:00', NULL, true)`));
      // Window: after 10:00 - 1h = 09:00, so the first batch is re-read too, and changes nothing.
      expect(second.summary).toMatchObject({
        status: 'succeeded',
        version: 2,
        rowsRead: 8,
        watermark: '2026-02-01T11:00:00.000000Z',
        details: { window_start: '2026-02-01T09:00:00.000Z', inserted: 1, updated: 1, deleted: 1, unchanged: 3, duplicates_dropped: 2 },
      });
      expect(await readBoth(['k1', 'k2', 'k3', 'k6'])).toEqual({ version: 2, scores: [10, null, 3, 6] });
    });

    it('changes nothing when the same batch is applied again', async () => {
      const replay = await sync(inc, append());
      expect(replay.summary).toMatchObject({ status: 'succeeded', version: 2, rowsWritten: 0, details: { unchanged: true, inserted: 0, updated: 0, deleted: 0 } });
      expect(await readBoth(['k1', 'k2', 'k3', 'k6'])).toEqual({ version: 2, scores: [10, null, 3, 6] });
    });

    it('never lets a late row older than the stored one overwrite it, in Postgres or Redis', async () => {
      const late = await sync(inc, append(`('k1', TIMESTAMP '2026-02-01 10:30', 99.0, false)`, `('k3', TIMESTAMP '2026-02-01 10:45', 33.0, false)`));
      // k1's late row (10:30) is older than its stored 11:00 value; k3's (10:45) is newer than its 10:00 one.
      // Version 3 was allocated by the replay and discarded: numbers only grow, with gaps.
      expect(late.summary).toMatchObject({ status: 'succeeded', version: 4, details: { updated: 1, inserted: 0 } });
      expect(await readBoth(['k1', 'k3'])).toEqual({ version: 4, scores: [10, 33] });
    });

    it('reads rows at the window start itself, so a late row with the last batch time is not lost with lookback 0', async () => {
      const exact = { ...(inc as object), view: 'c_inc0', lookback: 0 } as never;
      const rows = (...values: string[]) => `SELECT * FROM (VALUES ${values.join(', ')}) v(id, t, score, gone)`;
      const a = `('a', TIMESTAMP '2026-02-01 10:00', 1.0, false)`;
      expect((await sync(exact, rows(a))).summary).toMatchObject({ status: 'succeeded', version: 1, watermark: '2026-02-01T10:00:00.000000Z' });
      const late = await sync(exact, rows(a, `('b', TIMESTAMP '2026-02-01 10:00', 2.0, false)`));
      expect(late.summary).toMatchObject({ status: 'succeeded', version: 2, details: { window_start: '2026-02-01T10:00:00.000Z', inserted: 1, unchanged: 1 } });
      expect(await served('c_inc0', ['a', 'b'])).toEqual({ version: 2, rows: [{ score: 1 }, { score: 2 }] });
    });

    it('keeps the as-of time at the run when a row is a few hours ahead, so the next window still reads what arrives meanwhile', async () => {
      const ahead = { ...(inc as object), view: 'c_inc_ahead' } as never;
      const started = Date.now();
      const first = await sync(ahead, `SELECT * FROM (VALUES ('a', now() + INTERVAL 20 HOUR, 1.0, false), ('b', now() - INTERVAL 1 HOUR, 2.0, false)) v(id, t, score, gone)`);
      expect(first.summary).toMatchObject({ status: 'succeeded', rowsWritten: 2 });
      expect(Date.parse(first.summary.watermark!)).toBeGreaterThanOrEqual(started - 1000);
      expect(Date.parse(first.summary.watermark!)).toBeLessThanOrEqual(Date.now());
      // A new entity a minute old arrives: inside the window (as-of minus the 1 h lookback), so it is read.
      const next = await sync(ahead, `SELECT * FROM (VALUES ('a', now() + INTERVAL 20 HOUR, 1.0, false), ('b', now() - INTERVAL 1 HOUR, 2.0, false), ('c', now() - INTERVAL 1 MINUTE, 3.0, false)) v(id, t, score, gone)`);
      expect(next.summary).toMatchObject({ status: 'succeeded', details: { inserted: 1 } });
      expect((await served('c_inc_ahead', ['a', 'b', 'c'])).rows).toEqual([{ score: 1 }, { score: 2 }, { score: 3 }]);
    });

    it('rejects new rows whose epoch times switched unit, rather than skipping them as older than the window', async () => {
      const epochInc = { view: 'c_inc_epoch', entity_key: 'id', event_time: { column: 'ts', unit: 'ms' }, mode: 'incremental', lookback: '1h', features: { score: { type: 'double' } } } as never;
      const ms = (from: number, to: number) => `SELECT 'k' || i AS id, (1767225600 + i * 60)::BIGINT * 1000 AS ts, i * 1.0 AS score FROM range(${from}, ${to}) t(i)`;
      expect((await sync(epochInc, ms(1, 101))).summary).toMatchObject({ status: 'succeeded', rowsWritten: 100 });
      // 40 new rows now in seconds: read as milliseconds they fall in January 1970, long before the window.
      const switched = await sync(epochInc, `${ms(1, 101)} UNION ALL SELECT 'k' || i AS id, (1767225600 + i * 60)::BIGINT AS ts, i * 2.0 AS score FROM range(101, 141) t(i)`);
      expect(switched.summary.status).toBe('failed');
      expect(switched.summary.error).toMatch(/40 of \d+ rows .* broke its constraints/);
      // Forty different values, one broken rule: counted together, with an example.
      expect(switched.summary.error).toMatch(/Commonest: 40 × ts: the epoch time is not between 1973-03-03 and 2200-01-01 \(e\.g\. got 1970-01-\d\d [\d:.]+\+00\)$/);
      expect((await served('c_inc_epoch', ['k1', 'k101'])).rows).toEqual([{ score: 1 }, null]);
    });

    it('refuses a feature added as nullable: false, which the entities it does not read would carry as null', async () => {
      const added = (features: object) => ({ view: 'c_inc_added', entity_key: 'id', event_time: 't', mode: 'incremental', features }) as never;
      const rows = `SELECT * FROM (VALUES ('a', TIMESTAMP '2026-02-01 10:00', 1.0, 10.0)) v(id, t, score, extra)`;
      expect((await sync(added({ score: { type: 'double' } }), rows)).summary).toMatchObject({ status: 'succeeded', version: 1 });
      const strict = await sync(added({ score: { type: 'double' }, extra: { type: 'double', nullable: false } }), rows);
      expect(strict.summary.status).toBe('failed');
      expect(strict.summary.error).toMatch(/feature "extra" is new and declared nullable: false, but an incremental run keeps the entities it does not read with no value for it \(declare it nullable: true\)/);
      expect(await served('c_inc_added', ['a'])).toEqual({ version: 1, rows: [{ score: 1 }] });
      // Declared nullable, it is published: the row read again (same event time) carries it, and a value beats the
      // null the stored row holds; an entity not read again holds null until a backfill reads it.
      const grown = await sync(added({ score: { type: 'double' }, extra: { type: 'double' } }), rows);
      expect(grown.summary).toMatchObject({ status: 'succeeded', version: 2, details: { features_changed: true, updated: 1 } });
      expect(await served('c_inc_added', ['a'])).toEqual({ version: 2, rows: [{ score: 1, extra: 10 }] });
      // A feature added while no row is read again is published too, null for every entity, so callers see it.
      const more = await sync(added({ score: { type: 'double' }, extra: { type: 'double' }, more: { type: 'string' } }), `SELECT *, NULL::VARCHAR AS more FROM (${rows}) WHERE false`);
      expect(more.summary).toMatchObject({ status: 'succeeded', version: 3, rowsWritten: 0, details: { features_changed: true, unchanged: 0 } });
      expect(await served('c_inc_added', ['a'])).toEqual({ version: 3, rows: [{ score: 1, extra: 10, more: null }] });
    });

    it('checks the entities it carries over against rules tightened since, and records the rules once they hold', async () => {
      const ruled = (score: object) => ({ view: 'c_inc_rules', entity_key: 'id', event_time: 't', mode: 'incremental', lookback: 0, features: { score: { type: 'double', ...score } } }) as never;
      const rows = (...values: string[]) => `SELECT * FROM (VALUES ${values.join(', ')}) v(id, t, score)`;
      const [a, b] = [`('a', TIMESTAMP '2026-02-01 10:00', 1.0)`, `('b', TIMESTAMP '2026-02-01 09:00', NULL)`];
      expect((await sync(ruled({}), rows(a, b))).summary).toMatchObject({ status: 'succeeded', version: 1 });
      // Only a's new row is read; b, carried over, is null and may no longer be.
      const strict = await sync(ruled({ nullable: false, min: 0.5 }), rows(a, b, `('a', TIMESTAMP '2026-02-01 11:00', 2.0)`));
      expect(strict.summary.status).toBe('failed');
      expect(strict.summary.error).toMatch(
        /stored entities of view "c_inc_rules" break rules its definition tightened since the published version: 1 × score: is null, and the contract now says nullable: false \(e\.g\. entity b: null\)\. .*send corrected rows with a newer event time .*npm run ctl -- backfill c_inc_rules --from <instant>\), or keep the old rule/,
      );
      expect(await served('c_inc_rules', ['a', 'b'])).toEqual({ version: 1, rows: [{ score: 1 }, { score: null }] });
      // Corrected at the source and backfilled: the rules hold, and the version that records them is published.
      const fixed = await sync(ruled({ nullable: false, min: 0.5 }), rows(a, `('b', TIMESTAMP '2026-02-01 10:30', 0.7)`, `('a', TIMESTAMP '2026-02-01 11:00', 2.0)`), { backfillFrom: '2026-02-01T00:00:00Z' });
      expect(fixed.summary).toMatchObject({ status: 'succeeded', details: { rules_tightened: ['score: is null, and the contract now says nullable: false', 'score: is below the minimum 0.5'] } });
      expect(await served('c_inc_rules', ['a', 'b'])).toEqual({ version: fixed.summary.version, rows: [{ score: 2 }, { score: 0.7 }] });
      // Recorded: the next run checks nothing again, and a replay changes nothing.
      const again = await sync(ruled({ nullable: false, min: 0.5 }), rows(a, `('b', TIMESTAMP '2026-02-01 10:30', 0.7)`, `('a', TIMESTAMP '2026-02-01 11:00', 2.0)`));
      expect(again.summary).toMatchObject({ status: 'succeeded', version: fixed.summary.version, details: { unchanged: true } });
      expect(again.summary.details.rules_tightened).toBeUndefined();
    });

    it('resolves rows of the same event time as a snapshot does, whichever run they arrive in', async () => {
      const view = { view: 'c_inc_tie', entity_key: 'id', event_time: 't', mode: 'incremental', features: { score: { type: 'double' }, tag: { type: 'string' } } } as never;
      const rows = (...values: string[]) => `SELECT * FROM (VALUES ${values.join(', ')}) v(id, t, score, tag)`;
      const [a1, a2, b1, b2] = [`('a', TIMESTAMP '2026-02-01 10:00', 1.0, 'x')`, `('a', TIMESTAMP '2026-02-01 10:00', 2.0, 'x')`, `('b', TIMESTAMP '2026-02-01 10:00', 5.0, 'Z')`, `('b', TIMESTAMP '2026-02-01 10:00', 5.0, 'a')`];
      expect((await sync(view, rows(a1, b1))).summary).toMatchObject({ status: 'succeeded', version: 1 });
      // The correction of a (greater score) wins; for b, 'a' sorts after 'Z' byte by byte, whatever the database's collation.
      const corrected = await sync(view, rows(a1, b1, a2, b2));
      expect(corrected.summary).toMatchObject({ status: 'succeeded', version: 2, details: { updated: 2 } });
      expect(await served('c_inc_tie', ['a', 'b'])).toEqual({ version: 2, rows: [{ score: 2, tag: 'x' }, { score: 5, tag: 'a' }] });
      // What a snapshot of the same rows publishes.
      const snapshot = await sync({ ...(view as object), view: 'c_inc_tie_snap', mode: 'snapshot' } as never, rows(a1, b1, a2, b2));
      expect(snapshot.summary.status).toBe('succeeded');
      expect((await served('c_inc_tie_snap', ['a', 'b'])).rows).toEqual([{ score: 2, tag: 'x' }, { score: 5, tag: 'a' }]);
      // The losers again change nothing.
      expect((await sync(view, rows(a1, b1))).summary).toMatchObject({ status: 'succeeded', version: 2, details: { unchanged: true } });
    });

    it('backfills from a given instant idempotently', async () => {
      const backfill = await sync(inc, append(), { backfillFrom: '2026-01-01T00:00:00Z' });
      expect(backfill.summary).toMatchObject({ status: 'succeeded', version: 4, details: { window_start: '2026-01-01T00:00:00Z', unchanged: true } });
      expect(await readBoth(['k1', 'k2', 'k3', 'k4', 'k5', 'k6'])).toEqual({ version: 4, scores: [10, null, 33, 4, 5, 6] });
    });
  });

  describe('snapshot guards', () => {
    it('fails an empty snapshot unless forced', async () => {
      expect((await sync({ view: 'c_empty', ...base }, rows(10))).summary.status).toBe('succeeded');
      const empty = await sync({ view: 'c_empty', ...base }, `${rows(10)} LIMIT 0`);
      expect(empty.summary.error).toMatch(/the snapshot of view "c_empty" has no rows to publish; fix the source, or force the run/);
      expect(await served('c_empty', ['k1'])).toEqual({ version: 1, rows: [{ score: 1 }] });
      const forced = await sync({ view: 'c_empty', ...base }, `${rows(10)} LIMIT 0`, { force: true });
      // The refused run never allocated a version, so the forced one is version 2.
      expect(forced.summary).toMatchObject({ status: 'succeeded', version: 2, rowsWritten: 0, details: { forced: true } });
      expect(await served('c_empty', ['k1'])).toEqual({ version: 2, rows: [null] });
    });

    it('counts only the entities a snapshot will hold: deletions cannot empty or shrink a view past the guards', async () => {
      const view = { view: 'c_gone', ...base, delete_column: 'gone', max_row_drop: 0.2 } as never;
      const data = (deleted: number) => `SELECT 'k' || i AS id, TIMESTAMP '2026-01-01' AS t, i * 1.0 AS score, i <= ${deleted} AS gone FROM range(1, 11) t(i)`;
      expect((await sync(view, data(0))).summary).toMatchObject({ status: 'succeeded', version: 1, rowsWritten: 10 });
      const emptied = await sync(view, data(10));
      expect(emptied.summary.error).toMatch(/the snapshot of view "c_gone" has no rows to publish \(entities whose latest row is a deletion do not count\); fix the source, or force the run/);
      const halved = await sync(view, data(5));
      expect(halved.summary.error).toMatch(/has 5 entities \(entities whose latest row is a deletion do not count\), 50\.0% fewer than the 10 of version 1/);
      expect(await served('c_gone', ['k1', 'k9'])).toEqual({ version: 1, rows: [{ score: 1 }, { score: 9 }] });
      // An update newer than the deletion keeps the entity; within the limit, the run publishes.
      const revived = await sync(view, `${data(2)} UNION ALL SELECT 'k1', TIMESTAMP '2026-01-02', 100.0, false`);
      expect(revived.summary).toMatchObject({ status: 'succeeded', rowsWritten: 9, details: { deleted: 1 } });
      expect(await served('c_gone', ['k1', 'k2'])).toMatchObject({ rows: [{ score: 100 }, null] });
      expect((await sync(view, data(10), { force: true })).summary).toMatchObject({ status: 'succeeded', rowsWritten: 0 });
    });

    it('fails a snapshot that shrank past the limit unless forced', async () => {
      expect((await sync({ view: 'c_shrink', ...base, max_row_drop: 0.2 } as never, rows(100))).summary.status).toBe('succeeded');
      expect((await sync({ view: 'c_shrink', ...base, max_row_drop: 0.2 } as never, rows(85))).summary.status).toBe('succeeded');
      const shrunk = await sync({ view: 'c_shrink', ...base, max_row_drop: 0.2 } as never, rows(50));
      expect(shrunk.summary.error).toMatch(/has 50 entities, 41\.2% fewer than the 85 of version 2; the limit \(max_row_drop\) is 20\.0%\. Force the run if the shrink is intended/);
      expect(await served('c_shrink', ['k80'])).toEqual({ version: 2, rows: [{ score: 80 }] });
      expect((await sync({ view: 'c_shrink', ...base, max_row_drop: 0.2 } as never, rows(50), { force: true })).summary).toMatchObject({ status: 'succeeded', rowsWritten: 50 });
    });
  });

  describe('one run at a time', () => {
    it('runs a job once when two processes start it together; the other records a skip', async () => {
      const source = await writeParquet(path.join(dir, 'c_lock.parquet'), rows(300_000, 'i * 1.0'));
      await writeJobs(dir, [{ view: 'c_lock', source, ...base }]);
      const start = () =>
        new Promise<{ code: number | null; stderr: string }>((resolve) => {
          const child = spawn(process.execPath, ['--import', 'tsx', path.resolve('src/cli/ctl.ts'), 'sync', 'c_lock'], {
            env: { PATH: process.env.PATH!, DATABASE_URL: database.url, REDIS_URL: redis.url, SYNC_JOBS_DIR: dir },
          });
          let stderr = '';
          child.stderr.on('data', (d) => (stderr += d));
          child.on('exit', (code) => resolve({ code, stderr }));
        });
      const results = await Promise.all([start(), start()]);
      expect(results.map((r) => r.code).sort()).toEqual([0, 3]);
      expect(results.find((r) => r.code === 3)!.stderr).toMatch(/sync of c_lock skipped \(run \d+\): another run of this job was in progress/);
      const runs = await server.db.query<{ status: string }>(`SELECT status FROM ${META_SCHEMA}.runs WHERE job = 'c_lock' ORDER BY status`);
      expect(runs.map((r) => r.status)).toEqual(['skipped', 'succeeded']);
    });

    it('retries a transient failure with backoff and succeeds once the store is back', async () => {
      // Away for longer than a run waits for the connection (1 s), so the first attempt fails.
      await redis.stop();
      setTimeout(() => void redis.start(), 2000);
      const source = await writeParquet(path.join(dir, 'c_retry.parquet'), rows(10));
      const job = parseJobDefinition(path.join(dir, 'c_retry.yaml'), JSON.stringify({ view: 'c_retry', source, ...base, schedule: '0 0 * * *', freshness: '1d' }));
      const summary = await runSync(job, { db: server.db, hot: server.hot, log: silentLogger, batchRows: 1000, retry: { attempts: 5, baseDelayMs: 300 } }, 'manual');
      expect(summary.status).toBe('succeeded');
      const runs = await server.db.query<{ status: string; error: string | null }>(`SELECT status, error FROM ${META_SCHEMA}.runs WHERE job = 'c_retry' ORDER BY run_id`);
      expect(runs.length).toBeGreaterThan(1);
      expect(runs.at(-1)!.status).toBe('succeeded');
      expect(runs.slice(0, -1).every((r) => r.status === 'failed' && r.error)).toBe(true);
      expect(runs[0]!.error).toMatch(/Redis/);
    });

    it('does not retry a permanent (data) failure', async () => {
      const source = await writeParquet(path.join(dir, 'c_perm.parquet'), `SELECT 'k1' AS id, TIMESTAMP '2026-01-01' AS t, 'x' AS score`);
      const job = parseJobDefinition(path.join(dir, 'c_perm.yaml'), JSON.stringify({ view: 'c_perm', source, ...base, schedule: '0 0 * * *', freshness: '1d' }));
      await runSync(job, { db: server.db, hot: server.hot, log: silentLogger, batchRows: 1000, retry: { attempts: 5, baseDelayMs: 1 } }, 'manual');
      const runs = await server.db.query(`SELECT 1 FROM ${META_SCHEMA}.runs WHERE job = 'c_perm'`);
      expect(runs.length).toBe(1);
    });
  });

  it('a run that outgrows SYNC_DUCKDB_MEMORY_MB fails naming the setting, keeps the last version serving, and passes with more', async () => {
    expect((await sync({ view: 'memo', ...base }, rows(100))).summary).toMatchObject({ status: 'succeeded', version: 1 });
    // Enough rows (two per entity) that the run outgrows 16 MB, and fits in the default.
    const { job } = await sync({ view: 'memo_src', ...base }, rows(10));
    const source = await writeParquet(path.join(dir, 'memo_dups.parquet'), `SELECT 'k' || (i % 150000) AS id, TIMESTAMP '2026-01-01' + INTERVAL (i) SECOND AS t, i * 1.0 AS score FROM range(1, 300001) t(i)`);
    const big = { ...job, view: 'memo', source };
    const ctx = { db: server.db, hot: server.hot, log: silentLogger, batchRows: 1000, retry: { attempts: 1, baseDelayMs: 1 } };
    const failed = await runSync(big, { ...ctx, duckdbMemoryMb: 16 }, 'manual');
    expect(failed).toMatchObject({ status: 'failed', transient: false });
    expect(failed.error).toMatch(/DuckDB ran out of the 16 MB it may use \(SYNC_DUCKDB_MEMORY_MB\) while syncing view "memo": .*Out of Memory.*Raise SYNC_DUCKDB_MEMORY_MB/);
    expect(await served('memo', ['k1', 'k100'])).toMatchObject({ version: 1, rows: [{ score: 1 }, { score: 100 }] });
    const passed = await runSync(big, ctx, 'manual');
    expect(passed, passed.error ?? '').toMatchObject({ status: 'succeeded', rowsRead: 300000 });
    // (Version 2 or 3: whether the failed run had allocated one depends on the phase that ran out.)
    expect(await served('memo', ['k1', 'k0'])).toMatchObject({ version: passed.version, rows: [{ score: 150001 }, { score: 300000 }] });
  }, 120_000);

  it('classes lost connections, timeouts and Redis Cluster turbulence as worth a retry, data errors not', () => {
    const transient = [
      Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:6379'), { code: 'ECONNREFUSED' }),
      Object.assign(new Error('Redis Cluster write of 30 keys did not finish within 2000 ms'), { code: 'ETIMEDOUT' }),
      new Error('Connection is closed.'),
      new Error('CLUSTERDOWN The cluster is down'),
      new Error('TRYAGAIN Multiple keys request during rehashing of slot'),
      new Error('Too many Cluster redirections. Last error: MOVED 15627 127.0.0.1:39889'),
      new Error('Failed to refresh slots cache.'),
      Object.assign(new Error('terminating connection due to administrator command'), { code: '57P01' }),
    ];
    const permanent = [
      new SyncDataError('column score: expected double, found VARCHAR'),
      new Error('WRONGTYPE Operation against a key holding the wrong kind of value'),
      Object.assign(new Error('duplicate key value violates unique constraint'), { code: '23505' }),
    ];
    expect(transient.filter((error) => !isTransient(error)).map(String)).toEqual([]);
    expect(permanent.filter((error) => isTransient(error)).map(String)).toEqual([]);
  });

  describe('versions served side by side, rollback, and the sync routes', () => {
    it('serves v1 and v2 of a view side by side, v1 with Deprecation, Sunset and a successor link', async () => {
      expect(await server.runner.run('prices', 'manual')).toMatchObject({ status: 'succeeded' });
      expect(await server.runner.run('prices_v2', 'manual')).toMatchObject({ status: 'succeeded' });
      const v1 = await fetch(`${baseUrl}/features/v1/p2?view=prices`);
      expect(await v1.json()).toMatchObject({ view: 'prices', features: { price: 20 } });
      expect(v1.headers.get('Deprecation')).toBe(`@${Date.parse('2026-06-01T00:00:00Z') / 1000}`);
      expect(v1.headers.get('Sunset')).toBe('Sun, 31 Jan 2027 00:00:00 GMT');
      expect(v1.headers.get('Link')).toBe('</features/v1/p2?view=prices_v2>; rel="successor-version"');
      // A miss on the deprecated view says so too.
      const missing = await fetch(`${baseUrl}/features/v1/p99?view=prices`);
      expect(missing.status).toBe(404);
      expect(missing.headers.get('Deprecation')).toBe(v1.headers.get('Deprecation'));
      expect(missing.headers.get('Link')).toBe('</features/v1/p99?view=prices_v2>; rel="successor-version"');
      const v2 = await fetch(`${baseUrl}/features/v1/p2?view=prices_v2`);
      expect(await v2.json()).toMatchObject({ view: 'prices_v2', features: { price_cents: 2000, currency: 'EUR' } });
      expect(v2.headers.get('Deprecation')).toBeNull();
      expect(v2.headers.get('Sunset')).toBeNull();
    });

    it('rolls back to the previous version: its values and its freshness headers', async () => {
      await writeParquet(path.join(dir, 'prices.parquet'), `SELECT 'p' || i AS sku, TIMESTAMP '2026-05-09' AS t, i * 11 AS price FROM range(1, 6) t(i)`);
      expect(await server.runner.run('prices', 'manual')).toMatchObject({ status: 'succeeded', version: 2 });
      const after = await fetch(`${baseUrl}/features/v1/p2?view=prices`);
      expect(after.headers.get('Feature-Version')).toBe('2');
      expect(after.headers.get('Feature-As-Of')).toBe('2026-05-09T00:00:00.000000Z');
      expect(((await after.json()) as { features: { price: number } }).features.price).toBe(22);

      expect(await rollbackView(server.db, 'prices', jobLockKey('prices'))).toMatchObject({ from: 2, to: 1 });
      await expect.poll(async () => (await fetch(`${baseUrl}/features/v1/p2?view=prices`)).headers.get('Feature-Version'), { timeout: 5_000 }).toBe('1');
      const back = await fetch(`${baseUrl}/features/v1/p2?view=prices`);
      expect(back.headers.get('Feature-As-Of')).toBe('2026-05-01T00:00:00.000000Z');
      expect(back.headers.get('Last-Modified')).toBe('Fri, 01 May 2026 00:00:00 GMT');
      expect(((await back.json()) as { features: { price: number } }).features.price).toBe(20);
    });

    it('lists jobs and runs at /sync/v1, read-only', async () => {
      const jobs = (await (await fetch(`${baseUrl}/sync/v1/jobs`)).json()) as { jobs: Record<string, unknown>[] };
      expect(jobs.jobs.find((j) => j.job === 'prices')).toMatchObject({
        schedule: '0 0 * * *',
        current_version: 1,
        watermark: '2026-05-09T00:00:00.000000Z',
        last_run: { status: 'succeeded', trigger: 'rollback', version: 1 },
        deprecated: { successor: 'prices_v2' },
        freshness: { version: 1, as_of: '2026-05-01T00:00:00.000000Z' },
      });
      const runs = (await (await fetch(`${baseUrl}/sync/v1/jobs/prices/runs?limit=2`)).json()) as { runs: Record<string, unknown>[] };
      expect(runs.runs.map((r) => [r.trigger, r.status, r.version])).toEqual([
        ['rollback', 'succeeded', 1],
        ['manual', 'succeeded', 2],
      ]);
      expect((await fetch(`${baseUrl}/sync/v1/jobs/nope/runs`)).status).toBe(400);
      expect((await fetch(`${baseUrl}/sync/v1/jobs/prices/runs?limit=0`)).status).toBe(400);
      expect((await fetch(`${baseUrl}/sync/v1/jobs?x=1`)).status).toBe(400);
      expect((await fetch(`${baseUrl}/sync/v1/jobs`, { method: 'POST' })).status).toBe(404);
    });
  });
});
