// Every core, measured: lookups per second of our server with WEB_CONCURRENCY=1
// and =2, against a bare Hono route (bench/bare.ts, constant JSON of the same
// body) in one process and in two cluster workers, in the same run. The target:
// the gain our server gets from the second process is at least 0.9× the gain
// the bare route gets from the same two-process set-up. A benchmark, not a test.
// The four set-ups take turns in mirrored rounds (bench/rounds.ts); each round
// gives both speed-ups and their ratio from slices measured side by side, and
// the figure is the median of the rounds' ratios, with the control beside it.
//
// As a library (bench/run.ts): `measureScale({ env, rows })` with `env` naming
// DATABASE_URL, REDIS_URL and SYNC_JOBS_DIR of a synced view `bench` whose ids
// are e0000001… (as bench/run.ts makes them). Standalone, it builds dist/,
// starts its own Postgres and Redis, syncs BENCH_ROWS (100000) entities and
// prints the result as JSON:
//   node --import tsx bench/scale.ts
// Internal: `bench/scale.ts bare-cluster <workers> <port> <body-file>` runs
// bench/bare.ts in that many cluster workers on one port.
import { execFileSync, fork, spawn, type ChildProcess } from 'node:child_process';
import cluster from 'node:cluster';
import { once } from 'node:events';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { ctlArgs } from './ctl.js';
import { control, mirroredRounds, roundRate, type Round } from './rounds.js';
import { median } from './stats.js';

const root = path.resolve(import.meta.dirname, '..');
const tsx = ['--import', 'tsx'];
const CONNECTIONS = 32;

const log = (message: string) => process.stderr.write(`[bench:scale] ${message}\n`);

export interface ScaleOptions {
  /** Environment of our server: DATABASE_URL, REDIS_URL, SYNC_JOBS_DIR (a synced view "bench"). */
  readonly env: NodeJS.ProcessEnv;
  /** Entities in the view (ids e0000001…); lookups pick among them at random. */
  readonly rows: number;
  readonly seconds?: number;
  readonly rounds?: number;
  /** Where to write the bare route's body (one of our responses); default: a file under the OS temp dir. */
  readonly workDir?: string;
}

export interface ScaleResult {
  /** Median requests per second of each set-up, over all its slices. */
  readonly ours: { readonly one: number; readonly two: number };
  readonly bare: { readonly one: number; readonly two: number };
  /** two / one, for each: medians of the rounds' speed-ups. */
  readonly oursSpeedup: number;
  readonly bareSpeedup: number;
  /** Extra requests per second from the second process, ours over bare's (the gain as an increase). */
  readonly gainRatio: number;
  /** Our speed-up over the bare route's (the gain as a factor), the median of `speedupRatios`; the target is ≥ 0.9. */
  readonly speedupRatio: number;
  /** Each round's own: our speed-up over the bare route's, from slices measured in one mirrored round. */
  readonly speedupRatios: number[];
  /** Each set-up's second slice of a round over its first, for every round: what the machine alone moves a rate by. */
  readonly control: number[];
  readonly met: boolean;
  readonly errors: number;
}

