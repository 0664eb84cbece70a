// `npm run bench`: measures serving and sync against baselines measured in the
// same run, on the same machine, and writes BENCHMARKS.md. A benchmark, not a
// test: it asserts nothing, it reports medians, ratios and targets.
//
// Starts its own throwaway Postgres and Redis (as the tests do), builds a
// 1,000,000-entity × 20-feature Parquet file with DuckDB, syncs it through the
// real sync path, and drives HTTP load from a separate process (autocannon).
import { execFileSync, fork, spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, readFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { once } from 'node:events';
import { DuckDBInstance } from '@duckdb/node-api';
import { Redis } from 'ioredis';
import pg from 'pg';
import { freePort, startPostgres, startRedis } from '../test/support/servers.js';
import { tempDir } from '../test/support/fixtures.js';
import { benchRedisCluster } from './cluster.js';
import { measureScale } from './scale.js';
import { ctlArgs } from './ctl.js';
import { median } from './stats.js';

const ROWS = Number(process.env.BENCH_ROWS ?? 1_000_000);
const BIG_ROWS = Number(process.env.BENCH_BIG_ROWS ?? 5_000_000);
const SECONDS = Number(process.env.BENCH_SECONDS ?? 8);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
// The comparisons in mirrored rounds (bench/rounds.ts: Redis Cluster against one node, WEB_CONCURRENCY=2 against 1)
// measure each setup twice a round, and take more, shorter rounds for a steady median (11 rounds of 4 s slices by
// default: on a shared VM one round's ratio moves by 10-20%; 3 for a quick look with BENCH_ROUNDS=1).
const MIRRORED_ROUNDS = Math.max(ROUNDS, Math.min(11, 4 * ROUNDS - 1));
const MIRRORED_SECONDS = Math.min(SECONDS, 4);
const CONNECTIONS = 32;
const root = path.resolve(import.meta.dirname, '..');
const tsx = ['--import', 'tsx'];

const log = (message: string) => process.stderr.write(`[bench] ${message}\n`);
const seconds = async (fn: () => Promise<unknown> | unknown) => {
  const start = performance.now();
  await fn();
  return (performance.now() - start) / 1000;
};

// 20 features of mixed types: 5 integers, 8 doubles, 4 strings, 2 booleans, 1 timestamp.
const dataSql = (rows: number) => `
  SELECT 'e' || lpad(i::VARCHAR, 7, '0') AS id,
    TIMESTAMP '2026-01-01' + INTERVAL (i % 86400) SECOND AS updated_at,
    i % 1000 AS i1, (i * 7) % 100000 AS i2, i % 7 AS i3, (i * 13) % 5000 AS i4, i AS i5,
    (hash(i) % 1000000) / 1000.0 AS d1, (hash(i + 1) % 1000000) / 997.0 AS d2, (i % 1000) / 7.0 AS d3, sqrt(i) AS d4,
    ln(i + 1) AS d5, (hash(i * 3) % 100000) / 100000.0 AS d6, i * 0.25 AS d7, -(i % 500) / 3.0 AS d8,
    'cat_' || (i % 50) AS s1, substr(md5(i::VARCHAR), 1, 12) AS s2, 'region-' || (i % 12) AS s3, CASE i % 3 WHEN 0 THEN 'web' WHEN 1 THEN 'ios' ELSE 'android' END AS s4,
    i % 2 = 0 AS b1, i % 5 = 0 AS b2,
    TIMESTAMP '2025-01-01' + INTERVAL (i % 100000) MINUTE AS t1
  FROM range(1, ${rows + 1}) t(i)`;
const FEATURES = {
  ...Object.fromEntries([1, 2, 3, 4, 5].map((n) => [`i${n}`, { type: 'integer' }])),
  ...Object.fromEntries([1, 2, 3, 4, 5, 6, 7, 8].map((n) => [`d${n}`, { type: 'double' }])),
  ...Object.fromEntries([1, 2, 3, 4].map((n) => [`s${n}`, { type: 'string' }])),
  b1: { type: 'boolean' },
  b2: { type: 'boolean' },
  t1: { type: 'timestamp' },
};
const COLUMNS = Object.keys(FEATURES);
const PG_TYPES: Record<string, string> = { integer: 'bigint', double: 'double precision', string: 'text', boolean: 'boolean', timestamp: 'timestamptz' };
const ISO = `'%Y-%m-%dT%H:%M:%S.%fZ'`;
const compactValue = `json_array(strftime(updated_at::TIMESTAMPTZ, ${ISO}), ${COLUMNS.map((c) => (c === 't1' ? `strftime(t1::TIMESTAMPTZ, ${ISO})` : c)).join(', ')})`;
const objectValue = `to_json(struct_pack(event_time := strftime(updated_at::TIMESTAMPTZ, ${ISO}), ${COLUMNS.map((c) => `${c} := ${c === 't1' ? `strftime(t1::TIMESTAMPTZ, ${ISO})` : c}`).join(', ')}))`;

async function duck(sql: string[], onChunk?: (rows: string[][]) => void): Promise<void> {
  const instance = await DuckDBInstance.create(':memory:', { threads: '2' });
  const conn = await instance.connect();
  await conn.run(`SET TimeZone = 'UTC'`);
  for (const statement of sql.slice(0, -1)) await conn.run(statement);
  const last = sql.at(-1)!;
  if (onChunk) {
    const result = await conn.stream(last);
    for (;;) {
      const chunk = await result.fetchChunk();
      if (!chunk || chunk.rowCount === 0) break;
      onChunk(chunk.getRows() as string[][]);
    }
  } else await conn.run(last);
  conn.closeSync();
  instance.closeSync();
}

/** Writes SET commands in the Redis protocol, for `redis-cli --pipe`. */
async function writeRespFile(file: string, parquet: string, prefix: string, valueSql: string): Promise<void> {
  const out = createWriteStream(file);
  const cmd = (key: string, value: string) => `*3\r\n$3\r\nSET\r\n$${Buffer.byteLength(key)}\r\n${key}\r\n$${Buffer.byteLength(value)}\r\n${value}\r\n`;
  let pending: string[] = [];
  await duck([`SELECT '${prefix}' || id AS k, CAST(${valueSql} AS VARCHAR) AS v FROM read_parquet('${parquet}')`], (rows) => {
    for (const [k, v] of rows) pending.push(cmd(k!, v!));
    if (pending.length > 10_000) {
      out.write(pending.join(''));
      pending = [];
    }
  });
  out.write(pending.join(''));
  out.end();
  await once(out, 'finish');
}

/** Runs a command to completion, returning its wall time and its peak resident memory (VmHWM). */
async function measured(command: string, args: string[], env: NodeJS.ProcessEnv, input?: string): Promise<{ seconds: number; peakRssMb: number; stdout: string; code: number | null }> {
  const start = performance.now();
  const child = spawn(command, args, { env, stdio: [input ? 'pipe' : 'ignore', 'pipe', 'pipe'] });
  if (input) {
    const stream = (await import('node:fs')).createReadStream(input);
    stream.pipe(child.stdin!);
  }
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d) => (stdout += d));
  child.stderr!.on('data', (d) => (stderr += d));
  let peak = 0;
  const timer = setInterval(() => {
    try {
      const status = readFileSync(`/proc/${child.pid}/status`, 'utf8');
      const hwm = Number(/VmHWM:\s+(\d+) kB/.exec(status)?.[1] ?? 0);
      peak = Math.max(peak, hwm);
    } catch {
      // exited
    }
  }, 50);
  const [code] = (await once(child, 'exit')) as [number | null];
  clearInterval(timer);
  if (code !== 0) log(`${command} ${args.join(' ')} exited ${code}: ${stderr.slice(0, 500)}`);
  return { seconds: (performance.now() - start) / 1000, peakRssMb: peak / 1024, stdout, code };
}

