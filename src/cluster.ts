// Owns running on every core (WEB_CONCURRENCY > 1, servers only): the primary
// process forks that many workers that each run the HTTP server on the one
// shared port (Node's cluster hands connections round-robin), with their
// schedulers off. The primary serves nothing: it keeps the one scheduler and
// sync runner of the machine (each run still in its own child process), so
// syncs happen in one place, off the serving processes, and it tells the
// workers at once when a run published a version. It also answers for the
// whole machine what a worker alone would answer for itself: /metrics (every
// process's registry, its own sync metrics included, aggregated with
// prom-client), and /slo/v1 and the dashboard (every worker's SLO counts and
// lookup latency buckets, summed). A worker asks it, it asks every worker.
// What a dead worker had counted stays in those sums: its metrics as of the
// last scrape, its SLO minutes as of its last hand-off (every second).
import cluster, { type Worker } from 'node:cluster';
import client, { AggregatorRegistry, type MetricObjectWithValues, type MetricValue } from 'prom-client';
import type { Hono } from 'hono';
import { ConfigError, type Config } from './config/index.js';
import { loadJobDefinitions } from './jobs/definition.js';
import type { Logger } from './observability/log.js';
import { lookupLatencyBuckets, Metrics, sumBuckets, type LatencyBuckets } from './observability/metrics.js';
import { combineSlo, SloTracker, type MinuteCounts, type SloSnapshot } from './observability/slo.js';
import type { Catalog } from './stores/catalog.js';
import { ensureSchema } from './stores/metadata.js';
import { PostgresDatabase } from './stores/postgres.js';
import { createHotTier } from './stores/create-hot-tier.js';
import { SyncRunner } from './sync/runner.js';
import { Scheduler } from './sync/scheduler.js';

/** A worker that has not reported by then fails the scrape (or /slo/v1), loudly, rather than leave a hole in the sums. */
const GATHER_TIMEOUT_MS = 5_000;
/** How often a worker hands its SLO minutes to the primary, which keeps them when the worker dies: about this much of a dead worker's counts is lost. */
const SLO_HANDOFF_MS = 1_000;
/** A worker that dies after it was serving is replaced after this pause (so a crash loop does not spin). */
const RESPAWN_DELAY_MS = 1_000;

type Fetch = Hono['fetch'];
type Json = MetricObjectWithValues<MetricValue<string>>[];

/** What a worker can ask for the whole machine: its metrics text, its SLO counts, its lookup latency buckets. */
type What = 'metrics' | 'slo' | 'latency';
type ToPrimary = { t: 'fs:ready' } | { t: 'fs:slo'; minutes: MinuteCounts[] } | { t: 'fs:machine?'; id: number; what: What } | { t: 'fs:gathered'; id: number; data: unknown } | { t: 'fs:gather-failed'; id: number; error: string };
type ToWorker = { t: 'fs:gather'; id: number; what: What } | { t: 'fs:machine'; id: number; data?: unknown; error?: string } | { t: 'fs:published'; view: string };

const isMessage = (message: unknown): message is { t: string } => typeof message === 'object' && message !== null && typeof (message as { t?: unknown }).t === 'string' && (message as { t: string }).t.startsWith('fs:');

/** A worker failed before it served: the cluster stops with the worker's exit code (2 for a configuration error). */
export class WorkerStartError extends Error {
  override name = 'WorkerStartError';
  constructor(
    message: string,
    readonly exitCode: number,
  ) {
    super(message);
  }
}

/** The worker's configuration: it serves; the primary schedules and syncs. */
export function servingOnly(config: Config): Config {
  return Object.freeze({ ...config, schedulerEnabled: false, syncOnStart: false });
}

export interface ClusterPrimary {
  /** Resolves when every worker listens; rejects (a WorkerStartError) when one could not, after stopping the rest. */
  readonly ready: Promise<void>;
  close(): Promise<void>;
}

