// Lookups through a Redis Cluster against lookups through one Redis node, in
// the same run on the same machine: a benchmark, not a test (it asserts
// nothing). Starts its own Postgres, one Redis node, a Redis Cluster of three
// masters with one replica each and, for reference, a Redis Cluster of one
// master (every slot on one node: the cluster client and read path without
// the extra masters). Syncs the same Parquet data into each setup through the
// real sync path (ctl, from dist/), runs one API process per setup, and
// drives autocannon (bench/load.ts, its own process) at each in mirrored
// rounds (bench/rounds.ts: A B C C B A, with a control). Each round gives each
// cluster one ratio, its two slices over the node's two; the ratio reported is
// the median over the rounds, printed beside the control's spread. Batches are
// a reference: alternating pairs, node and three-master cluster.
//
// Where taskset can (two CPUs or more allowed), each API process gets the
// first allowed CPU to itself and every Redis server and the load generator
// get the others, for all three setups alike: in a deployment the seven Redis
// processes of these setups run on other machines, not on the API's core, and
// the comparison is about what a lookup costs the API. It does not remove the
// machine's noise: the control's spread ranged from 0.95-1.13x to 0.51-1.53x
// over the pinned runs (README).
//
// Standalone: `node --import tsx bench/cluster.ts` builds, runs and prints one
// JSON object. From bench/run.ts: `await benchRedisCluster({ ... })` after the
// build (it expects dist/ to be current).
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { DuckDBInstance } from '@duckdb/node-api';
import { tempDir } from '../test/support/fixtures.js';
import { ctlArgs } from './ctl.js';
import { control, mirroredRounds, roundRate, type Round } from './rounds.js';
import { median } from './stats.js';
import { freePort, startPostgres, startRedis, startRedisCluster } from '../test/support/servers.js';

export interface ClusterLoadResult {
  rps: number;
  p50: number;
  p99: number;
  errors: number;
  non2xx: number;
  /** CPU time of the API process per request (µs): less sensitive to other load on the machine than requests/s. */
  apiCpuUs?: number;
}

export interface ClusterBenchOptions {
  /** Entities in the data set (ids e0000001…). */
  readonly rows?: number;
  /** Seconds per load round. */
  readonly seconds?: number;
  readonly rounds?: number;
  readonly connections?: number;
  /** Entities per batch request in the batch comparison. */
  readonly batch?: number;
  readonly log?: (message: string) => void;
}

export interface ClusterBenchResult {
  /** CPUs (taskset lists) of the API processes and of everything else, or null where the processes were not pinned. */
  readonly pinned: { readonly api: string; readonly others: string } | null;
  readonly rows: number;
  readonly rounds: number;
  readonly seconds: number;
  readonly connections: number;
  /** Single lookups: medians over every slice, and the median of the rounds' ratios (cluster / node), with the control. */
  readonly single: Comparison & {
    /**
     * The noise floor: each setup's second slice of a round over its first, for every round. Identical code against
     * itself, so its spread is what the machine alone moves a ratio by.
     */
    readonly control: number[];
  };
  /** Batch lookups (requests/s of `batch` entities each): alternating pairs, for reference. */
  readonly batch: Comparison & { readonly size: number };
  /**
   * Single lookups through a Redis Cluster of one master (same rounds and
   * control as `single`): the cluster client and read path without the extra
   * masters, so `single` against this tells what reading three masters costs.
   */
  readonly clusterOfOne: Comparison & { readonly control: number[] };
}

type Setup = 'node' | 'cluster' | 'one';
const SETUPS: readonly Setup[] = ['node', 'cluster', 'one'];
const DESCRIBED: Record<Setup, string> = { node: 'one Redis node', cluster: 'the Redis Cluster', one: 'a Redis Cluster of one master' };

export interface Comparison {
  readonly node: ClusterLoadResult;
  readonly cluster: ClusterLoadResult;
  /** Median of `ratios`. */
  readonly ratio: number;
  /** Each round's cluster req/s over the node's req/s, from slices measured back to back. */
  readonly ratios: number[];
  /** Median over the rounds of the node's API CPU per request over the cluster's (above 1: the cluster costs the API less). */
  readonly cpuRatio: number;
}

const root = path.resolve(import.meta.dirname, '..');
const tsx = ['--import', 'tsx'];