async function startProcess(args: string[], env: NodeJS.ProcessEnv, readyUrl: string): Promise<ChildProcess> {
  const child = spawn(process.execPath, args, { env, stdio: ['ignore', 'ignore', 'inherit'] });
  for (let i = 0; i < 600; i++) {
    try {
      const response = await fetch(readyUrl);
      if (response.status < 500) return child;
    } catch {
      // not up yet
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`server ${args.join(' ')} did not answer ${readyUrl}`);
}

async function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null) return;
  child.kill('SIGTERM');
  await once(child, 'exit');
}

interface LoadResult {
  rps: number;
  p50: number;
  p99: number;
  errors: number;
  non2xx: number;
}

async function load(template: string, options: { rate?: number; method?: string; batch?: number; seconds?: number; ids?: number } = {}): Promise<LoadResult> {
  const args = [...tsx, path.join(root, 'bench/load.ts'), template, String(options.ids ?? ROWS), String(options.seconds ?? SECONDS), String(CONNECTIONS), options.method ?? 'GET', String(options.batch ?? 0)];
  const output = execFileSync(process.execPath, args, { env: { ...process.env, ...(options.rate ? { RATE: String(Math.round(options.rate)) } : {}) }, encoding: 'utf8' });
  const result = JSON.parse(output.trim().split('\n').at(-1)!) as LoadResult;
  if (result.errors || result.non2xx) log(`load on ${template}: ${result.errors} errors, ${result.non2xx} non-2xx`);
  return result;
}

