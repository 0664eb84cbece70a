// Entry point of a sync child process: runs one job and reports back. Keeping
// syncs in their own process means a sync's CPU, memory or crash never touches
// the serving event loop. With servers configured the child connects to them
// itself; in the embedded mode it uses the parent's stores over IPC.
import type { Config } from '../config/index.js';
import type { JobDefinition } from '../jobs/definition.js';
import type { Database } from '../stores/database.js';
import type { HotTier } from '../stores/hot-tier.js';
import type { RunTrigger } from '../stores/metadata.js';
import { PostgresDatabase } from '../stores/postgres.js';
import { createHotTier } from '../stores/create-hot-tier.js';
import { createLogger } from '../observability/log.js';
import { setupTracing } from '../observability/tracing.js';
import { runSync, type RunOptions, type RunSummary } from './engine.js';
import { RemoteStores } from './remote.js';

export type ChildRequest = {
  t: 'run';
  job: JobDefinition;
  trigger: RunTrigger;
  options: RunOptions;
  config: Config;
  /** Set in the embedded mode: the stores live in the parent. */
  remote?: { db: Database['kind']; hot: HotTier['kind'] };
};
export type ChildMessage = { t: 'started'; runId: number } | { t: 'done'; summary: RunSummary };

/** Redis writes during a sync may queue briefly and take longer than a lookup may. */
const SYNC_REDIS_TIMEOUT_MS = 30_000;

function send(message: ChildMessage): Promise<void> {
  return new Promise((resolve, reject) => process.send!(message, undefined, {}, (error) => (error ? reject(error) : resolve())));
}

process.once('message', (message: ChildRequest) => {
  void run(message).then(
    () => process.exit(0),
    (error: Error) => {
      process.stderr.write(`sync child failed: ${error.message}\n`);
      process.exit(1);
    },
  );
});

async function run(request: ChildRequest): Promise<void> {
  const { config, job } = request;
  let db: Database;
  let hot: HotTier;
  if (request.remote) {
    const remote = new RemoteStores(process as unknown as ConstructorParameters<typeof RemoteStores>[0]);
    db = remote.database(request.remote.db);
    hot = remote.hotTier(request.remote.hot);
  } else {
    db = new PostgresDatabase({ url: config.databaseUrl!, maxConnections: 4, applicationName: `feature-sync:${job.view}`, statementTimeoutMs: config.syncTimeoutMs });
    hot = createHotTier(config, SYNC_REDIS_TIMEOUT_MS);
  }
  const log = createLogger(config.logLevel, { component: 'sync', pid: process.pid });
  const tracing = setupTracing({ otlpEndpoint: config.otlpEndpoint, serviceName: config.serviceName });
  try {
    const summary = await runSync(
      job,
      { db, hot, log, tracer: tracing.tracer, batchRows: config.syncBatchRows, duckdbMemoryMb: config.syncDuckdbMemoryMb, retry: config.syncRetry, onRunStarted: (runId) => void send({ t: 'started', runId }) },
      request.trigger,
      request.options,
    );
    await send({ t: 'done', summary });
  } finally {
    await Promise.allSettled([db.close(), hot.close(), tracing.shutdown()]);
  }
}