const medianOf = (results: ClusterLoadResult[]): ClusterLoadResult => ({
  rps: median(results.map((r) => r.rps)),
  p50: median(results.map((r) => r.p50)),
  p99: median(results.map((r) => r.p99)),
  errors: results.reduce((a, r) => a + r.errors, 0),
  non2xx: results.reduce((a, r) => a + r.non2xx, 0),
  apiCpuUs: median(results.map((r) => r.apiCpuUs ?? 0)),
});

/** User + system CPU seconds of a process so far, from /proc. */
function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

// Ten features of mixed types, ids in bench/load.ts's format.
const FEATURES = {
  i1: { type: 'integer' },
  i2: { type: 'integer' },
  i3: { type: 'integer' },
  d1: { type: 'double' },
  d2: { type: 'double' },
  d3: { type: 'double' },
  s1: { type: 'string' },
  s2: { type: 'string' },
  b1: { type: 'boolean' },
  t1: { type: 'timestamp' },
};
const dataSql = (rows: number) => `
  SELECT 'e' || lpad(i::VARCHAR, 7, '0') AS id, TIMESTAMP '2026-01-01' + INTERVAL (i % 86400) SECOND AS updated_at,
    i % 1000 AS i1, (i * 7) % 100000 AS i2, i AS i3, (hash(i) % 1000000) / 1000.0 AS d1, sqrt(i) AS d2, i * 0.25 AS d3,
    'cat_' || (i % 50) AS s1, substr(md5(i::VARCHAR), 1, 12) AS s2, i % 2 = 0 AS b1, TIMESTAMP '2025-01-01' + INTERVAL (i % 100000) MINUTE AS t1
  FROM range(1, ${rows + 1}) t(i)`;

async function writeParquet(file: string, rows: number): Promise<void> {
  const instance = await DuckDBInstance.create(':memory:', { threads: '2' });
  const conn = await instance.connect();
  try {
    await conn.run(`COPY (${dataSql(rows)}) TO '${file}' (FORMAT parquet)`);
  } finally {
    conn.closeSync();
    instance.closeSync();
  }
}

/** This process's allowed CPUs split into the API's (the first) and the rest; null where taskset is missing, refuses, or allows one CPU. */
function cpuSplit(): { api: string; others: string } | null {
  let list: string;
  try {
    list = execFileSync('taskset', ['-pc', String(process.pid)], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).split(':').at(-1)!.trim();
  } catch {
    return null;
  }
  const cpus = list.split(',').flatMap((part) => {
    const [from, to = from] = part.split('-').map(Number);
    return Array.from({ length: to! - from! + 1 }, (_, i) => from! + i);
  });
  if (cpus.length < 2 || cpus.some((cpu) => !Number.isInteger(cpu))) return null;
  return { api: String(cpus[0]), others: cpus.slice(1).join(',') };
}

/** Moves a running process, every thread of it, onto `cpus`. */
function pin(pid: number, cpus: string): void {
  execFileSync('taskset', ['-a', '-p', '-c', cpus, String(pid)], { stdio: 'ignore' });
}

/** The process id of the Redis server on `port`, as it reports it. */
function redisPid(port: number): number {
  const info = execFileSync('redis-cli', ['-h', '127.0.0.1', '-p', String(port), 'INFO', 'server'], { encoding: 'utf8' });
  const pid = Number(/process_id:(\d+)/.exec(info)?.[1]);
  if (!pid) throw new Error(`the Redis server on port ${port} did not report its process_id`);
  return pid;
}

