// The operator's command line, against DATABASE_URL and REDIS_URL:
//   sync <job> [--force]        run one job once (`npm run sync -- <job>`)
//   backfill <job> --from T     run an incremental job over the rows after instant T
//   runs <job> [--limit N]      list the job's recent runs
//   rollback <view>             switch readers back to the previous version
//   drop <view>                 free the data of a view whose definition was removed
//   keys create <name> --views a,b|*   create an API key (printed once)
//   keys list | keys revoke <id|name>
// Exit codes: 0 done, 1 failed (the reason on stderr), 2 bad usage or
// configuration, 3 skipped because another run holds the job.
import { parseArgs } from 'node:util';
import { loadConfig, type Config } from '../config/index.js';
import { loadJobDefinitions, type JobDefinition } from '../jobs/definition.js';
import { createLogger } from '../observability/log.js';
import { createApiKey, listApiKeys, revokeApiKey } from '../stores/api-keys.js';
import { ensureSchema, JobBusyError, listRuns, META_SCHEMA, rollbackView } from '../stores/metadata.js';
import { PostgresDatabase } from '../stores/postgres.js';
import { createHotTier } from '../stores/create-hot-tier.js';
import { dropView, jobLockKey, runSync } from '../sync/engine.js';
import { lowerPriority } from '../sync/runner.js';