async function freePort(): Promise<number> {
  const net = await import('node:net');
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as import('node:net').AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

async function waitFor(url: string, child: ChildProcess): Promise<void> {
  for (let i = 0; i < 600; i++) {
    if (child.exitCode !== null) throw new Error(`the server for ${url} exited with code ${child.exitCode}`);
    try {
      if ((await fetch(url)).status < 500) return;
    } catch {
      // not up yet
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`nothing answered ${url} within 60 s`);
}

async function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = once(child, 'exit');
  child.kill('SIGTERM');
  await exited;
}

type LoadResult = { rps: number; errors: number; non2xx: number };

function load(url: string, rows: number, seconds: number): LoadResult {
  const output = execFileSync(process.execPath, [...tsx, path.join(root, 'bench/load.ts'), url, String(rows), String(seconds), String(CONNECTIONS)], { encoding: 'utf8' });
  return JSON.parse(output.trim().split('\n').at(-1)!) as LoadResult;
}

export async function measureScale(options: ScaleOptions): Promise<ScaleResult> {
  const seconds = options.seconds ?? Number(process.env.BENCH_SECONDS ?? 4);
  const rounds = options.rounds ?? Number(process.env.BENCH_ROUNDS ?? 7);
  const workDir = options.workDir ?? path.join((await import('node:os')).tmpdir(), `fs-bench-scale-${process.pid}`);
  await mkdir(workDir, { recursive: true });
  const children: ChildProcess[] = [];

  const ours = async (processes: number) => {
    const port = await freePort();
    const env = { ...options.env, PORT: String(port), HOST: '127.0.0.1', WEB_CONCURRENCY: String(processes), SCHEDULER_ENABLED: 'false', SYNC_ON_START: 'false', AUTH_MODE: 'open', LOG_LEVEL: 'warn' };
    const child = spawn(process.execPath, [path.join(root, 'dist/server.js')], { env, stdio: ['ignore', 'ignore', 'inherit'] });
    children.push(child);
    await waitFor(`http://127.0.0.1:${port}/healthz`, child);
    return { name: `ours, WEB_CONCURRENCY=${processes}`, url: `http://127.0.0.1:${port}/features/v1/{id}?view=bench`, port };
  };
  const bare = async (processes: number, bodyFile: string) => {
    const port = await freePort();
    const child =
      processes === 1
        ? fork(path.join(root, 'bench/bare.ts'), ['const', String(port), bodyFile], { execArgv: tsx, stdio: 'inherit' })
        : fork(path.join(root, 'bench/scale.ts'), ['bare-cluster', String(processes), String(port), bodyFile], { execArgv: tsx, stdio: 'inherit' });
    children.push(child);
    await once(child, 'message');
    return { name: `bare Hono, ${processes} process${processes > 1 ? 'es (cluster)' : ''}`, url: `http://127.0.0.1:${port}/features/v1/{id}`, port };
  };

  try {
    const oursOne = await ours(1);
    const bodyFile = path.join(workDir, 'scale-body.json');
    await writeFile(bodyFile, await (await fetch(`http://127.0.0.1:${oursOne.port}/features/v1/e0000042?view=bench`)).text());
    const setups = { oursOne, oursTwo: await ours(2), bareOne: await bare(1, bodyFile), bareTwo: await bare(2, bodyFile) };
    const names = Object.keys(setups) as (keyof typeof setups)[];
    // All four stay up (idle servers cost next to nothing) and take turns in mirrored rounds (bench/rounds.ts), so
    // drift in the machine's load falls on each alike; each round gives its own speed-ups and their ratio.
    for (const name of names) load(setups[name].url, options.rows, 1); // warm-up
    const speedups = (round: Round<keyof typeof setups, LoadResult>) => ({
      ours: roundRate(round.oursTwo) / roundRate(round.oursOne),
      bare: roundRate(round.bareTwo) / roundRate(round.bareOne),
    });
    const measured = mirroredRounds(names, rounds, (name) => load(setups[name].url, options.rows, seconds), (round, order, i) => {
      const { ours, bare } = speedups(round);
      const slices = names.map((name) => `${setups[name].name} ${round[name].map((r) => r.rps.toFixed(0)).join(', ')}`);
      log(`round ${i + 1} (${order.join(' ')}): ${slices.join('; ')} req/s: speed-up ours ${ours.toFixed(2)}×, bare ${bare.toFixed(2)}×, ratio ${(ours / bare).toFixed(2)}`);
    });
    const errors = measured.reduce((sum, round) => sum + names.reduce((n, name) => n + round[name].reduce((m, r) => m + r.errors + r.non2xx, 0), 0), 0);
    const rps = (name: keyof typeof setups) => median(measured.flatMap((round) => round[name].map((r) => r.rps)));
    const perRound = measured.map(speedups);
    const speedupRatios = perRound.map((s) => s.ours / s.bare);
    const speedupRatio = median(speedupRatios);
    const [oursOneRps, oursTwoRps, bareOneRps, bareTwoRps] = names.map(rps) as [number, number, number, number];
    return {
      ours: { one: oursOneRps, two: oursTwoRps },
      bare: { one: bareOneRps, two: bareTwoRps },
      oursSpeedup: median(perRound.map((s) => s.ours)),
      bareSpeedup: median(perRound.map((s) => s.bare)),
      gainRatio: (oursTwoRps - oursOneRps) / (bareTwoRps - bareOneRps),
      speedupRatio,
      speedupRatios,
      control: control(measured, names),
      met: speedupRatio >= 0.9 && errors === 0,
      errors,
    };
  } finally {
    await Promise.all(children.map(stop));
  }
}

/** bench/bare.ts in `workers` cluster workers on one port; tells the parent when all listen. */
function bareCluster(workers: number, port: string, bodyFile: string): void {
  cluster.setupPrimary({ exec: path.join(root, 'bench/bare.ts'), args: ['const', port, bodyFile], execArgv: tsx });
  let ready = 0;
  for (let i = 0; i < workers; i++) {
    cluster.fork().on('message', (message) => {
      if (message === 'ready' && ++ready === workers) process.send?.('ready');
    });
  }
  process.once('SIGTERM', () => {
    for (const worker of Object.values(cluster.workers ?? {})) worker?.process.kill('SIGTERM');
    process.exit(0);
  });
}

async function standalone(): Promise<void> {
  const rows = Number(process.env.BENCH_ROWS ?? 100_000);
  const { startPostgres, startRedis } = await import('../test/support/servers.js');
  const { tempDir, writeParquet } = await import('../test/support/fixtures.js');
  log(`building (tsc) and starting Postgres and Redis; ${rows} entities`);
  execFileSync('npm', ['run', '-s', 'build'], { cwd: root, stdio: 'inherit' });
  const postgres = await startPostgres();
  const redis = await startRedis();
  try {
    const dir = await tempDir('bench-scale');
    const parquet = await writeParquet(
      path.join(dir, 'bench.parquet'),
      `SELECT 'e' || lpad(i::VARCHAR, 7, '0') AS id, TIMESTAMP '2026-01-01' + INTERVAL (i % 86400) SECOND AS updated_at,
              i % 1000 AS i1, (hash(i) % 1000000) / 1000.0 AS d1, 'cat_' || (i % 50) AS s1, i % 2 = 0 AS b1
         FROM range(1, ${rows + 1}) t(i)`,
    );
    const jobs = path.join(dir, 'jobs');
    await mkdir(jobs);
    const features = { i1: { type: 'integer' }, d1: { type: 'double' }, s1: { type: 'string' }, b1: { type: 'boolean' } };
    await writeFile(path.join(jobs, 'bench.yaml'), JSON.stringify({ view: 'bench', source: parquet, entity_key: 'id', event_time: 'updated_at', features, schedule: '0 0 1 1 *', freshness: '3650d' }));
    execFileSync('chmod', ['-R', 'a+rX', dir]);
    const env = { ...process.env, DATABASE_URL: postgres.url, REDIS_URL: redis.url, SYNC_JOBS_DIR: jobs, LOG_LEVEL: 'warn' };
    execFileSync(process.execPath, ctlArgs('sync', 'bench'), { env, stdio: ['ignore', 'ignore', 'inherit'] });
    const result = await measureScale({ env, rows, workDir: dir });
    process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
  } finally {
    await redis.destroy();
    await postgres.destroy();
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  if (process.argv[2] === 'bare-cluster') bareCluster(Number(process.argv[3]), process.argv[4]!, process.argv[5]!);
  else await standalone();
}