async function startApi(env: NodeJS.ProcessEnv, port: number): Promise<ChildProcess> {
  const child = spawn(process.execPath, [path.join(root, 'dist/server.js')], { env: { ...env, PORT: String(port), HOST: '127.0.0.1', SCHEDULER_ENABLED: 'false', WEB_CONCURRENCY: '1' }, stdio: ['ignore', 'ignore', 'inherit'] });
  for (let i = 0; i < 600; i++) {
    const ready = await fetch(`http://127.0.0.1:${port}/readyz`).then((r) => r.status === 200, () => false);
    if (ready) return child;
    if (child.exitCode !== null) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  child.kill('SIGKILL');
  throw new Error(`the API on port ${port} did not become ready (see its stderr above)`);
}

async function stopApi(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = once(child, 'exit');
  child.kill('SIGTERM');
  await exited;
}

export async function benchRedisCluster(options: ClusterBenchOptions = {}): Promise<ClusterBenchResult> {
  const rows = options.rows ?? 200_000;
  const seconds = options.seconds ?? 4;
  const rounds = options.rounds ?? 7;
  const connections = options.connections ?? 32;
  const batchSize = options.batch ?? 100;
  const log = options.log ?? ((message: string) => process.stderr.write(`[bench:cluster] ${message}\n`));
  if (!(Number.isInteger(rounds) && rounds >= 1) || !(seconds >= 1)) {
    throw new Error(`the Redis Cluster benchmark needs at least 1 round of at least 1 s (got rounds=${rounds}, seconds=${seconds}): check BENCH_ROUNDS and BENCH_SECONDS`);
  }

  const split = cpuSplit();
  const load = (port: number, batch: number, pid?: number): ClusterLoadResult => {
    const cpuBefore = pid ? cpuSeconds(pid) : 0;
    const target = batch ? `http://127.0.0.1:${port}/features/v1/batch` : `http://127.0.0.1:${port}/features/v1/{id}?view=bench`;
    const args = [...tsx, path.join(root, 'bench/load.ts'), target, String(rows), String(seconds), String(connections), batch ? 'POST' : 'GET', String(batch)];
    const [command, ...argv] = split ? ['taskset', '-c', split.others, process.execPath, ...args] : [process.execPath, ...args];
    const result = JSON.parse(execFileSync(command!, argv, { encoding: 'utf8' }).trim().split('\n').at(-1)!) as ClusterLoadResult;
    if (result.errors || result.non2xx) log(`load on ${target}: ${result.errors} errors, ${result.non2xx} non-2xx`);
    if (pid) result.apiCpuUs = ((cpuSeconds(pid) - cpuBefore) * 1e6) / Math.max(1, result.rps * seconds);
    return result;
  };

  log(`starting Postgres, one Redis node, a 3×2 Redis Cluster and a cluster of one master; ${rows} rows, ${rounds} rounds of 6 slices of ${seconds} s`);
  const postgres = await startPostgres();
  const redis = await startRedis().catch(async (error) => {
    await postgres.destroy();
    throw error;
  });
  const cluster = await startRedisCluster().catch(async (error) => {
    await Promise.allSettled([redis.destroy(), postgres.destroy()]);
    throw error;
  });
  const one = await startRedis({ clusterOfOne: true }).catch(async (error) => {
    await Promise.allSettled([cluster.destroy(), redis.destroy(), postgres.destroy()]);
    throw error;
  });
  const apis: ChildProcess[] = [];
  try {
    const dir = await tempDir('bench-cluster');
    const parquet = path.join(dir, 'bench.parquet');
    await writeParquet(parquet, rows);
    const jobs = path.join(dir, 'jobs');
    await mkdir(jobs);
    await writeFile(path.join(jobs, 'bench.yaml'), JSON.stringify({ view: 'bench', source: parquet, entity_key: 'id', event_time: 'updated_at', features: FEATURES, schedule: '0 0 1 1 *', freshness: '3650d' }));

    // Same data, same code, three databases: only the hot tier differs.
    const base = { ...process.env, SYNC_JOBS_DIR: jobs, LOG_LEVEL: 'warn', AUTH_MODE: 'open' };
    const envs: Record<Setup, NodeJS.ProcessEnv> = {
      node: { ...base, DATABASE_URL: await postgres.createDatabase('bench_node'), REDIS_URL: redis.url },
      cluster: { ...base, DATABASE_URL: await postgres.createDatabase('bench_cluster'), REDIS_CLUSTER_NODES: cluster.nodes },
      one: { ...base, DATABASE_URL: await postgres.createDatabase('bench_one'), REDIS_CLUSTER_NODES: `127.0.0.1:${one.port}` },
    };
    for (const setup of SETUPS) {
      log(`syncing ${rows} rows into Postgres + ${DESCRIBED[setup]}`);
      execFileSync(process.execPath, ctlArgs('sync', 'bench'), { env: envs[setup], stdio: ['ignore', 'ignore', 'inherit'] });
    }
    const ports = {} as Record<Setup, number>;
    const pids = {} as Record<Setup, number>;
    for (const setup of SETUPS) {
      ports[setup] = await freePort();
      const api = await startApi(envs[setup], ports[setup]);
      apis.push(api);
      pids[setup] = api.pid!;
    }

    if (split) {
      for (const port of [redis.port, one.port, ...cluster.ports]) pin(redisPid(port), split.others);
      for (const setup of SETUPS) pin(pids[setup], split.api);
      log(`pinned: the API processes on CPU ${split.api}; the Redis servers and the load generator on CPU ${split.others}`);
    } else log('not pinned (taskset missing or refused, or one CPU): every process shares every CPU, and the ratios are noisier');
    // Warm-up, then the rounds of single lookups (bench/rounds.ts: A B C C B A, the first setup rotating).
    for (const setup of SETUPS) load(ports[setup], 0);
    const show = (r: ClusterLoadResult) => `${r.rps.toFixed(0)} req/s (${r.apiCpuUs!.toFixed(0)} µs CPU/req)`;
    const ratioOf = (round: Round<Setup, ClusterLoadResult>, setup: 'cluster' | 'one') => roundRate(round[setup]) / roundRate(round.node);
    const measured = mirroredRounds(SETUPS, rounds, (setup) => load(ports[setup], 0, pids[setup]), (round, order, i) =>
      log(
        `round ${i + 1} (${order.join(' ')}): ${SETUPS.map((setup) => `${setup} ${round[setup].map(show).join(', ')}`).join('; ')}: ` +
          `cluster ${ratioOf(round, 'cluster').toFixed(2)}×, one master ${ratioOf(round, 'one').toFixed(2)}×`,
      ),
    );
    const slices = Object.fromEntries(SETUPS.map((setup) => [setup, measured.flatMap((round) => round[setup])])) as Record<Setup, ClusterLoadResult[]>;
    // Batches, for reference: alternating pairs, half as many rounds (at least 2).
    const batch = { node: [] as ClusterLoadResult[], cluster: [] as ClusterLoadResult[] };
    for (let i = 0; i < Math.max(2, Math.ceil(rounds / 2)); i++) {
      for (const setup of i % 2 === 0 ? (['node', 'cluster'] as const) : (['cluster', 'node'] as const)) batch[setup].push(load(ports[setup], batchSize, pids[setup]));
      log(`batch round ${i + 1}: node ${show(batch.node.at(-1)!)}, cluster ${show(batch.cluster.at(-1)!)}: ${(batch.cluster.at(-1)!.rps / batch.node.at(-1)!.rps).toFixed(2)}×`);
    }
    // Slices are paired by index: the node's k-th slice of a round with the other setup's k-th.
    const compare = (node: ClusterLoadResult[], clustered: ClusterLoadResult[], ratios: number[]): Comparison => ({
      node: medianOf(node),
      cluster: medianOf(clustered),
      ratio: median(ratios),
      ratios,
      cpuRatio: median(node.map((n, i) => n.apiCpuUs! / clustered[i]!.apiCpuUs!)),
    });
    const ratios = (setup: 'cluster' | 'one') => measured.map((round) => ratioOf(round, setup));
    const singleResult = { ...compare(slices.node, slices.cluster, ratios('cluster')), control: control(measured, ['node', 'cluster']) };
    const oneResult = { ...compare(slices.node, slices.one, ratios('one')), control: control(measured, ['node', 'one']) };
    const batchResult = compare(batch.node, batch.cluster, batch.node.map((n, i) => batch.cluster[i]!.rps / n.rps));
    return { pinned: split, rows, rounds, seconds, connections, single: singleResult, batch: { size: batchSize, ...batchResult }, clusterOfOne: oneResult };
  } finally {
    await Promise.allSettled(apis.map(stopApi));
    await Promise.allSettled([cluster.destroy(), one.destroy(), redis.destroy(), postgres.destroy()]);
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  execFileSync('npm', ['run', '-s', 'build'], { cwd: root, stdio: 'inherit' });
  const result = await benchRedisCluster({
    rows: Number(process.env.BENCH_ROWS ?? 200_000),
    seconds: Number(process.env.BENCH_SECONDS ?? 4),
    rounds: Number(process.env.BENCH_ROUNDS ?? 7),
  });
  process.stdout.write(JSON.stringify(result, null, 2) + '\n');
}