const USAGE = `usage:
  npm run sync -- <job> [--force]          run one sync job once (--force publishes an empty or shrunken snapshot)
  npm run ctl -- backfill <job> --from T   run an incremental job over every row after T (ISO 8601)
  npm run ctl -- runs <job> [--limit N]    list the job's recent runs (default 20)
  npm run ctl -- rollback <view>           switch readers back to the view's previous version
  npm run ctl -- drop <view>               free every stored version of a view whose job definition was removed
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

// The options each command takes; any other is refused rather than ignored.
const OPTIONS: Readonly<Record<string, readonly string[]>> = {
  sync: ['force'],
  backfill: ['from'],
  runs: ['limit'],
  rollback: [],
  drop: [],
  'keys create': ['views', 'rate', 'burst'],
  'keys list': [],
  'keys revoke': [],
};

function checkOptions(command: string, given: Record<string, unknown>): void {
  for (const [option, value] of Object.entries(given)) {
    if (value === undefined || option === 'help' || OPTIONS[command]!.includes(option)) continue;
    const takers = Object.keys(OPTIONS).filter((c) => OPTIONS[c]!.includes(option));
    throw usage(`--${option} goes with ${takers.join(', ')}, not ${command}`);
  }
}

// Postgres integer: the largest burst a key can store.
const MAX_BURST = 2_147_483_647;

const INSTANT_FORM = 'YYYY-MM-DD (midnight UTC) or YYYY-MM-DDTHH:MM[:SS[.fff]] with Z or ±HH:MM, such as 2026-01-01T00:00:00Z';

/**
 * A strict ISO 8601 instant. Date.parse is lenient: it reads "Jan 1" as 2001,
 * rolls 2026-02-30 over to March and takes a time without a zone as local time.
 */
function parseInstant(text: string): Date | undefined {
  const m = /^(\d{4})-(\d{2})-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,3}))?)?(Z|[+-]\d{2}:\d{2}))?$/.exec(text);
  if (!m) return undefined;
  const [year, month, day, hour, minute, second] = m.slice(1, 7).map((f) => Number(f ?? 0)) as [number, number, number, number, number, number];
  if (year < 1970 || year > 2200) return undefined;
  const fields = new Date(Date.UTC(year, month - 1, day, hour, minute, second));
  // Date.UTC rolls over (day 30 of February, hour 24), so the fields must come back unchanged.
  const same = fields.getUTCFullYear() === year && fields.getUTCMonth() === month - 1 && fields.getUTCDate() === day;
  if (!same || fields.getUTCHours() !== hour || fields.getUTCMinutes() !== minute || fields.getUTCSeconds() !== second) return undefined;
  const zone = m[8] ?? 'Z';
  const [offsetHours, offsetMinutes] = zone === 'Z' ? [0, 0] : [Number(zone.slice(1, 3)), Number(zone.slice(4, 6))];
  if (offsetHours > 23 || offsetMinutes > 59) return undefined;
  const offsetMs = (zone.startsWith('-') ? -1 : 1) * (offsetHours * 60 + offsetMinutes) * 60_000;
  return new Date(fields.getTime() + Number((m[7] ?? '').padEnd(3, '0')) - offsetMs);
}

function setup(): Config {
  let config: Config;
  try {
    config = loadConfig(process.env);
  } catch (error) {
    throw new ExitError((error as Error).message, 2);
  }
  if (config.embedded) {
    throw new ExitError('this command needs DATABASE_URL and REDIS_URL: the embedded store lives inside the server process, which syncs every job at start and then on schedule', 2);
  }
  return config;
}

async function loadJobs(config: Config): Promise<JobDefinition[]> {
  try {
    return await loadJobDefinitions(config.syncJobsDir);
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
  if (positionals[0] === 'keys') return keys(positionals.slice(1), values);
  const [command, name, ...rest] = positionals;
  if (rest.length) throw usage(`unexpected arguments: ${rest.join(' ')}`);
  if (command === 'drop') {
    checkOptions(command, values);
    return drop(name);
  }
  if (command !== 'sync' && command !== 'backfill' && command !== 'runs' && command !== 'rollback') throw usage(command ? `unknown command "${command}"` : 'name a command');
  checkOptions(command, values);
  if (command === 'backfill' && values.from === undefined) throw usage('backfill needs --from');
  const from = values.from === undefined ? undefined : parseInstant(values.from);
  if (values.from !== undefined && !from) throw usage(`--from must be an ISO 8601 instant from 1970 to 2200: ${INSTANT_FORM}; got "${values.from}"`);
  const limit = values.limit === undefined ? 20 : Number(values.limit);
  if (!Number.isInteger(limit) || limit < 1 || limit > 1000) throw usage(`--limit must be a whole number from 1 to 1000, got ${values.limit}`);

  const config = setup();
  const jobs = await loadJobs(config);
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
        if (error instanceof JobBusyError) throw new ExitError(`rollback of ${job.view} skipped: ${error.message}`, 3);
        throw new ExitError(`rollback of ${job.view} failed: ${error.message}`, 1);
      });
      process.stdout.write(JSON.stringify({ view: job.view, rolled_back_from: result.from, current_version: result.to, run_id: result.runId }, null, 2) + '\n');
    } else {
      await hot.ready(5_000).catch((error: Error) => {
        throw new ExitError(`${command} of ${job.view} could not run: Redis: ${error.message}`, 1);
      });
      const log = createLogger(config.logLevel === 'info' ? 'warn' : config.logLevel, { component: 'sync-cli' });
      lowerPriority(process.pid, config.syncNice, log);
      const summary = await runSync(job, { db, hot, log, batchRows: config.syncBatchRows, duckdbMemoryMb: config.syncDuckdbMemoryMb, retry: config.syncRetry }, 'manual', {
        force: values.force === true,
        ...(from ? { backfillFrom: from.toISOString() } : {}),
      });
      process.stdout.write(JSON.stringify(summary, null, 2) + '\n');
      if (summary.status === 'failed') throw new ExitError(`${command} of ${job.view} failed (run ${summary.runId}): ${summary.error}`, 1);
      if (summary.status === 'skipped') throw new ExitError(`${command} of ${job.view} skipped (run ${summary.runId}): ${summary.error}`, 3);
    }
  } finally {
    await Promise.allSettled([db.close(), hot.close()]);
  }
}

/** Frees a removed view's data; refuses while a definition of it exists, which a run would load again. */
async function drop(view: string | undefined): Promise<void> {
  if (!view) throw usage('name the view to drop');
  const config = setup();
  const jobs = await loadJobs(config);
  if (jobs.some((j) => j.view === view)) {
    throw new ExitError(`view "${view}" is still defined in ${config.syncJobsDir}: remove its job definition (and redeploy the servers, which would otherwise sync it again) before dropping its data`, 2);
  }
  const db = new PostgresDatabase({ url: config.databaseUrl!, maxConnections: 2, applicationName: `feature-ctl:drop:${view}` });
  const hot = createHotTier(config, 30_000);
  try {
    await ensureSchema(db).catch((error: Error) => {
      throw new ExitError(`drop of ${view} could not run: Postgres: ${error.message}`, 1);
    });
    const [known] = await db.query(`SELECT 1 FROM ${META_SCHEMA}.versions WHERE view = $1 AND state <> 'dropped' UNION ALL SELECT 1 FROM ${META_SCHEMA}.views WHERE view = $1 LIMIT 1`, [view]);
    if (!known) throw new ExitError(`view "${view}" has no stored data to drop`, 2);
    await hot.ready(5_000).catch((error: Error) => {
      throw new ExitError(`drop of ${view} could not run: Redis: ${error.message}`, 1);
    });
    const dropped = await dropView(view, db, hot).catch((error: Error) => {
      throw new ExitError(`drop of ${view} failed (run it again to finish): ${error.message}`, 1);
    });
    if (!dropped) throw new ExitError(`drop of ${view} skipped: a run of its job holds the job's lock; drop it after the run ends`, 3);
    process.stdout.write(JSON.stringify({ view, dropped_versions: dropped, hot_keys: dropped.reduce((n, d) => n + d.hot_keys, 0) }, null, 2) + '\n');
  } finally {
    await Promise.allSettled([db.close(), hot.close()]);
  }
}