export async function startPrimary(config: Config, log: Logger): Promise<ClusterPrimary> {
  const jobs = await loadJobDefinitions(config.syncJobsDir);
  const db = new PostgresDatabase({ url: config.databaseUrl!, maxConnections: 4, applicationName: 'feature-serving-api:primary' });
  // The runner hands stores to sync children only in the embedded mode (never clustered); it needs one to be built.
  const hot = createHotTier(config, config.redisTimeoutMs);
  const closeStores = () => Promise.allSettled([db.close(), hot.close()]);
  try {
    // Once, before any worker, so workers start against a prepared schema.
    await ensureSchema(db);
  } catch (error) {
    await closeStores();
    throw new ConfigError(`cannot prepare the Postgres schema (is DATABASE_URL right and the server up?): ${(error as Error).message}`);
  }
  const metrics = new Metrics(undefined, config.slo.latencyThresholdMs / 1000);
  /** Live workers; `slot` (0 to N-1) names a worker's place, which its replacement takes over (the `process` label). */
  const workers = new Map<Worker, { ready: boolean; slot: number }>();
  // To booting workers too: one that re-read the catalog before the publish hears of it here.
  const broadcast = (message: ToWorker) => {
    for (const worker of workers.keys()) if (worker.isConnected()) worker.send(message);
  };
  // Workers re-read the catalog every CATALOG_REFRESH_MS anyway; this makes a new version visible at once.
  const runner = new SyncRunner({ config, jobs, db, hot, log, metrics, onPublished: (summary) => broadcast({ t: 'fs:published', view: summary.job }) });
  const scheduler = new Scheduler(jobs, runner, log);

  let stopping = false;
  let started = false;
  let seq = 0;
  /** Each worker's metrics as last gathered, and what dead workers had counted (see `retire`). */
  const lastMetrics = new Map<Worker, Json>();
  let retired: Json = [];
  /** Each live worker's SLO minutes as last handed over, and what dead workers had counted. */
  const sloMirrors = new Map<Worker, SloTracker>();
  const retiredSlo = new SloTracker(config.slo);
  /**
   * A dead worker's counters and histograms stay in the machine's sums, as of the last scrape that gathered them:
   * dropped, the sums would fall, Prometheus would read a counter reset, and the surviving workers' whole counts
   * would land in one rate step (hiding a real error burst from the burn-rate pages). Gauges describe live
   * processes and go; so does the per-process request counter, whose `process` series ends with its process.
   */
  const retire = async (worker: Worker) => {
    // Its SLO minutes too, so a worker that crashes does not take its failures out of /slo/v1 and the dashboard.
    const mirror = sloMirrors.get(worker);
    sloMirrors.delete(worker);
    if (mirror) retiredSlo.absorb(mirror.minutesFrom(-Infinity), 'add');
    const last = lastMetrics.get(worker);
    lastMetrics.delete(worker);
    if (!last) return;
    // prom-client declares `type` a numeric enum; its JSON carries the names.
    const kept = last.filter((metric) => ['counter', 'histogram'].includes(String(metric.type)) && metric.name !== 'featurestore_process_requests_total');
    retired = (await AggregatorRegistry.aggregate([retired, kept]).getMetricsAsJSON()) as Json;
  };
  const pending = new Map<string, { resolve: (data: unknown) => void; reject: (error: Error) => void }>();

  /** Every ready worker's answer to `what`, combined: the machine's metrics text, SLO counts or latency buckets. */
  const gather = async (what: What): Promise<unknown> => {
    const id = ++seq;
    const live = [...workers].filter(([worker, state]) => state.ready && worker.isConnected()).map(([worker]) => worker);
    const fromWorkers = await Promise.all(
      live.map(
        (worker) =>
          new Promise<unknown>((resolve, reject) => {
            const key = `${worker.id}:${id}`;
            const timer = setTimeout(() => {
              pending.delete(key);
              reject(new Error(`worker ${worker.id} (pid ${worker.process.pid}) did not report its ${what} within ${GATHER_TIMEOUT_MS} ms`));
            }, GATHER_TIMEOUT_MS);
            pending.set(key, {
              resolve: (data) => (clearTimeout(timer), resolve(data)),
              reject: (error) => (clearTimeout(timer), reject(error)),
            });
            worker.send({ t: 'fs:gather', id, what } satisfies ToWorker);
          }),
      ),
    );
    if (what === 'latency') return sumBuckets(fromWorkers as LatencyBuckets[]);
    // A worker that answered and then died while the others were asked is retired now, as of the scrape (or hand-off)
    // before: its answer here would count it twice this time and the sums would fall at the next one.
    const answered = live.map((worker, i) => [worker, fromWorkers[i] as Json] as const).filter(([worker]) => workers.has(worker));
    // The primary serves no lookups: only its metrics (syncs) count.
    if (what === 'slo') return combineSlo([...answered.map(([, data]) => data as unknown as SloSnapshot), retiredSlo.snapshot()]);
    for (const [worker, data] of answered) lastMetrics.set(worker, data);
    return AggregatorRegistry.aggregate([(await metrics.registry.getMetricsAsJSON()) as Json, ...answered.map(([, data]) => data), retired]).metrics();
  };

  let startFailed: (error: WorkerStartError) => void = () => undefined;
  const failedAtStart = new Promise<never>((_, reject) => (startFailed = reject));
  let readyCount = 0;
  let allReady: () => void = () => undefined;
  const ready = new Promise<void>((resolve) => (allReady = resolve));

  const onMessage = (worker: Worker, message: unknown) => {
    if (!isMessage(message)) return;
    const m = message as ToPrimary;
    if (m.t === 'fs:ready') {
      const state = workers.get(worker);
      if (state && !state.ready) {
        state.ready = true;
        if (++readyCount === config.webConcurrency) allReady();
      }
    } else if (m.t === 'fs:slo') {
      if (!workers.has(worker)) return;
      let mirror = sloMirrors.get(worker);
      if (!mirror) sloMirrors.set(worker, (mirror = new SloTracker(config.slo)));
      mirror.absorb(m.minutes, 'replace');
    } else if (m.t === 'fs:gathered' || m.t === 'fs:gather-failed') {
      const waiter = pending.get(`${worker.id}:${m.id}`);
      pending.delete(`${worker.id}:${m.id}`);
      if (m.t === 'fs:gathered') waiter?.resolve(m.data);
      else waiter?.reject(new Error(`worker ${worker.id} (pid ${worker.process.pid}) could not report: ${m.error}`));
    } else if (m.t === 'fs:machine?') {
      void gather(m.what).then(
        (data) => worker.isConnected() && worker.send({ t: 'fs:machine', id: m.id, data } satisfies ToWorker),
        (error: Error) => worker.isConnected() && worker.send({ t: 'fs:machine', id: m.id, error: error.message } satisfies ToWorker),
      );
    }
  };
  const fork = (slot: number) => {
    const worker = cluster.fork({ FS_WORKER_SLOT: String(slot) });
    workers.set(worker, { ready: false, slot });
  };
  const onExit = (worker: Worker, code: number | null, signal: string | null) => {
    const state = workers.get(worker);
    workers.delete(worker);
    // Loud but not fatal: the primary keeps serving the sums without this worker's past counts.
    retire(worker).catch((error: Error) => log.error('cluster.metrics_retire_failed', { worker: worker.id, error, message: "this worker's counters leave the /metrics sums, which Prometheus reads as a reset" }));
    for (const [key, waiter] of pending) if (key.startsWith(`${worker.id}:`) && pending.delete(key)) waiter.reject(new Error(`worker ${worker.id} (pid ${worker.process.pid}) exited while its figures were gathered`));
    if (stopping) return;
    if (!state?.ready && !started) {
      startFailed(new WorkerStartError(`a serving worker exited (${signal ?? `code ${code}`}) before it listened; see its error above`, code || 1));
      return;
    }
    log.error('cluster.worker_died', { worker: worker.id, pid: worker.process.pid, code, signal, message: `replacing it in ${RESPAWN_DELAY_MS} ms` });
    if (state) setTimeout(() => stopping || fork(state.slot), RESPAWN_DELAY_MS).unref();
  };
  cluster.on('message', onMessage);
  cluster.on('exit', onExit);

  const stopWorkers = async () => {
    const exits = [...workers.keys()].map((worker) => new Promise<void>((resolve) => (worker.isDead() ? resolve() : worker.once('exit', () => resolve()))));
    for (const worker of workers.keys()) worker.process.kill('SIGTERM');
    await Promise.all(exits);
  };

  for (let i = 0; i < config.webConcurrency; i++) fork(i);
  // Syncs need no worker: they start while the workers boot.
  if (config.schedulerEnabled) scheduler.start();
  if (config.syncOnStart) {
    void (async () => {
      for (const job of jobs) {
        if (stopping) return;
        await runner.run(job.view, 'startup').catch((error: Error) => log.error('sync.startup_failed', { job: job.view, error }));
      }
    })();
  }
  const readiness = (async () => {
    try {
      await Promise.race([ready, failedAtStart]);
    } catch (error) {
      stopping = true;
      scheduler.stop();
      await stopWorkers();
      await runner.abandonAll('the server failed to start');
      await closeStores();
      throw error;
    }
    started = true;
    log.info('cluster.listening', { port: config.port, host: config.host, workers: [...workers.keys()].map((w) => w.process.pid), views: jobs.map((j) => j.view) });
  })();

  let closing: Promise<void> | undefined;
  return {
    ready: readiness,
    close: () =>
      (closing ??= (async () => {
        stopping = true;
        // A tick already under way or a trigger starts no run now; runs in progress may finish.
        runner.stopStarting('the server is shutting down');
        scheduler.stop();
        // Workers finish their requests in progress and exit; meanwhile a running sync gets its grace.
        const workersDone = stopWorkers();
        await Promise.race([runner.idle(), new Promise((r) => setTimeout(r, config.shutdownGraceMs).unref())]);
        await runner.abandonAll('the server shut down before the run finished');
        await workersDone;
        cluster.off('message', onMessage);
        cluster.off('exit', onExit);
        await closeStores();
      })()),
  };
}

