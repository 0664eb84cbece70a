// The operator's command line, against DATABASE_URL and REDIS_URL:
//   sync <job> [--force]        run one job once (`npm run sync -- <job>`)
//   backfill <job> --from T     run an incremental job over the rows after instant T
//   runs <job> [--limit N]      list the job's recent runs
//   rollback <view>             switch readers back to the previous version
//   keys create <name> --views a,b|*   create an API key (printed once)
//   keys list | keys revoke <id|name>
// Exit codes: 0 done, 1 failed (the reason on stderr), 2 bad usage or
// configuration, 3 skipped because another run holds the job.
import { parseArgs } from 'node:util';
import { loadConfig, type Config } from '../config/index.js';
import { loadJobDefinitions, type JobDefinition } from '../jobs/definition.js';
import { createLogger } from '../observability/log.js';
import { createApiKey, listApiKeys, revokeApiKey } from '../stores/api-keys.js';
import { ensureSchema, listRuns, rollbackView } from '../stores/metadata.js';
import { PostgresDatabase } from '../stores/postgres.js';
import { createHotTier } from '../stores/create-hot-tier.js';
import { jobLockKey, runSync } from '../sync/engine.js';
import { lowerPriority } from '../sync/runner.js';

const USAGE = `usage:
  npm run sync -- <job> [--force]          run one sync job once (--force publishes an empty or shrunken snapshot)
  npm run ctl -- backfill <job> --from T   run an incremental job over every row after T (ISO 8601)
  npm run ctl -- runs <job> [--limit N]    list the job's recent runs (default 20)
  npm run ctl -- rollback <view>           switch readers back to the view's previous version
  npm run ctl -- keys create <name> --views <view,...|*> [--rate N [--burst M]]
                                           create an API key (printed once, stored hashed), optionally with its own rate limit
  npm run ctl -- keys list                 list keys (never their secrets)
  npm run ctl -- keys revoke <key-id|name> revoke a key (takes effect within CATALOG_REFRESH_MS)
All commands need DATABASE_URL and REDIS_URL.`;

class ExitError extends Error {
  constructor(
    message: string,
    readonly code: number,
  ) {
    super(message);
  }
}

const usage = (why: string) => new ExitError(`${why}\n${USAGE}`, 2);

async function setup(): Promise<{ config: Config; jobs: JobDefinition[] }> {
  let config: Config;
  try {
    config = loadConfig(process.env);
  } catch (error) {
    throw new ExitError((error as Error).message, 2);
  }
  if (config.embedded) {
    throw new ExitError('this command needs DATABASE_URL and REDIS_URL: the embedded store lives inside the server process, which syncs every job at start and then on schedule', 2);
  }
  try {
    return { config, jobs: await loadJobDefinitions(config.syncJobsDir) };
  } catch (error) {
    throw new ExitError((error as Error).message, 2);
  }
}

function findJob(config: Config, jobs: JobDefinition[], name: string | undefined): JobDefinition {
  if (!name) throw usage('name a job');
  const job = jobs.find((j) => j.view === name);
  if (!job) throw new ExitError(`no sync job "${name}" in ${config.syncJobsDir}; jobs: ${jobs.map((j) => j.view).join(', ')}`, 2);
  return job;
}