/** A fixed offered rate, open loop (bench/open-loop.ts): latencies in microseconds, counted from when each request was due. */
async function openLoad(template: string, rate: number, seconds = SECONDS): Promise<LoadResult> {
  const args = [...tsx, path.join(root, 'bench/open-loop.ts'), template, String(ROWS), String(seconds), String(Math.round(rate)), String(CONNECTIONS)];
  const output = execFileSync(process.execPath, args, { encoding: 'utf8' });
  const result = JSON.parse(output.trim().split('\n').at(-1)!) as LoadResult & { late: number };
  if (result.errors || result.non2xx || result.late) log(`open-loop load on ${template}: ${result.errors} errors, ${result.non2xx} non-2xx, ${result.late} unanswered at the end`);
  return result;
}

async function rounds(template: string, options: Parameters<typeof load>[1] = {}): Promise<LoadResult> {
  const results: LoadResult[] = [];
  for (let i = 0; i < ROUNDS; i++) results.push(options.rate ? await openLoad(template, options.rate, options.seconds) : await load(template, options));
  return { rps: median(results.map((r) => r.rps)), p50: median(results.map((r) => r.p50)), p99: median(results.map((r) => r.p99)), errors: results.reduce((a, r) => a + r.errors, 0), non2xx: results.reduce((a, r) => a + r.non2xx, 0) };
}

type Row = { metric: string; value: string; baseline: string; ratio: number | null; target: string; met: boolean | null };
const rowsOut: Row[] = [];
const report = (metric: string, value: string, baseline: string, ratio: number | null, target: string, met: boolean | null) => {
  rowsOut.push({ metric, value, baseline, ratio, target, met });
  log(`${metric}: ${value} vs ${baseline} → ${ratio?.toFixed(2) ?? '-'} (${target}) ${met === null ? '' : met ? 'MET' : 'NOT MET'}`);
};

