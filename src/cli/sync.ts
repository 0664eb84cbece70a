// `npm run sync -- <job>`: runs one sync job once against DATABASE_URL and
// REDIS_URL, prints the run record as JSON, and exits non-zero with the reason
// when the run did not succeed (1 failed, 3 skipped because another run holds
// the job, 2 bad usage or configuration).
import { loadConfig } from '../config/index.js';
import { loadJobDefinitions } from '../jobs/definition.js';
import { createLogger } from '../observability/log.js';
import { ensureSchema } from '../stores/metadata.js';
import { PostgresDatabase } from '../stores/postgres.js';
import { RedisHotTier } from '../stores/redis.js';
import { runSync } from '../sync/engine.js';

const USAGE = 'usage: npm run sync -- <job>   (runs one sync job once; needs DATABASE_URL and REDIS_URL)';

function fail(message: string, code: number): never {
  process.stderr.write(`${message}\n`);
  process.exit(code);
}

async function main(args: string[]): Promise<void> {
  if (args.length !== 1 || args[0]!.startsWith('-')) fail(USAGE, 2);
  let config;
  try {
    config = loadConfig(process.env);
  } catch (error) {
    fail((error as Error).message, 2);
  }
  if (config.embedded) {
    fail('npm run sync needs DATABASE_URL and REDIS_URL: the embedded store lives inside the server process, which syncs every job at start and then on schedule', 2);
  }
  let jobs;
  try {
    jobs = await loadJobDefinitions(config.syncJobsDir);
  } catch (error) {
    fail((error as Error).message, 2);
  }
  const job = jobs.find((j) => j.view === args[0]);
  if (!job) fail(`no sync job "${args[0]}" in ${config.syncJobsDir}; jobs: ${jobs.map((j) => j.view).join(', ')}`, 2);

  const db = new PostgresDatabase({ url: config.databaseUrl!, maxConnections: 4, applicationName: `feature-sync-cli:${job.view}`, statementTimeoutMs: config.syncTimeoutMs });
  const hot = new RedisHotTier({ url: config.redisUrl!, commandTimeoutMs: 30_000 });
  try {
    await ensureSchema(db);
    await hot.ready(5_000);
    const log = createLogger(config.logLevel === 'info' ? 'warn' : config.logLevel, { component: 'sync-cli' });
    const summary = await runSync(job, { db, hot, log, batchRows: config.syncBatchRows }, 'manual');
    process.stdout.write(JSON.stringify(summary, null, 2) + '\n');
    if (summary.status === 'failed') fail(`sync of ${job.view} failed (run ${summary.runId}): ${summary.error}`, 1);
    if (summary.status === 'skipped') fail(`sync of ${job.view} skipped (run ${summary.runId}): ${summary.error}`, 3);
  } catch (error) {
    fail(`sync of ${job.view} could not run: ${(error as Error).message}`, 1);
  } finally {
    await Promise.allSettled([db.close(), hot.close()]);
  }
}

void main(process.argv.slice(2));
