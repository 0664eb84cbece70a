// Every core: WEB_CONCURRENCY=2 runs a real server as a primary and two
// serving workers on one port. Both workers answer; /metrics on either shows
// every process (counters summed, one request series per worker, the
// primary's sync metrics), and so do /slo/v1 and the dashboard; syncs run once, in the primary; a worker that dies
// is replaced, and what it counted stays in the sums; SIGTERM stops them all.
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { readdirSync, readFileSync } from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { loadConfig } from '../../src/config/index.js';
import { listRuns } from '../../src/stores/metadata.js';
import { PostgresDatabase } from '../../src/stores/postgres.js';
import { freshDatabase } from '../support/db.js';
import { tempDir, writeJobs, writeParquet } from '../support/fixtures.js';
import { freePort, startRedis, type RedisServer } from '../support/servers.js';

/** One request on its own connection, so the cluster's round robin spreads them over the workers. */
function get(port: number, pathname: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const request = http.get({ host: '127.0.0.1', port, path: pathname, agent: false, headers: { connection: 'close' } }, (response) => {
      let body = '';
      response.setEncoding('utf8');
      response.on('data', (chunk: string) => (body += chunk));
      response.on('end', () => resolve({ status: response.statusCode!, body }));
    });
    request.on('error', reject);
  });
}

/** Live processes whose parent is `pid` and that run the server (sync children run child.ts). */
function serverChildren(pid: number): number[] {
  const found: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(fields[1]) !== pid || fields[0] === 'Z') continue;
      if (readFileSync(`/proc/${entry}/cmdline`, 'utf8').includes('server.ts')) found.push(Number(entry));
    } catch {
      // Ended while we looked.
    }
  }
  return found.sort((a, b) => a - b);
}

/** Sample values of one metric from the Prometheus text format, with their label sets. */
function samples(text: string, name: string): { labels: string; value: number }[] {
  return text
    .split('\n')
    .filter((line) => line.startsWith(`${name}{`) || line.startsWith(`${name} `))
    .map((line) => {
      const at = line.lastIndexOf(' ');
      return { labels: line.slice(name.length, at), value: Number(line.slice(at + 1)) };
    });
}

describe('WEB_CONCURRENCY configuration', () => {
  it('defaults to every core with servers, and to one process in the embedded mode, whatever is asked', () => {
    const servers = { DATABASE_URL: 'postgres://db/x', REDIS_URL: 'redis://cache:6379' };
    expect(loadConfig(servers).webConcurrency).toBe(os.availableParallelism());
    expect(loadConfig({ ...servers, WEB_CONCURRENCY: '3' }).webConcurrency).toBe(3);
    // PGlite is a database inside one process: other processes could not reach it.
    expect(loadConfig({ WEB_CONCURRENCY: '4' }).webConcurrency).toBe(1);
    expect(() => loadConfig({ ...servers, WEB_CONCURRENCY: '0' })).toThrow(/WEB_CONCURRENCY/);
    expect(() => loadConfig({ ...servers, WEB_CONCURRENCY: 'all' })).toThrow(/WEB_CONCURRENCY: .*\(got "all"\)/);
  });
});

describe('a worker that cannot start', () => {
  it('stops the whole server with its exit code and its reason', async () => {
    const redis = await startRedis();
    const database = await freshDatabase(inject('databaseUrl'), 'webconcfail');
    try {
      const dir = await tempDir('webconcfail');
      const source = await writeParquet(path.join(dir, 'f.parquet'), `SELECT 'k1' AS id, TIMESTAMP '2026-01-01' AS t, 1 AS n`);
      await writeJobs(dir, [{ view: 'fails', source, entity_key: 'id', event_time: 't', features: { n: { type: 'integer' } } }]);
      const port = await freePort();
      // Keys mode with no key: every worker refuses to serve.
      const server = spawn(process.execPath, ['--import', 'tsx', path.resolve('src/server.ts')], {
        env: { PATH: process.env.PATH!, DATABASE_URL: database.url, REDIS_URL: redis.url, SYNC_JOBS_DIR: dir, PORT: String(port), HOST: '127.0.0.1', WEB_CONCURRENCY: '2', AUTH_MODE: 'keys', LOG_LEVEL: 'silent' },
        stdio: ['ignore', 'ignore', 'pipe'],
      });
      let stderr = '';
      server.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
      const [code] = (await once(server, 'exit')) as [number];
      expect(code).toBe(2);
      expect(stderr).toMatch(/no API keys exist/);
      expect(stderr).toMatch(/cannot start: a serving worker exited \(code 2\) before it listened/);
    } finally {
      await redis.destroy();
      await database.drop();
    }
  });
});

