// Wiring only: config → stores → catalog → runner and scheduler → app → listen.
// With WEB_CONCURRENCY > 1 (servers), main() runs a cluster (src/cluster.ts).
import cluster from 'node:cluster';
import { readFile } from 'node:fs/promises';
import { maxHeaderSize, type Server as HttpServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import { pathToFileURL } from 'node:url';
import { serve, type ServerType } from '@hono/node-server';
import type { Hono } from 'hono';
import { createApp } from './api/app.js';
import { clientErrorResponse } from './api/problem.js';
import { announceReady, clusterWorker, servingOnly, startPrimary, WorkerStartError, type ClusterWorkerHooks } from './cluster.js';
import { ConfigError, loadConfig, type Config } from './config/index.js';
import { JobDefinitionError, loadJobDefinitions } from './jobs/definition.js';
import { createLogger, type Logger } from './observability/log.js';
import { Metrics } from './observability/metrics.js';
import { SloTracker } from './observability/slo.js';
import { setupTracing } from './observability/tracing.js';
import type { SpanExporter } from '@opentelemetry/sdk-trace-base';
import { ApiKeys } from './stores/api-keys.js';
import { Catalog } from './stores/catalog.js';
import type { Database } from './stores/database.js';
import type { HotTier } from './stores/hot-tier.js';
import { MemoryHotTier } from './stores/memory.js';
import { ensureSchema, VERSIONS_CHANNEL } from './stores/metadata.js';
import { PgliteDatabase } from './stores/pglite.js';
import { NotificationListener, PostgresDatabase, ReplicaSet } from './stores/postgres.js';
import { FeatureReader, type FeatureSource } from './stores/reader.js';
import { ProcessCache } from './stores/process-cache.js';
import { RateLimiter } from './stores/rate-limit.js';
import { createHotTier, redisClientOf } from './stores/create-hot-tier.js';
import { SyncRunner } from './sync/runner.js';
import { Scheduler } from './sync/scheduler.js';

export interface RunningServer {
  readonly port: number;
  readonly app: Hono;
  readonly catalog: Catalog;
  readonly runner: SyncRunner;
  readonly db: Database;
  readonly hot: HotTier;
  /** Resolves when the start-up syncs (if any) have finished. */
  readonly startupSyncs: Promise<void>;
  close(): Promise<void>;
}


export interface ServerOverrides {
  /** Export spans here (tests), whatever the configuration says. */
  readonly spanExporter?: SpanExporter;
  /** Set in a cluster worker: /metrics, /slo/v1 and the dashboard gather every process, the primary's publishes refresh the catalog. */
  readonly cluster?: ClusterWorkerHooks;
}

export async function startServer(config: Config, log: Logger = createLogger(config.logLevel), overrides: ServerOverrides = {}): Promise<RunningServer> {
  const jobs = await loadJobDefinitions(config.syncJobsDir);
  const db: Database = config.embedded
    ? await PgliteDatabase.open(config.pgliteDataDir)
    : new PostgresDatabase({ url: config.databaseUrl!, maxConnections: config.databasePoolSize, statementTimeoutMs: config.requestTimeoutMs, clientTimeoutMs: config.requestTimeoutMs });
  const hot: HotTier = config.embedded ? new MemoryHotTier(config.redisFillTtlSeconds) : createHotTier(config, config.redisTimeoutMs);
  try {
    await ensureSchema(db);
  } catch (error) {
    await Promise.allSettled([db.close(), hot.close()]);
    throw new ConfigError(`cannot prepare the Postgres schema (is DATABASE_URL right and the server up?): ${(error as Error).message}`);
  }

  let apiKeys: ApiKeys | undefined;
  if (config.authMode === 'keys') {
    apiKeys = new ApiKeys(db);
    await apiKeys.refresh();
    if (apiKeys.size === 0) {
      await Promise.allSettled([db.close(), hot.close()]);
      throw new ConfigError(
        'no API keys exist, so no one could read a feature: create one with `npm run ctl -- keys create <name> --views <view,...|*>`, or set AUTH_MODE=open to serve without keys',
      );
    }
  } else {
    log.warn('server.auth_open', { message: 'AUTH_MODE=open: feature and sync routes answer without an API key' });
  }

  const catalog = new Catalog(db, jobs, (view, served, found, versions) =>
    log.warn('catalog.behind', {
      view,
      served_generation: served,
      found_generation: found,
      served_version: versions.served,
      found_version: versions.found,
      message: 'Postgres shows an older switch of this view than this process serves, or another version at its switch (was the database restored?); it keeps serving what it served: restart the API processes to follow the database',
    }),
  );
  await catalog.refresh();
  catalog.start(config.catalogRefreshMs);
  // Every process learns of a switch by any other (publish, rollback) from the primary's NOTIFY at its commit;
  // polling stays as the fallback while the listening connection is down. Embedded mode is one process.
  const listener = config.embedded
    ? undefined
    : new NotificationListener({
        url: config.databaseUrl!,
        channel: VERSIONS_CHANNEL,
        onNotification: () => void catalog.refresh().catch(() => undefined),
        onListening: () => void catalog.refresh().catch(() => undefined),
        onLost: (error) => log.warn('catalog.listen_lost', { error, message: `new versions are learned by polling every ${config.catalogRefreshMs} ms until it reconnects` }),
      });
  listener?.start();
  // New and revoked keys take effect within the same interval as new versions. While the keys cannot be read, the
  // last list read stays in force (so a Postgres outage does not refuse every caller): said once per outage, loudly.
  let keysFailingSince: number | undefined;
  const refreshKeys = () =>
    apiKeys!.refresh().then(
      () => {
        if (keysFailingSince !== undefined) log.info('api_keys.refresh_recovered', { failing_ms: Date.now() - keysFailingSince });
        keysFailingSince = undefined;
      },
      (error: Error) => {
        if (keysFailingSince === undefined) log.error('api_keys.refresh_failed', { error, message: 'the last list of API keys read stays in force: keys revoked or created since take effect once Postgres answers again' });
        keysFailingSince ??= Date.now();
      },
    );
  const keyRefresh = apiKeys ? setInterval(() => void refreshKeys(), config.catalogRefreshMs).unref() : undefined;
  const slo = new SloTracker(config.slo);
  const tracing = setupTracing({ otlpEndpoint: config.otlpEndpoint, exporter: overrides.spanExporter, serviceName: config.serviceName });
  // A view with no version yet has no data to be fresh: its age counts from when this process began serving without
  // it, so FeatureViewStale fires once that outlasts its objective (a first sync that never succeeds), not never.
  const servingSince = Date.now();
  const metrics = new Metrics({
    views: () =>
      catalog.list().map((v) =>
        v.current
          ? { view: v.job.view, version: v.current.version, rows: v.current.rowCount, ageSeconds: (Date.now() - (v.current.asOfMs ?? v.current.publishedAt.getTime())) / 1000, objectiveSeconds: v.job.freshnessSeconds }
          : { view: v.job.view, version: 0, rows: 0, ageSeconds: (Date.now() - servingSince) / 1000, objectiveSeconds: v.job.freshnessSeconds },
      ),
  }, config.slo.latencyThresholdMs / 1000);
  // A replica gets a third of the lookup budget, so a frozen one leaves time for the primary.
  const replicas = config.databaseReplicaUrls.length
    ? new ReplicaSet({
        urls: config.databaseReplicaUrls,
        primary: db,
        pollMs: config.replicaPollMs,
        clientTimeoutMs: Math.max(50, Math.floor(config.requestTimeoutMs / 3)),
        statementTimeoutMs: config.requestTimeoutMs,
        maxConnections: config.databasePoolSize,
        onRead: (replica) => metrics.replicaReads.inc({ replica }),
        onSkip: (replica, reason) => metrics.replicaSkips.inc({ replica, reason }),
      })
    : undefined;
  await replicas?.start();
  const tieredReader = new FeatureReader(db, hot, { replicas, fillTtlSeconds: config.redisFillTtlSeconds, hotRetryAfterMs: config.redisRetryAfterMs, tracer: tracing.tracer, onHotError: () => metrics.hotTierErrors.inc(), onPostgresError: () => metrics.postgresErrors.inc() });
  const reader: FeatureSource = config.processCacheEntries > 0 ? new ProcessCache(tieredReader, config.processCacheEntries) : tieredReader;
  const runner = new SyncRunner({ config, jobs, db, hot, log, metrics, onPublished: () => catalog.refresh().catch(() => undefined) });
  const scheduler = new Scheduler(jobs, runner, log);
  const openapiYaml = await readFile(new URL('../openapi.yaml', import.meta.url), 'utf8');
  // Buckets live in Redis when there is one, so all processes share them.
  const onRateLimitRedisError = (error: Error) =>
    log.warn('rate_limit.redis_failed', { error, message: `per-key rate limits are kept in each process for ${config.redisRetryAfterMs} ms (REDIS_RETRY_AFTER_MS), then Redis is tried again` });
  const rateLimiter = apiKeys ? new RateLimiter(redisClientOf(hot), config.redisRetryAfterMs, onRateLimitRedisError) : undefined;
  const app = createApp({ catalog, reader, replicas, db, hot, metrics, slo, tracing, log, apiKeys, rateLimiter, defaultRateLimit: config.rateLimit, requestLogLevel: config.requestLogLevel, requestTimeoutMs: config.requestTimeoutMs, maxInFlight: config.maxInFlight, batchMaxIds: config.batchMaxIds, openapiYaml });

  // Plain HTTP/1.1 (no createServer option), so the server is Node's http.Server.
  const server = (await new Promise<ServerType>((resolve, reject) => {
    const fetch = overrides.cluster ? overrides.cluster.attach({ metrics, slo, catalog }, app.fetch) : app.fetch;
    // A request must arrive whole within 30 s (Node's default is 5 minutes; checked every 5 s, not 30): a client that
    // stalls its headers or body gets a 408 and its connection closed, rather than holding it for minutes.
    const s = serve(
      { fetch, port: config.port, hostname: config.host, serverOptions: { headersTimeout: 20_000, requestTimeout: 30_000, connectionsCheckingInterval: 5_000 } },
      () => resolve(s),
    );
    // What Node's parser refuses (oversized headers, malformed requests) is answered as a problem too, not
    // with Node's bare status line. As Node does itself, nothing is written to a socket that is gone or
    // already carries a response.
    s.on('clientError', (error: NodeJS.ErrnoException, socket: Duplex) => {
      const inFlight = (socket as { _httpMessage?: { headersSent?: boolean } })._httpMessage;
      if (error.code === 'ECONNRESET' || !socket.writable || inFlight?.headersSent) {
        socket.destroy();
        return;
      }
      socket.end(clientErrorResponse(error, maxHeaderSize));
      // A client that stalled past the request timeout may never close its end: as Node does itself, close ours.
      if (error.code === 'ERR_HTTP_REQUEST_TIMEOUT') socket.destroy();
    });
    s.once('error', (error: NodeJS.ErrnoException) => {
      catalog.stop();
      void Promise.allSettled([db.close(), hot.close(), listener?.close(), replicas?.close()]);
      reject(new ConfigError(`cannot listen on ${config.host}:${config.port} (PORT, HOST): ${error.code ?? error.message}`));
    });
  })) as HttpServer;
  // Once shutdown begins, every answer says `Connection: close`, so a kept-alive client (a poller, a load balancer's
  // pool) gets the answer it asked for and then reconnects elsewhere, and connections are closed as soon as they are
  // idle (one whose answer was already on its way, one between requests): Node's server.close() alone waits for a
  // kept-alive connection as long as it keeps sending requests, and then for its keep-alive timeout. Nothing is added
  // to a request's path before then (a listener per request cost lookups 16%).
  let idleSweep: NodeJS.Timeout | undefined;
  const drain = () => {
    server.prependListener('request', (_request, response) => response.setHeader('Connection', 'close'));
    idleSweep = setInterval(() => server.closeIdleConnections(), 50).unref();
  };
  const port = (server.address() as AddressInfo).port;
  log.info('server.listening', { port, host: config.host, mode: config.embedded ? 'embedded' : 'servers', views: jobs.map((j) => j.view) });

  if (config.schedulerEnabled) scheduler.start();
  const startupSyncs = config.syncOnStart
    ? (async () => {
        for (const job of jobs) await runner.run(job.view, 'startup').catch((error: Error) => log.error('sync.startup_failed', { job: job.view, error }));
      })()
    : Promise.resolve();

  let closing: Promise<void> | undefined;
  const close = () =>
    (closing ??= (async () => {
      // Start-up syncs still queued, a late tick or a manual trigger start no run now; runs in progress may finish.
      runner.stopStarting('the server is shutting down');
      scheduler.stop();
      catalog.stop();
      clearInterval(keyRefresh);
      drain();
      // Requests in progress and runs in progress share the grace period. A connection still open at its end (a
      // request stalled mid-upload, a client that never reads) is closed: the bound holds whatever clients do.
      const grace = new Promise((resolve) => setTimeout(resolve, config.shutdownGraceMs).unref());
      const httpClosed = new Promise<void>((resolve) => server.close(() => resolve()));
      const httpDone = Promise.race([httpClosed, grace]).then(() => {
        clearInterval(idleSweep);
        server.closeAllConnections();
        return httpClosed;
      });
      // A run still going at the end of the grace period is stopped, and publishes
      // nothing (its run is recorded as failed).
      await Promise.race([runner.idle(), grace]);
      await runner.abandonAll('the server shut down before the run finished');
      await httpDone;
      await Promise.allSettled([db.close(), hot.close(), tracing.shutdown(), listener?.close(), replicas?.close()]);
    })());
  return { port, app, catalog, runner, db, hot, startupSyncs, close };
}

async function main(): Promise<void> {
  let config: Config;
  try {
    config = loadConfig(process.env);
  } catch (error) {
    process.stderr.write(`${(error as Error).message}\n`);
    process.exit(2);
  }
  const log = createLogger(config.logLevel);
  // Every core: the primary keeps the scheduler and syncs and forks the serving workers.
  const primary = config.webConcurrency > 1 && cluster.isPrimary;
  const worker = config.webConcurrency > 1 && cluster.isWorker;
  let running: { readonly ready?: Promise<void>; close(): Promise<void> };
  const failed: (error: unknown) => never = (error) => {
    if (error instanceof ConfigError || error instanceof JobDefinitionError || error instanceof WorkerStartError) {
      process.stderr.write(`cannot start: ${error.message}\n`);
      process.exit(error instanceof WorkerStartError ? error.exitCode : 2);
    }
    throw error;
  };
  try {
    running = primary ? await startPrimary(config, log) : await startServer(worker ? servingOnly(config) : config, log, worker ? { cluster: clusterWorker(log) } : {});
  } catch (error) {
    failed(error);
  }
  const stop = (signal: string) => {
    log.info('server.stopping', { signal });
    // The bound on the whole shutdown: past it the process exits anyway.
    setTimeout(() => process.exit(1), config.shutdownGraceMs + 5_000).unref();
    void running.close().then(() => process.exit(0));
  };
  process.once('SIGTERM', () => stop('SIGTERM'));
  process.once('SIGINT', () => stop('SIGINT'));
  // The primary's syncs already run while its workers start; a worker that cannot start stops it all.
  running.ready?.catch(failed);
  if (worker) {
    announceReady();
    // A worker never outlives its primary.
    if (process.connected) process.once('disconnect', () => stop('primary gone'));
    else stop('primary gone');
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) void main();