async function main(): Promise<void> {
  const started = Date.now();
  log(`building (tsc) and starting Postgres and Redis; ${ROWS} rows, ${ROUNDS} rounds of ${SECONDS} s`);
  execFileSync('npm', ['run', '-s', 'build'], { cwd: root, stdio: 'inherit' });
  const postgres = await startPostgres();
  const redisServer = await startRedis();
  const redis = new Redis(redisServer.url);
  const admin = new pg.Client({ connectionString: postgres.url });
  await admin.connect();
  const dir = await tempDir('bench');
  try {
    const parquet = path.join(dir, 'bench.parquet');
    log('writing the Parquet source with DuckDB');
    await duck([`COPY (${dataSql(ROWS)}) TO '${parquet}' (FORMAT parquet)`]);
    const csv = path.join(dir, 'bench.csv');
    await duck([
      `COPY (SELECT id, updated_at::TIMESTAMPTZ, ${COLUMNS.map((c) => (c === 't1' ? 't1::TIMESTAMPTZ' : c)).join(', ')} FROM read_parquet('${parquet}')) TO '${csv}' (FORMAT csv, HEADER false)`,
    ]);
    const compactResp = path.join(dir, 'compact.resp');
    const objectResp = path.join(dir, 'object.resp');
    await writeRespFile(compactResp, parquet, 'base:', compactValue);
    await writeRespFile(objectResp, parquet, 'json:', objectValue);
    execFileSync('chmod', ['-R', 'a+rX', dir]);

    // ---- Sync baselines: psql \copy + primary key; redis-cli --pipe.
    const psql = ['-X', '-q', '-v', 'ON_ERROR_STOP=1', postgres.url];
    const tableDdl = `CREATE TABLE base (entity_id text NOT NULL, event_time timestamptz NOT NULL, ${COLUMNS.map((c) => `${c} ${PG_TYPES[(FEATURES as Record<string, { type: string }>)[c]!.type]}`).join(', ')})`;
    const copyTimes: number[] = [];
    for (let i = 0; i < ROUNDS; i++) {
      await admin.query('DROP TABLE IF EXISTS base');
      await admin.query(tableDdl);
      copyTimes.push(
        await seconds(() => {
          execFileSync('psql', [...psql, '-c', `\\copy base FROM '${csv}' WITH (FORMAT csv)`]);
          execFileSync('psql', [...psql, '-c', 'ALTER TABLE base ADD PRIMARY KEY (entity_id)']);
        }),
      );
    }
    await admin.query('DROP TABLE IF EXISTS base');
    const pipeTimes: number[] = [];
    for (let i = 0; i < ROUNDS; i++) {
      await redis.flushall();
      pipeTimes.push((await measured('redis-cli', ['-p', String(redisServer.port), '--pipe'], process.env, compactResp)).seconds);
    }
    await redis.flushall();
    const emptyMemory = Number(/used_memory:(\d+)/.exec(await redis.info('memory'))![1]);
    await measured('redis-cli', ['-p', String(redisServer.port), '--pipe'], process.env, objectResp);
    const objectBytes = (Number(/used_memory:(\d+)/.exec(await redis.info('memory'))![1]) - emptyMemory) / ROWS;
    await redis.flushall();

    // ---- Our sync: the real path, from Parquet to Postgres and Redis, in its own process.
    const jobs = path.join(dir, 'jobs');
    const { mkdir } = await import('node:fs/promises');
    await mkdir(jobs);
    const job = (view: string, source: string) => ({ view, source, entity_key: 'id', event_time: 'updated_at', features: FEATURES, schedule: '0 0 1 1 *', freshness: '3650d', max_row_drop: 1 });
    for (const [view, source] of [
      ['bench', parquet],
      ['bench_other', parquet],
    ] as const) {
      await writeFile(path.join(jobs, `${view}.yaml`), JSON.stringify(job(view, source)));
    }
    // Lookups are measured without API keys (AUTH_MODE=open): with keys, each request also takes a token from its
    // key's bucket in Redis (one more round trip), which BENCHMARKS.md notes.
    // One serving process (WEB_CONCURRENCY=1), like the single-process baselines; bench/scale.ts measures two.
    const env = { ...process.env, DATABASE_URL: postgres.url, REDIS_URL: redisServer.url, SYNC_JOBS_DIR: jobs, LOG_LEVEL: 'warn', AUTH_MODE: 'open', WEB_CONCURRENCY: '1' };
    const syncRuns: { seconds: number; peakRssMb: number }[] = [];
    let oursBytes = 0;
    for (let i = 0; i < ROUNDS; i++) {
      const result = await measured(process.execPath, ctlArgs('sync', 'bench'), env);
      if (result.code !== 0) throw new Error('the benchmark sync failed');
      syncRuns.push(result);
      if (i === 0) oursBytes = (Number(/used_memory:(\d+)/.exec(await redis.info('memory'))![1]) - emptyMemory) / ROWS;
    }
    const copyBaseline = median(copyTimes);
    const syncTime = median(syncRuns.map((r) => r.seconds));
    report('Sync 1M × 20, Parquet → Postgres + Redis (s)', syncTime.toFixed(2), `${copyBaseline.toFixed(2)} (psql \\copy + primary key)`, syncTime / copyBaseline, '≤ 1.5×', syncTime / copyBaseline <= 1.5);
    report('  for reference: redis-cli --pipe of the same values (s)', median(pipeTimes).toFixed(2), '-', null, 'info', null);
    const rss1m = median(syncRuns.map((r) => r.peakRssMb));
    report('Sync peak RSS at 1M rows (MB)', rss1m.toFixed(0), '300 MB', rss1m / 300, '≤ 300 MB', rss1m <= 300);
    report('Redis memory per entity (bytes)', oursBytes.toFixed(0), `${objectBytes.toFixed(0)} (features as a JSON object string)`, oursBytes / objectBytes, '≤ 0.6×', oursBytes / objectBytes <= 0.6);

    // ---- Serving.
    const body = await (async () => {
      const server = await startProcess([path.join(root, 'dist/server.js')], { ...env, PORT: '18080', HOST: '127.0.0.1', SCHEDULER_ENABLED: 'false' }, 'http://127.0.0.1:18080/healthz');
      const text = await (await fetch('http://127.0.0.1:18080/features/v1/e0000042?view=bench')).text();
      await stop(server);
      return text;
    })();
    const bodyFile = path.join(dir, 'body.json');
    await writeFile(bodyFile, body);
    const ports = { bare: await freePort(), bareRedis: await freePort(), barePg: await freePort(), ours: await freePort(), oursPg: await freePort() };
    const baseline = async (mode: string, port: number, target: string, extra = '') => {
      const child = fork(path.join(root, 'bench/bare.ts'), [mode, String(port), target, extra], { execArgv: tsx, stdio: 'inherit' });
      await once(child, 'message');
      return child;
    };
    const url = (port: number, query = '') => `http://127.0.0.1:${port}/features/v1/{id}${query}`;

    const bare = await baseline('const', ports.bare, bodyFile);
    const bareSaturation = await rounds(url(ports.bare));
    const fixedRate = bareSaturation.rps / 2;
    const bareFixed = await rounds(url(ports.bare), { rate: fixedRate });
    await stop(bare);

    const currentVersion = (await admin.query(`SELECT current_version FROM featurestore.views WHERE view = 'bench'`)).rows[0].current_version;
    const bareRedis = await baseline('redis', ports.bareRedis, redisServer.url, `fs:bench:${currentVersion}:`);
    const bareRedisResult = await rounds(url(ports.bareRedis));
    await stop(bareRedis);
    const barePg = await baseline('pg', ports.barePg, postgres.url, `featurestore_data."bench__v${currentVersion}"`);
    const barePgResult = await rounds(url(ports.barePg));
    await stop(barePg);

    const ours = await startProcess([path.join(root, 'dist/server.js')], { ...env, PORT: String(ports.ours), HOST: '127.0.0.1', SCHEDULER_ENABLED: 'false' }, `http://127.0.0.1:${ports.ours}/healthz`);
    const oursSaturation = await rounds(url(ports.ours, '?view=bench'));
    const oursFixed = await rounds(url(ports.ours, '?view=bench'), { rate: fixedRate });
    report('Lookup, Redis tier: requests/s', oursSaturation.rps.toFixed(0), `${bareSaturation.rps.toFixed(0)} (bare Hono, constant JSON)`, oursSaturation.rps / bareSaturation.rps, '≥ 0.9×', oursSaturation.rps / bareSaturation.rps >= 0.9);
    report('  for reference: bare Hono + one ioredis GET (req/s)', bareRedisResult.rps.toFixed(0), `${bareSaturation.rps.toFixed(0)}`, bareRedisResult.rps / bareSaturation.rps, 'info', null);
    report(`Lookup, Redis tier: p99 at ${fixedRate.toFixed(0)} req/s offered, open loop (ms)`, oursFixed.p99.toFixed(2), `${bareFixed.p99.toFixed(2)} (bare Hono, constant JSON)`, oursFixed.p99 / bareFixed.p99, '≤ 1.3×', oursFixed.p99 / bareFixed.p99 <= 1.3);
    const batch = await rounds(`http://127.0.0.1:${ports.ours}/features/v1/batch`, { method: 'POST', batch: 100 });
    report('Batch of 100: entities/s', (batch.rps * 100).toFixed(0), `${oursSaturation.rps.toFixed(0)} (single lookups)`, (batch.rps * 100) / oursSaturation.rps, '≥ 20×', (batch.rps * 100) / oursSaturation.rps >= 20);

    // Lookups while a 1M-row sync of another view runs, at a fixed rate this server sustains (half its saturation).
    const syncRate = oursSaturation.rps / 2;
    const quiet = await openLoad(url(ports.ours, '?view=bench'), syncRate);
    const syncing = measured(process.execPath, ctlArgs('sync', 'bench_other'), env);
    await new Promise((r) => setTimeout(r, 1500));
    const busy = await openLoad(url(ports.ours, '?view=bench'), syncRate, Math.min(SECONDS, 6));
    await syncing;
    report(`Lookup p99 while a 1M sync runs, ${syncRate.toFixed(0)} req/s offered (ms)`, busy.p99.toFixed(2), `${quiet.p99.toFixed(2)} (no sync, same rate)`, busy.p99 / quiet.p99, '≤ 1.5×', busy.p99 / quiet.p99 <= 1.5);
    await stop(ours);

    // The optional in-process tier in front of Redis, on a hot set it can hold (10,000 entities).
    const cached = await startProcess([path.join(root, 'dist/server.js')], { ...env, PROCESS_CACHE_ENTRIES: '100000', PORT: String(ports.ours), HOST: '127.0.0.1', SCHEDULER_ENABLED: 'false' }, `http://127.0.0.1:${ports.ours}/healthz`);
    await load(url(ports.ours, '?view=bench'), { ids: 10_000, seconds: 2 });
    const cachedResult = await rounds(url(ports.ours, '?view=bench'), { ids: 10_000 });
    await stop(cached);
    report('  for reference: lookups from the in-process tier (PROCESS_CACHE_ENTRIES), 10k hot entities (req/s)', cachedResult.rps.toFixed(0), `${bareSaturation.rps.toFixed(0)} (bare Hono, constant JSON)`, cachedResult.rps / bareSaturation.rps, 'info', null);

    // Postgres only: Redis pointed at a port where nothing listens.
    const deadRedis = `redis://127.0.0.1:${await freePort()}`;
    const oursPg = await startProcess([path.join(root, 'dist/server.js')], { ...env, REDIS_URL: deadRedis, PORT: String(ports.oursPg), HOST: '127.0.0.1', SCHEDULER_ENABLED: 'false' }, `http://127.0.0.1:${ports.oursPg}/healthz`);
    const oursPgResult = await rounds(url(ports.oursPg, '?view=bench'));
    await stop(oursPg);
    report('Lookup, Postgres only: requests/s', oursPgResult.rps.toFixed(0), `${barePgResult.rps.toFixed(0)} (bare Hono + one prepared pg select)`, oursPgResult.rps / barePgResult.rps, '≥ 0.9×', oursPgResult.rps / barePgResult.rps >= 0.9);

    // Every core: WEB_CONCURRENCY=2 against one process, and the same for a bare Hono route (the honest ceiling on 2 cores).
    log('WEB_CONCURRENCY=1 vs 2, ours and a bare route');
    const scale = await measureScale({ env, rows: ROWS, seconds: MIRRORED_SECONDS, rounds: MIRRORED_ROUNDS, workDir: dir });
    const list = (ratios: number[]) => ratios.map((r) => `${r.toFixed(2)}×`).join(', ');
    const spread = (control: number[]) => `${Math.min(...control).toFixed(2)}–${Math.max(...control).toFixed(2)}×`;
    report(
      'Lookups/s gain from WEB_CONCURRENCY=2 over 1 (median of mirrored rounds)',
      `${scale.oursSpeedup.toFixed(2)}× (${scale.ours.one.toFixed(0)} → ${scale.ours.two.toFixed(0)})`,
      `${scale.bareSpeedup.toFixed(2)}× (bare Hono, 1 → 2 cluster workers: ${scale.bare.one.toFixed(0)} → ${scale.bare.two.toFixed(0)}; rounds ${list(scale.speedupRatios)}${scale.errors ? `; **${scale.errors} failed requests**` : ''})`,
      scale.speedupRatio,
      '≥ 0.9× of the bare gain',
      scale.met,
    );
    report('  control: each setup against itself in the same rounds (ratio 1.00× on a quiet machine)', spread(scale.control), `${scale.control.length} slice pairs`, median(scale.control), 'info', null);

    // Memory at 5M rows.
    log(`writing ${BIG_ROWS} rows for the memory check`);
    const big = path.join(dir, 'big.parquet');
    await duck([`COPY (${dataSql(BIG_ROWS)}) TO '${big}' (FORMAT parquet)`]);
    await writeFile(path.join(jobs, 'bench_big.yaml'), JSON.stringify(job('bench_big', big)));
    await redis.flushall();
    const bigRun = await measured(process.execPath, ctlArgs('sync', 'bench_big'), env);
    report(`Sync peak RSS at ${BIG_ROWS / 1e6}M rows (MB)`, bigRun.peakRssMb.toFixed(0), `${rss1m.toFixed(0)} (at 1M)`, bigRun.peakRssMb / rss1m, '≤ 300 MB and within 10% of 1M', bigRun.peakRssMb <= 300 && Math.abs(bigRun.peakRssMb / rss1m - 1) <= 0.1);
    report(`  for reference: sync ${BIG_ROWS / 1e6}M × 20 (s)`, bigRun.seconds.toFixed(1), '-', null, 'info', null);

    // Redis Cluster (3 masters + 3 replicas) against one Redis node, same data and code: the ratio is the median of
    // the rounds' ratios (each round A B C C B A), since one slice's drift swamps the difference; the control (each
    // setup against itself in the same rounds) shows how far the machine alone moves a ratio.
    log('Redis Cluster against one Redis node');
    const clusterBench = await benchRedisCluster({ rows: Math.min(ROWS, 200_000), seconds: MIRRORED_SECONDS, rounds: MIRRORED_ROUNDS, log });
    // A setup that answered errors or non-2xx may be fast for the wrong reason: say so, and never count the row as met.
    const failures = (c: { node: { errors: number; non2xx: number }; cluster: { errors: number; non2xx: number } }) => {
      const count = c.node.errors + c.node.non2xx + c.cluster.errors + c.cluster.non2xx;
      return count ? `; **${c.node.errors + c.node.non2xx} failed requests on the node, ${c.cluster.errors + c.cluster.non2xx} on the cluster**` : '';
    };
    const control = clusterBench.single.control;
    report(
      'Lookups/s through a Redis Cluster (median of A B C C B A rounds)',
      clusterBench.single.cluster.rps.toFixed(0),
      `${clusterBench.single.node.rps.toFixed(0)} (one Redis node; rounds ${list(clusterBench.single.ratios)}${failures(clusterBench.single)})`,
      clusterBench.single.ratio,
      '≥ 0.9×',
      clusterBench.single.ratio >= 0.9 && !failures(clusterBench.single),
    );
    report(
      '  control: each setup against itself in the same rounds (ratio 1.00× on a quiet machine)',
      spread(control),
      `${control.length} slice pairs`,
      median(control),
      'info',
      null,
    );
    report('  for reference: API CPU per lookup, one node over the cluster (µs)', clusterBench.single.cluster.apiCpuUs!.toFixed(0), `${clusterBench.single.node.apiCpuUs!.toFixed(0)} (one Redis node)`, clusterBench.single.cpuRatio, 'info', null);
    report(`  for reference: batches of ${clusterBench.batch.size} through the cluster (req/s)`, clusterBench.batch.cluster.rps.toFixed(0), `${clusterBench.batch.node.rps.toFixed(0)} (one Redis node; rounds ${list(clusterBench.batch.ratios)}${failures(clusterBench.batch)})`, clusterBench.batch.ratio, 'info', null);
    // The same cluster client and read path on a cluster of one master: the gap between this row and the cluster row is
    // what reading three masters per coalesced read costs, apart from the cluster code itself.
    const one = clusterBench.clusterOfOne;
    report(
      '  for reference: lookups/s through a Redis Cluster of one master (same rounds)',
      one.cluster.rps.toFixed(0),
      `${one.node.rps.toFixed(0)} (one Redis node; rounds ${list(one.ratios)}${failures(one)}; control ${spread(one.control)})`,
      one.ratio,
      'info',
      null,
    );

    const cpu = os.cpus()[0]?.model ?? 'unknown CPU';
    const table = [
      '| measure | value | baseline (same run) | ratio | target | met |',
      '|---|---|---|---|---|---|',
      ...rowsOut.map((r) => `| ${r.metric} | ${r.value} | ${r.baseline} | ${r.ratio === null ? '' : `${r.ratio.toFixed(2)}×`} | ${r.target} | ${r.met === null ? '' : r.met ? 'met' : '**not met**'} |`),
    ].join('\n');
    const markdown = `# Benchmarks

Produced by \`npm run bench\` on ${new Date().toISOString().slice(0, 10)}; every figure is the median of ${ROUNDS} rounds
(load: ${SECONDS} s each, ${CONNECTIONS} connections, autocannon in its own process on loopback), and every ratio is
against a baseline measured in the same run on the same machine. Two comparisons run in mirrored rounds instead:
${MIRRORED_ROUNDS} rounds of ${MIRRORED_SECONDS} s slices, each round measuring every setup twice in mirrored order (A B C C B A, the first
rotating), each ratio being the median of the rounds' ratios, with a control row giving each setup against itself in
the same rounds. They are WEB_CONCURRENCY=2 against 1 (four setups: ours and a bare route, each with one and two
processes) and the Redis Cluster against one node (three setups: one node, the cluster, a cluster of one master).
${clusterBench.pinned ? `In the Redis Cluster rounds the API processes ran on CPU ${clusterBench.pinned.api} and the Redis servers and the load generator on CPU ${clusterBench.pinned.others} (taskset), as Redis would run on other machines in a deployment.` : 'The Redis Cluster rounds ran unpinned (taskset missing or one CPU): Redis and the load generator shared the API processes\' CPUs.'}

Machine: ${os.cpus().length} × ${cpu}, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.version}, ${os.type()} ${os.release()}.
Data: ${ROWS.toLocaleString('en')} entities × 20 features (5 integer, 8 double, 4 string, 2 boolean, 1 timestamp), Parquet made by DuckDB.
Command: \`npm run bench\` (BENCH_ROWS=${ROWS}, BENCH_BIG_ROWS=${BIG_ROWS}, BENCH_SECONDS=${SECONDS}, BENCH_ROUNDS=${ROUNDS}); total ${((Date.now() - started) / 60000).toFixed(1)} min.
Lookups run with tracing off and AUTH_MODE=open; with API keys each request also takes a token from its key's rate-limit bucket in Redis.

${table}
`;
    await writeFile(path.join(root, 'BENCHMARKS.md'), markdown);
    process.stdout.write(`\n${table}\n\nwritten to BENCHMARKS.md\n`);
  } finally {
    redis.disconnect();
    await admin.end();
    await redisServer.destroy();
    await postgres.destroy();
  }
}

await main();