async function main(argv: string[]): Promise<void> {
  let parsed;
  try {
    parsed = parseArgs({ args: argv, allowPositionals: true, options: { force: { type: 'boolean' }, limit: { type: 'string' }, from: { type: 'string' }, views: { type: 'string' }, rate: { type: 'string' }, burst: { type: 'string' }, help: { type: 'boolean', short: 'h' } } });
  } catch (error) {
    throw usage((error as Error).message);
  }
  const { values, positionals } = parsed;
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return;
  }
  if (positionals[0] === 'keys') return keys(positionals.slice(1), values.views, values.rate, values.burst);
  if (values.rate !== undefined || values.burst !== undefined) throw usage('--rate and --burst go with keys create');
  const [command, name, ...rest] = positionals;
  if (rest.length) throw usage(`unexpected arguments: ${rest.join(' ')}`);
  if (values.views !== undefined) throw usage('--views goes with keys create');
  if (command !== 'sync' && command !== 'backfill' && command !== 'runs' && command !== 'rollback') throw usage(command ? `unknown command "${command}"` : 'name a command');
  if (values.force && command !== 'sync') throw usage('--force goes with sync');
  if ((values.from !== undefined) !== (command === 'backfill')) throw usage('backfill needs --from, and --from goes with backfill');
  if (values.from !== undefined && Number.isNaN(Date.parse(values.from))) throw usage(`--from must be an ISO 8601 instant such as 2026-01-01T00:00:00Z, got "${values.from}"`);
  if (values.limit !== undefined && command !== 'runs') throw usage('--limit goes with runs');
  const limit = values.limit === undefined ? 20 : Number(values.limit);
  if (!Number.isInteger(limit) || limit < 1 || limit > 1000) throw usage(`--limit must be a whole number from 1 to 1000, got ${values.limit}`);

  const { config, jobs } = await setup();
  const job = findJob(config, jobs, name);
  if (command === 'backfill' && job.mode !== 'incremental') throw new ExitError(`${job.view} is a snapshot job; backfill applies to incremental jobs (every snapshot run reads all rows)`, 2);
  const db = new PostgresDatabase({ url: config.databaseUrl!, maxConnections: 4, applicationName: `feature-ctl:${job.view}`, statementTimeoutMs: config.syncTimeoutMs });
  const hot = createHotTier(config, 30_000);
  try {
    await ensureSchema(db).catch((error: Error) => {
      throw new ExitError(`${command} of ${job.view} could not run: Postgres: ${error.message}`, 1);
    });
    if (command === 'runs') {
      process.stdout.write(JSON.stringify(await listRuns(db, job.view, limit), null, 2) + '\n');
    } else if (command === 'rollback') {
      const result = await rollbackView(db, job.view, jobLockKey(job.view)).catch((error: Error) => {
        throw new ExitError(`rollback of ${job.view} failed: ${error.message}`, 1);
      });
      process.stdout.write(JSON.stringify({ view: job.view, rolled_back_from: result.from, current_version: result.to, run_id: result.runId }, null, 2) + '\n');
    } else {
      await hot.ready(5_000).catch((error: Error) => {
        throw new ExitError(`${command} of ${job.view} could not run: Redis: ${error.message}`, 1);
      });
      const log = createLogger(config.logLevel === 'info' ? 'warn' : config.logLevel, { component: 'sync-cli' });
      lowerPriority(process.pid, config.syncNice, log);
      const summary = await runSync(job, { db, hot, log, batchRows: config.syncBatchRows, retry: config.syncRetry }, 'manual', {
        force: values.force === true,
        ...(values.from ? { backfillFrom: new Date(values.from).toISOString() } : {}),
      });
      process.stdout.write(JSON.stringify(summary, null, 2) + '\n');
      if (summary.status === 'failed') throw new ExitError(`${command} of ${job.view} failed (run ${summary.runId}): ${summary.error}`, 1);
      if (summary.status === 'skipped') throw new ExitError(`${command} of ${job.view} skipped (run ${summary.runId}): ${summary.error}`, 3);
    }
  } finally {
    await Promise.allSettled([db.close(), hot.close()]);
  }
}

async function keys(args: string[], views: string | undefined, rateText: string | undefined, burstText: string | undefined): Promise<void> {
  const rate = rateText === undefined ? undefined : Number(rateText);
  const burst = burstText === undefined ? undefined : Number(burstText);
  if (rate !== undefined && !(rate > 0)) throw usage(`--rate must be a positive number of requests per second, got "${rateText}"`);
  if (burst !== undefined && !(Number.isInteger(burst) && burst >= 1)) throw usage(`--burst must be a whole number of at least 1, got "${burstText}"`);
  if (burst !== undefined && rate === undefined) throw usage('--burst goes with --rate');
  const [action, target, ...rest] = args;
  if (rest.length) throw usage(`unexpected arguments: ${rest.join(' ')}`);
  if (action === 'create') {
    if (!target) throw usage('name the key: keys create <name> --views <view,...|*>');
    if (!views) throw usage('say which views the key may read: --views route_delays,origin_airports (or --views "*" for all)');
  } else if (action === 'revoke') {
    if (!target) throw usage('name the key to revoke: keys revoke <key-id|name>');
  } else if (action !== 'list') throw usage(action ? `unknown keys action "${action}"` : 'keys needs create, list or revoke');
  const { config, jobs } = await setup();
  const db = new PostgresDatabase({ url: config.databaseUrl!, maxConnections: 2, applicationName: 'feature-ctl:keys' });
  try {
    await ensureSchema(db).catch((error: Error) => {
      throw new ExitError(`keys ${action} could not run: Postgres: ${error.message}`, 1);
    });
    if (action === 'create') {
      const list = views!.split(',').map((v) => v.trim()).filter(Boolean);
      const unknown = list.filter((v) => v !== '*' && !jobs.some((j) => j.view === v));
      if (list.length === 0 || unknown.length) throw new ExitError(`unknown view(s) ${unknown.join(', ') || '(none given)'}; views: ${jobs.map((j) => j.view).join(', ')}`, 2);
      const limit = rate === undefined ? undefined : { perSecond: rate, burst: burst ?? Math.max(1, Math.ceil(rate)) };
      const { keyId, token } = await createApiKey(db, target!, list, limit);
      process.stdout.write(JSON.stringify({ key_id: keyId, name: target, views: list, rate_limit: limit ?? 'server default', key: token, note: 'the key is shown only now; it is stored hashed' }, null, 2) + '\n');
    } else if (action === 'list') {
      process.stdout.write(JSON.stringify(await listApiKeys(db), null, 2) + '\n');
    } else {
      const revoked = await revokeApiKey(db, target!);
      if (revoked === 0) throw new ExitError(`no active key with id or name "${target}"`, 1);
      process.stdout.write(JSON.stringify({ revoked }, null, 2) + '\n');
    }
  } finally {
    await db.close();
  }
}

main(process.argv.slice(2)).then(
  () => process.exit(0),
  (error: Error) => {
    process.stderr.write(`${error.message}\n`);
    process.exit(error instanceof ExitError ? error.code : 1);
  },
);
