// `npm run sync -- <job>` runs one job once and says plainly how it went, with
// an exit code a scheduler or a shell script can act on.
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { freshDatabase } from '../support/db.js';
import { tempDir, writeJobs, writeParquet } from '../support/fixtures.js';
import { startRedis, type RedisServer } from '../support/servers.js';

describe('command line: npm run sync -- <job>, npm run ctl -- runs|rollback', () => {
  let redis: RedisServer;
  let database: { url: string; drop(): Promise<void> };
  let dir: string;

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

  it('exits 1 naming the store when Postgres is unreachable', () => {
    const result = sync(['good'], { DATABASE_URL: 'postgres://postgres@127.0.0.1:1/none' });
    expect(result.status).toBe(1);
    expect(result.stderr).toMatch(/sync of good could not run: .*ECONNREFUSED/);
  });
});
