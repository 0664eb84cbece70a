// `npm run sync -- <job>` runs one job once and says plainly how it went, with
// an exit code a scheduler or a shell script can act on.
import { spawnSync } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { freshDatabase } from '../support/db.js';
import { tempDir, writeJobs, writeParquet } from '../support/fixtures.js';
import { startRedis, type RedisServer } from '../support/servers.js';
import { PostgresDatabase } from '../../src/stores/postgres.js';
import { jobLockKey } from '../../src/sync/engine.js';
import { syncNodeFlags } from '../../src/sync/runner.js';
import { loadConfig } from '../../src/config/index.js';

describe('command line: npm run sync -- <job>, npm run ctl -- runs|rollback', () => {
  let redis: RedisServer;
  let database: { url: string; drop(): Promise<void> };
  let dir: string;
  let incDir: string;

  const ctl = (args: string[], env: Record<string, string> = {}) =>
    spawnSync(process.execPath, ['--import', 'tsx', path.resolve('src/cli/ctl.ts'), ...args], {
      encoding: 'utf8',
      env: { PATH: process.env.PATH!, DATABASE_URL: database.url, REDIS_URL: redis.url, SYNC_JOBS_DIR: dir, ...env },
      timeout: 60_000,
    });
  const sync = (args: string[], env: Record<string, string> = {}) => ctl(['sync', ...args], env);

  beforeAll(async () => {
    redis = await startRedis();
    database = await freshDatabase(inject('databaseUrl'), 'cli');
    dir = await tempDir('cli');
    const good = await writeParquet(path.join(dir, 'good.parquet'), `SELECT 'u' || i AS id, TIMESTAMP '2026-01-01' AS t, i AS n FROM range(1, 101) t(i)`);
    const bad = await writeParquet(path.join(dir, 'bad.parquet'), `SELECT 'u' || i AS id, TIMESTAMP '2026-01-01' AS t, 'text' AS n FROM range(1, 11) t(i)`);
    await writeJobs(dir, [
      { view: 'good', source: good, entity_key: 'id', event_time: 't', features: { n: { type: 'integer' } } },
      { view: 'bad', source: bad, entity_key: 'id', event_time: 't', features: { n: { type: 'integer' } } },
    ]);
    incDir = await tempDir('cli-inc');
    const rows = await writeParquet(path.join(incDir, 'inc.parquet'), `SELECT 'u' || i AS id, TIMESTAMP '2026-01-01' + INTERVAL (i) HOUR AS t, i AS n FROM range(1, 11) t(i)`);
    await writeFile(path.join(incDir, 'inc.yaml'), JSON.stringify({ view: 'inc', source: rows, entity_key: 'id', event_time: 't', mode: 'incremental', features: { n: { type: 'integer' } }, schedule: '0 0 * * *', freshness: '1d' }));
  });

  afterAll(async () => {
    await redis?.destroy();
    await database?.drop();
  });

  it('exits 0 and prints the run record when the run succeeds', () => {
    const result = sync(['good']);
    expect(result.status, result.stderr).toBe(0);
    expect(JSON.parse(result.stdout)).toMatchObject({ job: 'good', status: 'succeeded', version: 1, rowsRead: 100, rowsWritten: 100 });
  });

  it('exits 1 with the reason when the run fails', () => {
    const result = sync(['bad']);
    expect(result.status).toBe(1);
    expect(result.stderr).toMatch(/sync of bad failed \(run \d+\): .*feature column "n" has type VARCHAR, expected integer/);
  });

  it('exits 2 on an unknown job, bad usage or the embedded mode', () => {
    expect(sync(['nope']).stderr).toMatch(/no sync job "nope" in .*; jobs: bad, good/);
    expect(sync(['nope']).status).toBe(2);
    expect(sync([]).status).toBe(2);
    const embedded = sync(['good'], { DATABASE_URL: '', REDIS_URL: '' });
    expect(embedded.status).toBe(2);
    expect(embedded.stderr).toMatch(/needs DATABASE_URL and REDIS_URL/);
  });

  it('lists runs and rolls a view back to its previous version', () => {
    expect(sync(['good']).status).toBe(0);
    const runs = ctl(['runs', 'good', '--limit', '2']);
    expect(runs.status, runs.stderr).toBe(0);
    expect(JSON.parse(runs.stdout)).toMatchObject([
      { job: 'good', status: 'succeeded', version: 2 },
      { job: 'good', status: 'succeeded', version: 1 },
    ]);
    const rollback = ctl(['rollback', 'good']);
    expect(rollback.status, rollback.stderr).toBe(0);
    expect(JSON.parse(rollback.stdout)).toMatchObject({ view: 'good', rolled_back_from: 2, current_version: 1 });
    const again = ctl(['rollback', 'good']);
    expect(again.status).toBe(1);
    expect(again.stderr).toMatch(/rollback of good failed: view "good" has no previous version to roll back to \(version 1 is the only one kept\)/);
    expect(ctl(['runs', 'good', '--limit', 'many']).stderr).toMatch(/--limit must be a whole number/);
    expect(ctl(['rollback', 'good', '--force']).status).toBe(2);
    expect(ctl(['explode', 'good']).stderr).toMatch(/unknown command "explode"/);
    expect(ctl(['backfill', 'good']).stderr).toMatch(/backfill needs --from/);
    expect(ctl(['backfill', 'good', '--from', 'yesterday']).stderr).toMatch(/--from must be an ISO 8601 instant/);
    const snapshot = ctl(['backfill', 'good', '--from', '2026-01-01T00:00:00Z']);
    expect(snapshot.status).toBe(2);
    expect(snapshot.stderr).toMatch(/good is a snapshot job; backfill applies to incremental jobs/);
  });

  it('creates, lists and revokes API keys, showing a key only once', () => {
    const created = ctl(['keys', 'create', 'backend', '--views', 'good']);
    expect(created.status, created.stderr).toBe(0);
    const key = JSON.parse(created.stdout) as { key: string; key_id: string; views: string[] };
    expect(key.key).toMatch(/^fsk_[a-f0-9]{12}_/);
    expect(key.views).toEqual(['good']);
    const listed = ctl(['keys', 'list']);
    expect(listed.status).toBe(0);
    expect(listed.stdout).toContain(key.key_id);
    expect(listed.stdout).not.toContain('fsk_');
    expect(JSON.parse(ctl(['keys', 'revoke', 'backend']).stdout)).toEqual({ revoked: 1 });
    expect(ctl(['keys', 'revoke', 'backend']).status).toBe(1);
    const unknown = ctl(['keys', 'create', 'x', '--views', 'good,nope']);
    expect(unknown.status).toBe(2);
    expect(unknown.stderr).toMatch(/unknown view\(s\) nope; views: bad, good/);
    expect(ctl(['keys', 'create', 'x']).stderr).toMatch(/say which views the key may read/);
  });

  it('takes --from only as an ISO 8601 instant, a date alone meaning midnight UTC', () => {
    for (const from of ['Jan 1', '2026-02-30', '99999', '2026-01-01T00:00:00', '2026-01-01T24:00Z', '2026-01-01T12:00+25:00', '1969-12-31', '2201-01-01', '2026-1-1']) {
      const result = ctl(['backfill', 'inc', '--from', from], { SYNC_JOBS_DIR: incDir });
      expect(result.status, `${from}: ${result.stderr}`).toBe(2);
      expect(result.stderr).toContain(`--from must be an ISO 8601 instant from 1970 to 2200: YYYY-MM-DD (midnight UTC) or YYYY-MM-DDTHH:MM[:SS[.fff]] with Z or ±HH:MM, such as 2026-01-01T00:00:00Z; got "${from}"`);
    }
    expect(ctl(['sync', 'inc'], { SYNC_JOBS_DIR: incDir }).status).toBe(0);
    for (const from of ['2026-01-01', '2026-01-01T02:00+02:00', '2025-12-31T23:00:00.000-01:00']) {
      const result = ctl(['backfill', 'inc', '--from', from], { SYNC_JOBS_DIR: incDir });
      expect(result.status, `${from}: ${result.stderr}`).toBe(0);
      expect(JSON.parse(result.stdout)).toMatchObject({ status: 'succeeded', details: { window_start: '2026-01-01T00:00:00.000Z' } });
    }
  });

  it('exits 3 when a rollback finds another run holding the job', async () => {
    const db = new PostgresDatabase({ url: database.url, maxConnections: 1 });
    try {
      const held = await db.withAdvisoryLock(jobLockKey('good'), async () => ctl(['rollback', 'good']));
      expect(held.acquired).toBe(true);
      const result = held.acquired ? held.value : undefined;
      expect(result?.status, result?.stderr).toBe(3);
      expect(result?.stderr).toMatch(/rollback of good skipped: a sync of "good" is running; roll back after it ends/);
    } finally {
      await db.close();
    }
  });

  it('drops the data of a view whose definition was removed, and says what it freed', async () => {
    const goneDir = await tempDir('cli-gone');
    const source = await writeParquet(path.join(goneDir, 'gone.parquet'), `SELECT 'g' || i AS id, TIMESTAMP '2026-01-01' AS t, i AS n FROM range(1, 21) t(i)`);
    await writeJobs(goneDir, [{ view: 'gone', source, entity_key: 'id', event_time: 't', features: { n: { type: 'integer' } } }]);
    expect(sync(['gone'], { SYNC_JOBS_DIR: goneDir }).status).toBe(0);
    expect(sync(['gone', '--force'], { SYNC_JOBS_DIR: goneDir }).status).toBe(0);
    const defined = ctl(['drop', 'gone'], { SYNC_JOBS_DIR: goneDir });
    expect(defined.status).toBe(2);
    expect(defined.stderr).toMatch(/view "gone" is still defined in .*: remove its job definition \(and redeploy the servers, which would otherwise sync it again\) before dropping its data/);
    expect(ctl(['drop']).stderr).toMatch(/name the view to drop/);

    // Busy: a run holds the job's lock.
    const db = new PostgresDatabase({ url: database.url, maxConnections: 2 });
    const client = new (await import('ioredis')).Redis(redis.url);
    try {
      const held = await db.withAdvisoryLock(jobLockKey('gone'), async () => ctl(['drop', 'gone']));
      expect(held.acquired && held.value.status).toBe(3);
      expect(held.acquired && held.value.stderr).toMatch(/drop of gone skipped: a run of its job holds the job's lock/);

      // The definition is gone from the jobs directory (dir does not define it): both versions, tables and keys, are freed.
      expect((await client.keys('fs:gone:*')).length).toBe(42);
      const dropped = ctl(['drop', 'gone']);
      expect(dropped.status, dropped.stderr).toBe(0);
      expect(JSON.parse(dropped.stdout)).toEqual({ view: 'gone', dropped_versions: [{ version: 1, hot_keys: 20 }, { version: 2, hot_keys: 20 }], hot_keys: 40 });
      // Only the versions' marks stay, each until past the fill TTL (so a late fill is dropped if a number is reused).
      expect((await client.keys('fs:gone:*')).sort()).toEqual(['fs:gone:1', 'fs:gone:2']);
      for (const mark of ['fs:gone:1', 'fs:gone:2']) expect(await client.ttl(mark)).toBeGreaterThan(86_400);
      expect(await db.query(`SELECT table_name FROM information_schema.tables WHERE table_schema = 'featurestore_data' AND table_name LIKE 'gone%'`)).toEqual([]);
      expect(await db.query(`SELECT view FROM featurestore.views WHERE view = 'gone'`)).toEqual([]);
      // The runs stay, as history; a second drop finds nothing.
      expect((await db.query(`SELECT 1 FROM featurestore.runs WHERE job = 'gone'`)).length).toBe(2);
      const again = ctl(['drop', 'gone']);
      expect(again.status).toBe(2);
      expect(again.stderr).toMatch(/view "gone" has no stored data to drop/);
    } finally {
      client.disconnect();
      await db.close();
    }
  });

  it('lists and revokes keys without reading the job definitions, which only keys create needs', async () => {
    const broken = await tempDir('cli-broken');
    await writeFile(path.join(broken, 'broken.yaml'), 'view: [\n');
    const created = ctl(['keys', 'create', 'leaked', '--views', 'good']);
    expect(created.status, created.stderr).toBe(0);
    const listed = ctl(['keys', 'list'], { SYNC_JOBS_DIR: broken });
    expect(listed.status, listed.stderr).toBe(0);
    expect(listed.stdout).toContain('leaked');
    const revoked = ctl(['keys', 'revoke', 'leaked'], { SYNC_JOBS_DIR: path.join(broken, 'missing') });
    expect(revoked.status, revoked.stderr).toBe(0);
    expect(JSON.parse(revoked.stdout)).toEqual({ revoked: 1 });
    const create = ctl(['keys', 'create', 'other', '--views', 'good'], { SYNC_JOBS_DIR: broken });
    expect(create.status).toBe(2);
    expect(create.stderr).toContain('broken.yaml');
  });

  it('refuses options a command does not take, and rates or bursts Postgres cannot store', () => {
    const refused = (args: string[], message: RegExp) => {
      const result = ctl(args);
      expect(result.status, `${args.join(' ')}: ${result.stderr}`).toBe(2);
      expect(result.stderr).toMatch(message);
    };
    refused(['keys', 'list', '--views', 'secret'], /--views goes with keys create, not keys list/);
    refused(['keys', 'revoke', 'x', '--rate', '5'], /--rate goes with keys create, not keys revoke/);
    refused(['runs', 'good', '--force'], /--force goes with sync, not runs/);
    refused(['sync', 'good', '--limit', '5'], /--limit goes with runs, not sync/);
    refused(['rollback', 'good', '--from', '2026'], /--from goes with backfill, not rollback/);
    refused(['keys', 'create', 'x', '--views', 'good', '--rate', 'Infinity'], /--rate must be a finite positive number of requests per second, got "Infinity"/);
    refused(['keys', 'create', 'x', '--views', 'good', '--rate', '5', '--burst', '1e10'], /--burst must be a whole number from 1 to 2147483647, got "1e10"/);
    refused(['keys', 'create', 'x', '--views', 'good', '--rate', '3e9'], /--rate 3e9 needs --burst: the default burst, the rate rounded up \(3000000000\), is above the most a key can hold \(2147483647\); give --burst M with M at most 2147483647/);
    const largest = ctl(['keys', 'create', 'fast', '--views', 'good', '--rate', '2147483647']);
    expect(largest.status, largest.stderr).toBe(0);
    expect(JSON.parse(largest.stdout)).toMatchObject({ rate_limit: { perSecond: 2147483647, burst: 2147483647 } });
  });

  it('exits 1 naming the store when Postgres is unreachable', () => {
    const result = sync(['good'], { DATABASE_URL: 'postgres://postgres@127.0.0.1:1/none' });
    expect(result.status).toBe(1);
    expect(result.stderr).toMatch(/sync of good could not run: .*ECONNREFUSED/);
  });

  it("runs with a sync child's Node flags, so a sync from the command line has the same memory bounds", async () => {
    const { scripts } = JSON.parse(await readFile('package.json', 'utf8')) as { scripts: Record<string, string> };
    const flags = syncNodeFlags(loadConfig({}).syncHeapMb).join(' ');
    expect(scripts.sync).toBe(`node ${flags} dist/cli/ctl.js sync`);
    expect(scripts.ctl).toBe(`node ${flags} dist/cli/ctl.js`);
  });
});