describe('a primary that cannot reach Postgres', () => {
  it('exits 2 naming DATABASE_URL, before any worker', async () => {
    const dir = await tempDir('webconcnopg');
    const source = await writeParquet(path.join(dir, 'f.parquet'), `SELECT 'k1' AS id, TIMESTAMP '2026-01-01' AS t, 1 AS n`);
    await writeJobs(dir, [{ view: 'nopg', source, entity_key: 'id', event_time: 't', features: { n: { type: 'integer' } } }]);
    const nowhere = await freePort();
    const server = spawn(process.execPath, ['--import', 'tsx', path.resolve('src/server.ts')], {
      env: { PATH: process.env.PATH!, DATABASE_URL: `postgres://postgres@127.0.0.1:${nowhere}/x`, REDIS_URL: `redis://127.0.0.1:${nowhere}`, SYNC_JOBS_DIR: dir, PORT: String(await freePort()), WEB_CONCURRENCY: '2', LOG_LEVEL: 'silent' },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    server.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const forked: number[] = [];
    const watch = setInterval(() => forked.push(...serverChildren(server.pid!)), 20);
    const [code] = (await once(server, 'exit')) as [number];
    clearInterval(watch);
    expect(code).toBe(2);
    expect(stderr).toMatch(/cannot start: cannot prepare the Postgres schema \(is DATABASE_URL right and the server up\?\)/);
    expect(forked).toEqual([]);
  });
});

describe('two serving processes on one port', () => {
  let redis: RedisServer;
  let database: { url: string; drop(): Promise<void> };
  let db: PostgresDatabase;
  let server: ChildProcess;
  let port: number;
  let lookups = 0;
  /** Lookups answered 5xx (503 while nothing is published yet): what the SLO counts as failed. */
  let serverErrors = 0;
  const lookup = (id: string) => {
    lookups++;
    return get(port, `/features/v1/${id}?view=wc`).then((r) => ((serverErrors += r.status >= 500 ? 1 : 0), r));
  };

  beforeAll(async () => {
    redis = await startRedis();
    database = await freshDatabase(inject('databaseUrl'), 'webconc');
    db = new PostgresDatabase({ url: database.url });
    const dir = await tempDir('webconc');
    const source = await writeParquet(path.join(dir, 'wc.parquet'), `SELECT 'k' || i AS id, TIMESTAMP '2026-01-01' AS t, i * 10 AS n FROM range(1, 201) t(i)`);
    await writeJobs(dir, [
      { view: 'wc', source, entity_key: 'id', event_time: 't', features: { n: { type: 'integer' } } },
      // Published again every 5 s by the primary's scheduler.
      { view: 'wc_ticking', source, entity_key: 'id', event_time: 't', features: { n: { type: 'integer' } }, schedule: '*/5 * * * * *' },
    ]);
    port = await freePort();
    server = spawn(process.execPath, ['--import', 'tsx', path.resolve('src/server.ts')], {
      env: { PATH: process.env.PATH!, DATABASE_URL: database.url, REDIS_URL: redis.url, SYNC_JOBS_DIR: dir, PORT: String(port), HOST: '127.0.0.1', WEB_CONCURRENCY: '2', SYNC_ON_START: 'true', SCHEDULER_ENABLED: 'true', AUTH_MODE: 'open', LOG_LEVEL: 'silent', SHUTDOWN_GRACE_SECONDS: '2',
        // Workers re-read the catalog only every 10 minutes: a new version reaches them when the primary says so.
        CATALOG_REFRESH_MS: '600000' },
      stdio: ['ignore', 'ignore', 'inherit'],
    });
    const deadline = Date.now() + 60_000;
    while ((await get(port, '/healthz').then((r) => r.status, () => 0)) !== 200) {
      if (Date.now() > deadline || server.exitCode !== null) throw new Error(`the server did not answer /healthz within 60 s (exit code ${server.exitCode})`);
      await new Promise((r) => setTimeout(r, 200));
    }
  });

  afterAll(async () => {
    if (server && server.exitCode === null && server.signalCode === null) {
      server.kill('SIGKILL');
      await once(server, 'exit');
    }
    for (const pid of serverChildren(server?.pid ?? -1)) process.kill(pid, 'SIGKILL');
    await db?.close();
    await redis?.destroy();
    await database?.drop();
  });

  it('both workers answer lookups of the version the primary synced, once', async () => {
    await expect.poll(() => serverChildren(server.pid!).length, { timeout: 30_000 }).toBe(2);
    await expect.poll(() => lookup('k3').then((r) => r.status), { timeout: 30_000, interval: 200 }).toBe(200);
    for (let i = 1; i <= 40; i++) {
      const response = await lookup(`k${i}`);
      expect(response.status).toBe(200);
      expect((JSON.parse(response.body) as { features: { n: number } }).features.n).toBe(i * 10);
    }
    // Syncs run in one place: one start-up run, not one per process.
    const runs = await listRuns(db, 'wc', 10);
    expect(runs.map((r) => [r.trigger, r.status])).toEqual([['startup', 'succeeded']]);
  });

  it('a version the primary publishes is served by every worker at once', async () => {
    const published = async () => (await listRuns(db, 'wc_ticking', 50)).find((r) => r.trigger === 'schedule' && r.status === 'succeeded')?.version ?? 0;
    await expect.poll(published, { timeout: 30_000, interval: 100 }).toBeGreaterThan(0);
    // Right after a scheduled publish (ticks are 5 s apart), every connection, to either worker, sees it.
    const version = await published();
    lookups += 10;
    const seen = await Promise.all(Array.from({ length: 10 }, () => get(port, '/features/v1/k1?view=wc_ticking').then((r) => (JSON.parse(r.body) as { metadata: { version: number } }).metadata.version)));
    expect(Math.min(...seen)).toBeGreaterThanOrEqual(version);
  });

  it('/metrics on any worker shows every process: requests per worker, sums over both, the primary\'s syncs', async () => {
    // A run's record reaches Postgres from its sync child before the primary has counted it (when the child's summary
    // arrives): the scheduled run the test before saw may be a moment from the primary's counters.
    const tickingRuns = async () => samples((await get(port, '/metrics')).body, 'featurestore_sync_runs_total').find((s) => s.labels === '{sync_job="wc_ticking",status="succeeded"}')?.value ?? 0;
    const recorded = (await listRuns(db, 'wc_ticking', 50)).filter((r) => r.status === 'succeeded').length;
    expect(recorded).toBeGreaterThanOrEqual(1);
    await expect.poll(tickingRuns, { timeout: 10_000, interval: 100 }).toBeGreaterThanOrEqual(recorded);
    for (let attempt = 0; attempt < 2; attempt++) {
      const { status, body } = await get(port, '/metrics');
      expect(status).toBe(200);
      const perWorker = samples(body, 'featurestore_process_requests_total');
      expect(perWorker.map((s) => s.labels).sort()).toEqual(['{process="worker-0"}', '{process="worker-1"}']);
      // Round robin over fresh connections: each worker answered some of them.
      for (const sample of perWorker) expect(sample.value).toBeGreaterThan(5);
      // Every lookup is counted once, whichever process answered it.
      const counted = samples(body, 'http_server_request_duration_seconds_count').filter((s) => s.labels.includes('http_route="/features/v1/:entity_id"'));
      expect(counted.reduce((sum, s) => sum + s.value, 0)).toBe(lookups);
      // The primary's sync metrics are in it too.
      expect(samples(body, 'featurestore_sync_runs_total').filter((s) => s.labels.includes('"wc"') && s.value > 0)).toEqual([{ labels: '{sync_job="wc",status="succeeded"}', value: 1 }]);
      expect(samples(body, 'featurestore_sync_runs_total').filter((s) => s.labels.includes('"wc_ticking",status="succeeded"'))[0]?.value).toBeGreaterThanOrEqual(recorded);
      // Gauges are not summed over the two workers: each serves version 1 of wc.
      expect(samples(body, 'featurestore_view_version').filter((s) => s.labels === '{view="wc"}')).toEqual([{ labels: '{view="wc"}', value: 1 }]);
    }
  });

  it('/slo/v1 and the dashboard on any worker count every worker\'s lookups', async () => {
    for (let attempt = 0; attempt < 4; attempt++) {
      const slo = JSON.parse((await get(port, '/slo/v1')).body) as { objectives: { name: string; total: number; good: number }[] };
      // Each lookup once, whichever worker answered it; a worker alone saw about half.
      expect(slo.objectives.map((o) => [o.name, o.total])).toEqual([
        ['latency', lookups],
        ['availability', lookups],
      ]);
      const availability = slo.objectives.find((o) => o.name === 'availability')!;
      expect(availability.good).toBe(lookups - serverErrors);
      const stats = JSON.parse((await get(port, '/dashboard/v1/stats')).body) as { p50_ms: number | null; p99_ms: number | null; lookups_per_second: number };
      expect(stats.p99_ms).toBeGreaterThan(0);
      expect(stats.p50_ms).toBeLessThanOrEqual(stats.p99_ms!);
    }
    // The live rate covers both workers too: 20 lookups on fresh connections (so over both), all within its 10 s.
    const before = Date.now();
    for (let i = 0; i < 20; i++) expect((await lookup(`k${(i % 10) + 1}`)).status).toBe(200);
    const stats = JSON.parse((await get(port, '/dashboard/v1/stats')).body) as { lookups_per_second: number };
    if (Date.now() - before < 8_000) expect(stats.lookups_per_second * 10).toBeGreaterThanOrEqual(20);
  });

  it('a worker that dies is replaced, and the port keeps answering; the machine\'s counters do not fall', async () => {
    const total = (body: string) => samples(body, 'http_server_request_duration_seconds_count').reduce((sum, s) => sum + s.value, 0);
    for (let i = 0; i < 20; i++) expect((await lookup(`k${i + 1}`)).status).toBe(200);
    const before = total((await get(port, '/metrics')).body);
    const sloTotal = async () => (JSON.parse((await get(port, '/slo/v1')).body) as { objectives: { name: string; total: number; good: number }[] }).objectives.find((o) => o.name === 'availability')!;
    const sloBefore = await sloTotal();
    // Workers hand their SLO minutes to the primary every second: three of them leave room for a late timer.
    await new Promise((resolve) => setTimeout(resolve, 3_000));
    const [victim, survivor] = serverChildren(server.pid!);
    process.kill(victim!, 'SIGKILL');
    await expect.poll(() => serverChildren(server.pid!), { timeout: 30_000, interval: 200 }).toEqual(expect.arrayContaining([survivor]));
    await expect.poll(() => serverChildren(server.pid!).filter((pid) => pid !== victim).length, { timeout: 30_000, interval: 200 }).toBe(2);
    await expect.poll(() => get(port, '/metrics').then((r) => samples(r.body, 'featurestore_process_requests_total').length, () => 0), { timeout: 30_000, interval: 200 }).toBe(2);
    for (let i = 0; i < 10; i++) expect((await lookup(`k${i + 1}`)).status).toBe(200);
    // What the dead worker had counted stays in the sums (a fall would read as a counter reset).
    const after = (await get(port, '/metrics')).body;
    expect(total(after)).toBeGreaterThanOrEqual(before + 10);
    // So does what it counted for /slo/v1 and the dashboard (before, its lookups and failures left them with it).
    const sloAfter = await sloTotal();
    expect(sloAfter.total).toBeGreaterThanOrEqual(sloBefore.total + 10);
    expect(sloAfter.total - sloAfter.good).toBeGreaterThanOrEqual(sloBefore.total - sloBefore.good);
    // The replacement takes over its slot's label: the series stay worker-0 and worker-1, however many replacements.
    expect(samples(after, 'featurestore_process_requests_total').map((s) => s.labels).sort()).toEqual(['{process="worker-0"}', '{process="worker-1"}']);
  });

  it('SIGTERM to the primary stops every process, exit code 0', async () => {
    const workers = serverChildren(server.pid!);
    expect(workers).toHaveLength(2);
    server.kill('SIGTERM');
    const [code] = (await once(server, 'exit')) as [number];
    expect(code).toBe(0);
    const alive = (pid: number) => {
      try {
        process.kill(pid, 0);
        return true;
      } catch {
        return false;
      }
    };
    await expect.poll(() => workers.filter(alive), { timeout: 10_000 }).toEqual([]);
  });
});