async function keys(args: string[], options: { views?: string; rate?: string; burst?: string; [option: string]: string | boolean | undefined }): Promise<void> {
  const { views, rate: rateText, burst: burstText } = options;
  const [action, target, ...rest] = args;
  if (rest.length) throw usage(`unexpected arguments: ${rest.join(' ')}`);
  if (action === 'create' || action === 'list' || action === 'revoke') checkOptions(`keys ${action}`, options);
  const rate = rateText === undefined ? undefined : Number(rateText);
  const burst = burstText === undefined ? undefined : Number(burstText);
  if (rate !== undefined && !(Number.isFinite(rate) && rate > 0)) throw usage(`--rate must be a finite positive number of requests per second, got "${rateText}"`);
  if (burst !== undefined && !(Number.isInteger(burst) && burst >= 1 && burst <= MAX_BURST)) throw usage(`--burst must be a whole number from 1 to ${MAX_BURST}, got "${burstText}"`);
  if (burst !== undefined && rate === undefined) throw usage('--burst goes with --rate');
  // Without --burst the bucket holds one second of the rate.
  const defaultBurst = rate === undefined ? undefined : Math.max(1, Math.ceil(rate));
  if (burst === undefined && defaultBurst !== undefined && defaultBurst > MAX_BURST) {
    throw usage(`--rate ${rateText} needs --burst: the default burst, the rate rounded up (${defaultBurst}), is above the most a key can hold (${MAX_BURST}); give --burst M with M at most ${MAX_BURST}`);
  }
  if (action === 'create') {
    if (!target) throw usage('name the key: keys create <name> --views <view,...|*>');
    if (!views) throw usage('say which views the key may read: --views route_delays,origin_airports (or --views "*" for all)');
  } else if (action === 'revoke') {
    if (!target) throw usage('name the key to revoke: keys revoke <key-id|name>');
  } else if (action !== 'list') throw usage(action ? `unknown keys action "${action}"` : 'keys needs create, list or revoke');
  const config = setup();
  // Only create needs the job definitions (for the view names): a bad definition must not block revoking a leaked key.
  const jobs = action === 'create' ? await loadJobs(config) : [];
  const db = new PostgresDatabase({ url: config.databaseUrl!, maxConnections: 2, applicationName: 'feature-ctl:keys' });
  try {
    await ensureSchema(db).catch((error: Error) => {
      throw new ExitError(`keys ${action} could not run: Postgres: ${error.message}`, 1);
    });
    if (action === 'create') {
      const list = views!.split(',').map((v) => v.trim()).filter(Boolean);
      const unknown = list.filter((v) => v !== '*' && !jobs.some((j) => j.view === v));
      if (list.length === 0 || unknown.length) throw new ExitError(`unknown view(s) ${unknown.join(', ') || '(none given)'}; views: ${jobs.map((j) => j.view).join(', ')}`, 2);
      const limit = rate === undefined ? undefined : { perSecond: rate, burst: burst ?? defaultBurst! };
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