export interface ClusterWorkerHooks {
  /** Wires a worker's server into the cluster; returns the fetch handler to serve. */
  attach(parts: { metrics: Metrics; slo: SloTracker; catalog: Catalog }, fetch: Fetch): Fetch;
}

/** In a cluster worker: /metrics, /slo/v1 and the dashboard show every process, and a version the primary published is served at once. */
export function clusterWorker(log: Logger): ClusterWorkerHooks {
  return {
    attach({ metrics, slo, catalog }, fetch) {
      // By slot, which a replacement takes over: the label's values stay N however often workers are replaced.
      const name = `worker-${process.env.FS_WORKER_SLOT ?? cluster.worker?.id ?? 0}`;
      // Kept per process (a label per worker), so the spread of load over the workers shows.
      const requests = new client.Counter({
        name: 'featurestore_process_requests_total',
        help: 'HTTP requests answered, per serving process of the machine.',
        labelNames: ['process'] as const,
        registers: [metrics.registry],
      });
      requests.inc({ process: name }, 0);
      const own: Record<What, () => Promise<unknown>> = {
        metrics: () => metrics.registry.getMetricsAsJSON(),
        slo: async () => slo.snapshot(),
        latency: () => lookupLatencyBuckets(metrics),
      };
      let seq = 0;
      const waiting = new Map<number, { resolve: (data: unknown) => void; reject: (error: Error) => void }>();
      process.on('message', (message: unknown) => {
        if (!isMessage(message)) return;
        const m = message as ToWorker;
        if (m.t === 'fs:gather') {
          const read = own[m.what] ?? (async () => Promise.reject(new Error(`unknown figures "${String(m.what)}"`)));
          read().then(
            (data) => toPrimary({ t: 'fs:gathered', id: m.id, data }),
            (error: Error) => toPrimary({ t: 'fs:gather-failed', id: m.id, error: error.message }),
          );
        } else if (m.t === 'fs:machine') {
          const waiter = waiting.get(m.id);
          waiting.delete(m.id);
          if (m.error === undefined) waiter?.resolve(m.data);
          else waiter?.reject(new Error(`the cluster's figures could not be gathered: ${m.error}`));
        } else if (m.t === 'fs:published') {
          catalog.refresh().catch((error: Error) => log.warn('catalog.refresh_failed', { view: m.view, error }));
        }
      });
      // A publish announced before this listener existed is caught by reading the catalog again now.
      catalog.refresh().catch((error: Error) => log.warn('catalog.refresh_failed', { error }));
      const machine = <T>(what: What) =>
        new Promise<T>((resolve, reject) => {
          const id = ++seq;
          const timer = setTimeout(() => {
            waiting.delete(id);
            reject(new Error(`the primary process did not answer for the cluster's ${what} within ${2 * GATHER_TIMEOUT_MS} ms`));
          }, 2 * GATHER_TIMEOUT_MS);
          waiting.set(id, { resolve: (data) => (clearTimeout(timer), resolve(data as T)), reject: (error) => (clearTimeout(timer), reject(error)) });
          toPrimary({ t: 'fs:machine?', id, what });
        });
      // What this worker counted, so the primary keeps it if the worker dies.
      setInterval(() => {
        const minutes = slo.handOff();
        if (minutes.length) toPrimary({ t: 'fs:slo', minutes });
      }, SLO_HANDOFF_MS).unref();
      metrics.exposition = () => machine<string>('metrics');
      metrics.gatherLookupLatency = () => machine<LatencyBuckets>('latency');
      slo.gather = () => machine<SloSnapshot>('slo');
      return (request, env, ctx) => {
        requests.inc({ process: name });
        return fetch(request, env, ctx);
      };
    },
  };
}

/** Sends to the primary unless it is gone (then the worker is stopping: see 'disconnect' in server.ts). */
function toPrimary(message: ToPrimary): void {
  if (process.connected) process.send?.(message);
}

/** Tells the primary this worker is serving. */
export function announceReady(): void {
  toPrimary({ t: 'fs:ready' });
}
