// Owns one sync run, start to finish: read the Parquet source through DuckDB,
// check it against the view's contract, stream it in bounded batches into a new
// version table (COPY) and the hot tier (batched writes), then publish the
// version in one Postgres transaction. Until that commit readers see the
// previous version; after it, all of the new one. Any failure before it leaves
// the previous version serving and removes what the run wrote.
import { stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { DuckDBInstance, type DuckDBConnection } from '@duckdb/node-api';
import type { FeatureType, JobDefinition } from '../jobs/definition.js';
import { forEachBatch, quoteIdent, type Database, type Queryable } from '../stores/database.js';
import type { HotTier } from '../stores/hot-tier.js';
import { hotKey, hotKeyPrefix } from '../stores/hot-tier.js';
import { asBuffer, HotRowEncoder } from '../stores/hot-value.js';
import { valueColumn } from './duck-columns.js';
import { DATA_SCHEMA, finishRun, isoTimeSql, META_SCHEMA, recordSkippedRun, runOfTick, startRun, versionTable, type RunOutcome, type RunTrigger } from '../stores/metadata.js';
import type { Tracer } from '@opentelemetry/api';
import type { Logger } from '../observability/log.js';
import { recordPhases } from '../observability/tracing.js';
import {
  checkCompatibility,
  checkContract,
  checkedSql,
  createDeltaTableSql,
  createTableSql,
  epochMediansSql,
  judgeEpochUnits,
  judgeRejects,
  judgeSnapshot,
  copySql,
  hotColumns,
  hotSql,
  hotValuesFromPostgresSql,
  mergeSql,
  projectionSql,
  REJECT_SAMPLE_SQL,
  REJECT_SUMMARY_SQL,
  rowChecksSql,
  recordedFeatures,
  tightenedRules,
  judgeCarriedRows,
  type RecordedRules,
  type TightenedRule,
  LIVE_ENTITIES_SQL,
  DROP_ROW_CHECKS_SQL,
  sqlString,
  STATS_SQL,
  SyncDataError,
  toRunStats,
  type RunStats,
  type SourceColumn,
} from './plan.js';
import { pipeCsv } from './duck-copy.js';

/** Published versions kept per view: the current one and the one before it (for lagging readers and rollback). */
export const RETAINED_VERSIONS = 2;
/** Hot-tier batches in flight at once: enough to keep Redis busy, few enough to bound memory. */
const HOT_WRITES_IN_FLIGHT = 4;

export interface SyncContext {
  readonly db: Database;
  readonly hot: HotTier;
  readonly log: Logger;
  /** Rows per COPY write and hot-tier batch. */
  readonly batchRows: number;
  /** Told the run id as soon as the run is recorded, so a supervisor can close it if this process dies. */
  readonly onRunStarted?: (runId: number) => void;
  /** Memory DuckDB may use before it spills to disk (SYNC_DUCKDB_MEMORY_MB; default 128). */
  readonly duckdbMemoryMb?: number;
  /** Spans for the run and each of its phases, when tracing is on. */
  readonly tracer?: Tracer | undefined;
  /** Transient failures (connections, timeouts) are retried this many times in all, with backoff. */
  readonly retry?: { readonly attempts: number; readonly baseDelayMs: number };
}

export interface RunOptions {
  /** Publish even an empty or shrunken snapshot. */
  readonly force?: boolean;
  /** Incremental jobs: read rows after this instant (ISO 8601) instead of after the last watermark minus the lookback. */
  readonly backfillFrom?: string;
  /**
   * Scheduled runs: the tick's scheduled time (ISO 8601). Every process's
   * scheduler fires each tick; the first to take the job's lock runs it, and
   * any later one (lock busy, or the tick already run) records a skip.
   */
  readonly scheduledFor?: string;
}

export interface RunSummary {
  readonly runId: number;
  readonly job: string;
  readonly status: 'succeeded' | 'failed' | 'skipped';
  readonly version: number | null;
  readonly rowsRead: number;
  readonly rowsWritten: number;
  readonly watermark: string | null;
  readonly error: string | null;
  readonly durationMs: number;
  readonly details: Record<string, unknown>;
  /** The failure was of a connection or a timeout: a later attempt may succeed. */
  readonly transient?: boolean;
}

const DEFAULT_RETRY = { attempts: 3, baseDelayMs: 1000 };

const TRANSIENT_CODES = new Set(['ESOURCECHANGED', 'ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN', '57P01', '57P02', '57P03', '08000', '08001', '08003', '08004', '08006', '53300', '40001', '40P01']);
const TRANSIENT_MESSAGES = /Connection terminated|Connection is closed|connect ECONNREFUSED|Command timed out|timeout exceeded when trying to connect|Stream isn't writeable|enableOfflineQueue|MaxRetriesPerRequest|^CLUSTERDOWN|^TRYAGAIN|Too many Cluster redirections|Failed to refresh slots cache/i;

/** Connection losses and timeouts are worth another try; data and contract errors are not. */
export function isTransient(error: unknown): boolean {
  if (error instanceof SyncDataError) return false;
  const e = error as { code?: string; message?: string };
  return (e.code !== undefined && TRANSIENT_CODES.has(e.code)) || TRANSIENT_MESSAGES.test(e.message ?? '');
}

export function jobLockKey(view: string): string {
  return `featurestore:job:${view}`;
}

/**
 * Runs a job once, retrying transient failures with exponential backoff and
 * jitter; each attempt is its own run record. Another run holding the job's
 * lock (in any process) makes this one a recorded skip.
 */
export async function runSync(job: JobDefinition, ctx: SyncContext, trigger: RunTrigger, options: RunOptions = {}): Promise<RunSummary> {
  const retry = ctx.retry ?? DEFAULT_RETRY;
  // Once an attempt has taken the tick, later attempts retry it rather than find it taken.
  const tick = { taken: false };
  for (let attempt = 1; ; attempt++) {
    const summary = await runAttempt(job, ctx, trigger, options, tick).catch((error: unknown): RunSummary => {
      // Failing before a run could be recorded (no lock, no connection): report it the same way.
      return { runId: -1, job: job.view, status: 'failed', version: null, rowsRead: 0, rowsWritten: 0, watermark: null, error: describeError(error), durationMs: 0, details: {}, transient: isTransient(error) };
    });
    if (summary.status !== 'failed' || !summary.transient || attempt >= retry.attempts) return summary;
    const delay = retry.baseDelayMs * 2 ** (attempt - 1) * (0.5 + Math.random());
    ctx.log.warn('sync.retry', { job: job.view, run_id: summary.runId, attempt, of: retry.attempts, delay_ms: Math.round(delay), error: summary.error });
    await new Promise((resolve) => setTimeout(resolve, delay));
  }
}

async function runAttempt(job: JobDefinition, ctx: SyncContext, trigger: RunTrigger, options: RunOptions, tick: { taken: boolean }): Promise<RunSummary> {
  const started = Date.now();
  const skip = async (reason: string) => {
    const runId = await recordSkippedRun(ctx.db, job.view, trigger, reason, options.scheduledFor);
    ctx.log.info('sync.run', { job: job.view, run_id: runId, status: 'skipped', trigger, reason, scheduled_for: options.scheduledFor });
    return { runId, job: job.view, status: 'skipped', version: null, rowsRead: 0, rowsWritten: 0, watermark: null, error: reason, durationMs: Date.now() - started, details: {} } satisfies RunSummary;
  };
  const locked = await ctx.db.withAdvisoryLock(jobLockKey(job.view), async () => {
    // A process whose tick fired late must not run the tick again after another process ran it.
    const taken = options.scheduledFor && !tick.taken ? await runOfTick(ctx.db, job.view, options.scheduledFor) : undefined;
    if (taken) return skip(`the tick scheduled for ${options.scheduledFor} was already run (run ${taken.runId}, ${taken.status})`);
    const onRunStarted = (runId: number) => {
      tick.taken = true;
      ctx.onRunStarted?.(runId);
    };
    return runLocked(job, { ...ctx, onRunStarted }, trigger, options, started);
  });
  if (locked.acquired) return locked.value;
  return skip('another run of this job was in progress');
}

async function runLocked(job: JobDefinition, ctx: SyncContext, trigger: RunTrigger, options: RunOptions, started: number): Promise<RunSummary> {
  const { db, hot } = ctx;
  // We hold the job's lock, so anything still marked running or loading belongs to a dead run.
  const reclaimedBeforeRun = await reclaimDeadRuns(job.view, db, hot);
  const runId = await startRun(db, job.view, trigger, options.scheduledFor);
  ctx.onRunStarted?.(runId);
  const log = ctx.log.child({ job: job.view, run_id: runId, trigger });
  const details: Record<string, unknown> = {};
  if (reclaimedBeforeRun.length) details.reclaimed_dead_versions = reclaimedBeforeRun;
  const phases: Record<string, number> = {};
  const spans: { name: string; start: number; end: number }[] = [];
  let phaseStart = Date.now();
  const phase = (name: string) => {
    const end = Date.now();
    phases[name] = end - phaseStart;
    spans.push({ name, start: phaseStart, end });
    phaseStart = end;
  };
  const traceRun = (failed?: string) => recordPhases(ctx.tracer, `sync ${job.view}`, { 'featurestore.job': job.view, 'featurestore.run_id': runId, 'featurestore.trigger': trigger }, started, spans, failed);

  let version: number | null = null;
  /** Set once readers are switched to `version`: it is then never this run's to discard. */
  let published = false;
  let rowsRead = 0;
  let rowsWritten = 0;
  let watermark: string | null = null;
  const duckdbMemoryMb = ctx.duckdbMemoryMb ?? 128;
  const duck = await DuckDBInstance.create(':memory:', { memory_limit: `${duckdbMemoryMb}MB`, threads: '2', temp_directory: path.join(os.tmpdir(), 'featurestore-duckdb') });
  const conn = await duck.connect();
  try {
    // DuckDB's allocator otherwise keeps up to 128 MB it freed (the duplicate count's hash table, say) through
    // the load that follows; returning it promptly keeps the sync's resident memory flat as the input grows.
    await conn.run(`SET TimeZone = 'UTC'; SET preserve_insertion_order = false; SET allocator_flush_threshold = '32MB'; SET allocator_background_threads = true`);
    const sourceState = await sourceFiles(conn, job.source);
    const columns = await describeSource(conn, job);
    const { ignoredColumns } = checkContract(job, columns);
    if (ignoredColumns.length) details.ignored_columns = ignoredColumns;
    const previous = await currentVersion(db, job.view);
    if (previous) checkCompatibility(job, previous, job.mode === 'incremental');
    const mediansSql = epochMediansSql(job);
    if (mediansSql) judgeEpochUnits(job, await queryOne(conn, mediansSql));
    // Incremental runs on top of a published version read only rows past its
    // as-of time (the newest event time it holds) minus the lookback, or past
    // the backfill instant given.
    const incremental = job.mode === 'incremental' && previous !== undefined;
    const since = incremental ? (options.backfillFrom ?? windowStart(previous.asOf, job.lookbackSeconds)) : null;
    if (since) details.window_start = since;
    await conn.run(`CREATE VIEW projected AS ${projectionSql(job)}`);
    await conn.run(`CREATE VIEW checked AS ${checkedSql(job, since, new Date().toISOString())}`);
    await conn.run(rowChecksSql(job));
    const stats = toRunStats(await queryOne(conn, STATS_SQL));
    rowsRead = stats.rowsRead;
    Object.assign(details, { rows_rejected: stats.rejected, duplicates_dropped: stats.duplicates });
    if (stats.rejected) await recordRejects(conn, db, job, runId, stats);
    const entities = !incremental && job.deleteColumn ? Number((await queryOne(conn, LIVE_ENTITIES_SQL)).live) : stats.entities;
    // Its memory (or temp files) go back before the load.
    await conn.run(DROP_ROW_CHECKS_SQL);
    if (!incremental) judgeSnapshot(job, entities, previous, options.force === true);
    if (options.force) details.forced = true;
    phase('read_and_check');

    version = await allocateVersion(db, job, runId);
    const stale = await claimHotVersion(job.view, version, hot);
    if (stale !== null) {
      details.stale_hot_keys_dropped = stale;
      log.warn('sync.stale_hot_keys', {
        version,
        keys: stale,
        message: `the hot tier had version ${version} marked as used, with ${stale} keys left, though Postgres has no record of it (was the database restored to an earlier state, or did a run of this job lose its lock?); they were dropped before loading, so none is served as part of the new version`,
      });
    }
    const table = versionTable(job.view, version);
    await db.query(createTableSql(table, job.features));
    let rowCount: number;
    if (incremental) {
      // A changed contract (a feature added) is published even if no row changed, so callers see the features the
      // definition declares; entities this run did not read hold null for a new feature until a backfill reads them.
      const featuresChanged = !sameFeatures(previous.features, job.features);
      if (featuresChanged) details.features_changed = true;
      // Rules tightened since the published version are checked on every entity the version carries over; if they
      // hold, the version is published so that it records them (and the next run need not check again).
      // Rules of a version that recorded none (loaded by an older release) are checked, but publish nothing by themselves.
      const tightened = tightenedRules(previous.features, job);
      const known = tightened.filter((r) => !r.unknown);
      if (known.length) details.rules_tightened = [...new Set(known.map((r) => `${r.feature}: ${r.reason}`))];
      const contractChanged = featuresChanged || known.length > 0;
      const merged = await mergeDelta(conn, job, previous, version, table, ctx, stats, contractChanged, tightened);
      Object.assign(details, merged.counts);
      phase('merge');
      if (merged.changes === 0 && !contractChanged) {
        // Nothing changed (a replay, or no new rows): keep serving the current version.
        await discardVersion(job.view, version, db, hot);
        details.unchanged = true;
        const current = previous.version;
        await closeRun(db, runId, { status: 'succeeded', version: current, rowsRead, rowsWritten: 0, watermark: previous.asOf ? new Date(previous.asOf) : null, details: { ...details, phases_ms: phases } });
        const summary: RunSummary = { runId, job: job.view, status: 'succeeded', version: current, rowsRead, rowsWritten: 0, watermark: previous.asOf, error: null, durationMs: Date.now() - started, details: { ...details, phases_ms: phases } };
        log.info('sync.run', { status: 'succeeded', unchanged: true, version: current, rows_read: rowsRead, duration_ms: summary.durationMs, ...summary.details });
        return summary;
      }
      rowsWritten = merged.changes;
      rowCount = merged.rows;
      watermark = merged.asOf;
    } else {
      const written = await streamRows(duck, conn, job, version, table, ctx, stats.duplicates > 0);
      rowsWritten = written.postgres;
      rowCount = written.postgres;
      watermark = stats.watermark;
      if (written.deleted) details.deleted = written.deleted;
      // How long each store took to load, both running at once: which one the load waited for.
      details.load_ms = written.loadMs;
      // Every row read is accounted for: written, deleted, rejected, or a duplicate that lost.
      if (written.postgres + written.deleted !== stats.entities || written.hot !== written.postgres) {
        throw new Error(
          `row counts disagree: read ${rowsRead} (${stats.rejected} rejected, ${stats.duplicates} duplicates, ${written.deleted} deletions), expected ${stats.entities - written.deleted} to write, Postgres stored ${written.postgres}, hot tier ${written.hot}; nothing was published`,
        );
      }
      phase('load');
      await db.query(`ALTER TABLE ${table} ADD PRIMARY KEY (entity_id)`);
    }
    await db.query(`ANALYZE ${table}`);
    phase('index');
    if (sourceState !== undefined && (await sourceFiles(conn, job.source)) !== sourceState) {
      throw Object.assign(new Error(`the source ${job.source} changed while the run read it (a file was replaced, added or removed), so the stores may hold different data; nothing was published, and a retry reads it again`), { code: 'ESOURCECHANGED' });
    }

    await db.transaction(async (tx) => {
      await publishVersion(tx, runId, job.view, version!, watermark, rowCount);
      await closeRun(tx, runId, { status: 'succeeded', version, rowsRead, rowsWritten, watermark: watermark ? new Date(watermark) : null, details: { ...details, phases_ms: phases } });
    });
    phase('publish');
    // Readers are switched to this version now: from here on nothing may discard it, and a failure to reclaim
    // older versions leaves the run succeeded (the next run reclaims them).
    published = true;
    try {
      const reclaimed = await reclaimOldVersions(job.view, db, hot);
      if (reclaimed.length) details.reclaimed_versions = reclaimed;
    } catch (error) {
      details.reclaim_failed = `older versions were not reclaimed (the next run retries): ${describeError(error)}`;
      log.warn('sync.reclaim_failed', { version, error });
    }
    if (details.reclaimed_versions || details.reclaim_failed) {
      const added = { reclaimed_versions: details.reclaimed_versions, reclaim_failed: details.reclaim_failed };
      await db.query(`UPDATE ${META_SCHEMA}.runs SET details = details || $2::jsonb WHERE run_id = $1`, [runId, JSON.stringify(added)]).catch((error: Error) => log.warn('sync.record_failed', { error }));
    }
    traceRun();
    const summary: RunSummary = { runId, job: job.view, status: 'succeeded', version, rowsRead, rowsWritten, watermark, error: null, durationMs: Date.now() - started, details: { ...details, phases_ms: phases } };
    log.info('sync.run', { status: 'succeeded', version, rows_read: rowsRead, rows_written: rowsWritten, watermark, duration_ms: summary.durationMs, ...summary.details });
    return summary;
  } catch (caught) {
    let error = describeError(caught);
    // DuckDB's own words say neither which limit it hit nor what to do about it.
    if (/Out of Memory Error/i.test(error)) {
      error = `DuckDB ran out of the ${duckdbMemoryMb} MB it may use (SYNC_DUCKDB_MEMORY_MB) while syncing view "${job.view}": ${error}. Raise SYNC_DUCKDB_MEMORY_MB (the sync process's peak memory grows by about as much)${published ? '' : '; the last published version keeps serving'}`;
    }
    phase('failed');
    if (caught instanceof SyncDataError) Object.assign(details, caught.details);
    // Remove what this run wrote; the previous version was never touched.
    if (version !== null && !published) await discardVersion(job.view, version, db, hot).catch((cleanupError) => log.warn('sync.cleanup_failed', { version, error: cleanupError }));
    const recorded = await finishRun(db, runId, { status: 'failed', version, rowsRead, rowsWritten: 0, watermark: watermark ? new Date(watermark) : null, error, details: { ...details, phases_ms: phases } }).catch((recordError) => {
      log.error('sync.record_failed', { error: recordError });
      return true;
    });
    // Closed by another run while it ran: whatever broke here (its table reclaimed under it, say) follows from that.
    const overtaken = caught instanceof RunSupersededError || !recorded;
    if (!recorded && !(caught instanceof RunSupersededError)) error = `${superseded(runId).message} (it then failed: ${error})`;
    traceRun(error);
    const summary: RunSummary = { runId, job: job.view, status: 'failed', version, rowsRead, rowsWritten: 0, watermark, error, durationMs: Date.now() - started, details, transient: !overtaken && isTransient(caught) };
    log.error('sync.run', { status: 'failed', version, rows_read: rowsRead, error, duration_ms: summary.durationMs, ...details });
    return summary;
  } finally {
    conn.closeSync();
    duck.closeSync();
  }
}

/**
 * The source's files as a run finds them: path, size, inode and modification
 * time of each. A run reads the source several times (the checks, then
 * Postgres and the hot tier at once); a file replaced, added or removed in
 * between (an upstream job renaming a new file into place) could leave the
 * two stores with different data under one version, so the run compares this
 * before it publishes. Undefined where the source cannot be listed as files.
 */
async function sourceFiles(conn: DuckDBConnection, source: string): Promise<string | undefined> {
  let files: string[];
  try {
    files = (await conn.runAndReadAll(`SELECT file FROM glob(${sqlString(source)}) ORDER BY file`)).getRowObjectsJS().map((row) => String(row.file));
  } catch {
    return undefined;
  }
  const seen = await Promise.all(files.map(async (file) => stat(file).then((s) => `${file} ${s.size} ${s.ino} ${s.mtimeMs}`, () => `${file} gone`)));
  return seen.join('\n');
}

function describeError(error: unknown): string {
  if (error instanceof SyncDataError) return error.message;
  const message = error instanceof Error ? error.message : String(error);
  return message.split('\n')[0]!.slice(0, 2000);
}

async function queryOne(conn: DuckDBConnection, sql: string): Promise<Record<string, unknown>> {
  const reader = await conn.runAndReadAll(sql);
  const [row] = reader.getRowObjectsJS();
  return (row ?? {}) as Record<string, unknown>;
}

async function describeSource(conn: DuckDBConnection, job: JobDefinition): Promise<SourceColumn[]> {
  try {
    await conn.run(`CREATE VIEW source AS SELECT * FROM read_parquet(${sqlString(job.source)})`);
  } catch (error) {
    throw new SyncDataError(`cannot read the Parquet source ${job.source}: ${describeError(error)}`);
  }
  try {
    await conn.run(`CREATE VIEW transformed AS ${job.transform ?? 'SELECT * FROM source'}`);
  } catch (error) {
    throw new SyncDataError(`the transform of view "${job.view}" (${job.file}) failed: ${describeError(error)}`);
  }
  const reader = await conn.runAndReadAll('DESCRIBE transformed');
  return reader.getRowObjectsJS().map((row) => ({ name: String(row.column_name), type: String(row.column_type) }));
}

/** The same features, names and types, in the same order. */
function sameFeatures(published: readonly { name: string; type: FeatureType }[], now: readonly { name: string; type: FeatureType }[]): boolean {
  return published.length === now.length && published.every((f, i) => f.name === now[i]!.name && f.type === now[i]!.type);
}

/** The version readers are on now, with what the run compares against. */
interface CurrentVersion {
  readonly version: number;
  readonly rows: number;
  readonly asOf: string | null;
  readonly features: (RecordedRules & { type: FeatureType })[];
  /** Null for a version loaded before the key column was recorded. */
  readonly entityKey: string | null;
}

async function currentVersion(db: Database, view: string): Promise<CurrentVersion | undefined> {
  const [row] = await db.query<{ version: number; row_count: number; features: unknown; as_of: string | null; entity_key: string | null }>(
    `SELECT ver.version, ver.row_count, ver.features, ver.entity_key, ${isoTimeSql('ver.as_of')} AS as_of FROM ${META_SCHEMA}.views v JOIN ${META_SCHEMA}.versions ver ON ver.view = v.view AND ver.version = v.current_version WHERE v.view = $1`,
    [view],
  );
  if (!row) return undefined;
  const features = (typeof row.features === 'string' ? JSON.parse(row.features) : row.features) as CurrentVersion['features'];
  return { version: Number(row.version), rows: Number(row.row_count), asOf: row.as_of, features, entityKey: row.entity_key };
}

function windowStart(asOf: string | null, lookbackSeconds: number): string | null {
  if (!asOf) return null;
  return new Date(Date.parse(asOf) - lookbackSeconds * 1000).toISOString();
}

/**
 * Incremental run: the new version starts as a copy of the current one (so
 * readers still switch atomically, and rollback works as for snapshots), the
 * delta is merged with event-time guards, and the hot tier is loaded from the
 * merged table.
 */
async function mergeDelta(
  conn: DuckDBConnection,
  job: JobDefinition,
  previous: CurrentVersion,
  version: number,
  table: string,
  ctx: SyncContext,
  stats: RunStats,
  contractChanged: boolean,
  tightened: readonly TightenedRule[],
): Promise<{ changes: number; rows: number; asOf: string | null; counts: Record<string, number> }> {
  const { db, hot } = ctx;
  const kept = previous.features.map((f) => quoteIdent(f.name)).join(', ');
  await db.query(`INSERT INTO ${table} (entity_id, event_time, ${kept}) SELECT entity_id, event_time, ${kept} FROM ${versionTable(job.view, previous.version)}`);
  await db.query(`ALTER TABLE ${table} ADD PRIMARY KEY (entity_id)`);
  const delta = `${DATA_SCHEMA}.${quoteIdent(`${job.view}__v${version}_delta`)}`;
  await db.query(createDeltaTableSql(delta, job.features));
  try {
    const copy = await db.openCopy(delta, ['entity_id', 'event_time', ...job.features.map((f) => f.name), 'deleted']);
    let deltaRows: number;
    try {
      deltaRows = await pipeCsv(conn, copySql(job, stats.duplicates > 0, true), copy);
    } catch (error) {
      await copy.abort(error as Error);
      throw error;
    }
    const stored = await copy.finish();
    if (stored !== deltaRows || deltaRows !== stats.entities) throw new Error(`row counts disagree: ${stats.entities} delta rows expected, ${deltaRows} read, ${stored} stored; nothing was published`);
    const merge = mergeSql(table, delta, job.features);
    const [up] = await db.query<{ inserted: number; updated: number }>(merge.upsert);
    const [gone] = await db.query<{ deleted: number }>(merge.remove);
    const inserted = Number(up!.inserted);
    const updated = Number(up!.updated);
    const deleted = Number(gone!.deleted);
    // As for snapshots (STATS_SQL), the as-of time is never later than the run.
    const [after] = await db.query<{ rows: number; as_of: string | null }>(`SELECT count(*) AS rows, ${isoTimeSql('least(max(event_time), now())')} AS as_of FROM ${table}`);
    const rows = Number(after!.rows);
    if (rows !== previous.rows + inserted - deleted) throw new Error(`row counts disagree after the merge: ${previous.rows} + ${inserted} inserted - ${deleted} deleted != ${rows}; nothing was published`);
    const changes = inserted + updated + deleted;
    const counts = { inserted, updated, deleted, unchanged: stats.entities - changes };
    const broken = [];
    for (const rule of tightened) {
      const [found] = await db.query<{ count: number }>(`SELECT count(*) AS count FROM ${table} WHERE ${rule.broken}`);
      if (!Number(found!.count)) continue;
      const [example] = await db.query<{ entity_id: string; value: string | null }>(`SELECT entity_id, ${quoteIdent(rule.feature)}::text AS value FROM ${table} WHERE ${rule.broken} ORDER BY entity_id LIMIT 1`);
      broken.push({ feature: rule.feature, reason: rule.reason, count: Number(found!.count), example: example!.entity_id, value: example!.value });
    }
    judgeCarriedRows(job, broken);
    if (changes === 0 && !contractChanged) return { changes, rows, asOf: after!.as_of, counts };
    let hotRows = 0;
    const load = async (batch: unknown[][]) => {
      await hot.set(batch.map((row) => [hotKey(job.view, version, row[0] as string), asBuffer(row[1] as Uint8Array)] as const));
      hotRows += batch.length;
    };
    if (db.kind === 'pglite') {
      // Page by page, each its own query: a cursor's transaction would hold the embedded store's one session (and every
      // lookup that misses the hot tier) for the whole reload. Ids are never empty, so '' is before the first.
      const page = hotValuesFromPostgresSql(table, job.features, ctx.batchRows);
      for (let after = ''; ; ) {
        const batch = await db.query<unknown[]>(page, [after], { rowMode: 'array' });
        if (batch.length === 0) break;
        await load(batch);
        after = batch.at(-1)![0] as string;
      }
    } else await forEachBatch(db, hotValuesFromPostgresSql(table, job.features), ctx.batchRows, load);
    if (hotRows !== rows) throw new Error(`the hot tier received ${hotRows} of ${rows} rows; nothing was published`);
    return { changes, rows, asOf: after!.as_of, counts };
  } finally {
    await db.query(`DROP TABLE IF EXISTS ${delta}`);
  }
}

/** Keeps a sample of rejected rows in Postgres, whatever the run's outcome, so the reason can be inspected. */
async function recordRejects(conn: DuckDBConnection, db: Database, job: JobDefinition, runId: number, stats: RunStats): Promise<void> {
  const summary = (await conn.runAndReadAll(REJECT_SUMMARY_SQL)).getRowObjectsJS() as { reject: string; n: unknown; example: string | null }[];
  const sample = (await conn.runAndReadAll(REJECT_SAMPLE_SQL)).getRowObjectsJS() as { entity_id: string | null; column_name: string; reason: string }[];
  await db.query(
    `INSERT INTO ${META_SCHEMA}.rejects (run_id, job, entity_id, column_name, reason)
     SELECT $1, $2, e, c, r FROM unnest($3::text[], $4::text[], $5::text[]) AS u(e, c, r)`,
    [runId, job.view, sample.map((r) => r.entity_id), sample.map((r) => r.column_name), sample.map((r) => r.reason)],
  );
  judgeRejects(job, stats, summary);
}

/**
 * Marks the new version in the hot tier before its first key. If the mark is
 * there already, the number was used before by a version Postgres lost (a
 * restore to an earlier state; a dropped version's mark outlives any late
 * fill of it): its keys are dropped, and the count returned,
 * so none of them (an entity the new data lacks, say) is served as part of
 * this version. Null when the version is new to the hot tier too.
 */
async function claimHotVersion(view: string, version: number, hot: HotTier): Promise<number | null> {
  if (await hot.claimVersion(view, version)) return null;
  const dropped = await hot.dropVersion(view, version, { release: true });
  if (!(await hot.claimVersion(view, version))) throw new Error(`the hot tier still marks version ${version} of ${view} as used after dropping its keys: another writer is loading it`);
  return dropped;
}

async function allocateVersion(db: Database, job: JobDefinition, runId: number): Promise<number> {
  const features = recordedFeatures(job);
  const [row] = await db.query<{ version: number }>(
    `INSERT INTO ${META_SCHEMA}.versions (view, version, run_id, state, features, entity_key)
     SELECT $1, coalesce(max(version), 0) + 1, $2, 'loading', $3::jsonb, $4 FROM ${META_SCHEMA}.versions WHERE view = $1
     RETURNING version`,
    [job.view, runId, features, job.entityKey],
  );
  const version = Number(row!.version);
  await db.query(`UPDATE ${META_SCHEMA}.runs SET version = $2 WHERE run_id = $1`, [runId, version]);
  return version;
}

/**
 * Loads the snapshot into Postgres and the hot tier at once (one after the
 * other where entities have duplicate rows): DuckDB writes the rows as CSV
 * into the COPY on one connection while another streams the hot-tier keys
 * and values it built, in bounded batches, to the hot tier.
 * Both run to their end (or stop at the other's failure) before this returns,
 * so a cleanup after a failure never races a write still in flight.
 */
async function streamRows(duck: DuckDBInstance, conn: DuckDBConnection, job: JobDefinition, version: number, table: string, ctx: SyncContext, hasDuplicates: boolean): Promise<{ postgres: number; hot: number; deleted: number; loadMs: Record<string, number> }> {
  let failed = false;
  let cause: unknown;
  const copyConn = await duck.connect();
  try {
    // The first failure is the cause; the other load then only stopped because of it.
    const fail = (error: unknown) => {
      if (!failed) cause = error;
      failed = true;
    };
    const started = Date.now();
    const took: { postgres?: number; hot_tier?: number } = {};
    const toPostgres = loadPostgres(copyConn, job, table, ctx, hasDuplicates).then(
      (value) => ((took.postgres = Date.now() - started), value),
      (error: unknown) => {
        fail(error);
        throw error;
      },
    );
    // With duplicates, each load ranks every entity's rows (a window over the whole source), and two such windows at
    // once outgrow DuckDB's memory limit where one fits (measured: 20M rows, two per entity, at 128 MB), so the hot
    // tier's load waits for Postgres's then.
    const hotMayStart = hasDuplicates ? toPostgres.then(() => undefined, () => undefined) : Promise.resolve();
    const [postgres, hot] = await Promise.allSettled([
      toPostgres,
      hotMayStart.then(() => (failed ? { written: 0, deleted: 0 } : loadHotTier(conn, job, version, ctx, hasDuplicates, () => failed))).then(
        (value) => ((took.hot_tier = Date.now() - started), value),
        (error: unknown) => {
          fail(error);
          copyConn.interrupt();
          throw error;
        },
      ),
    ]);
    if (failed) throw cause;
    if (hot.status === 'rejected') throw hot.reason;
    if (postgres.status === 'rejected') throw postgres.reason;
    if (postgres.value.duckdb !== postgres.value.stored) throw new Error(`DuckDB wrote ${postgres.value.duckdb} rows for Postgres but COPY stored ${postgres.value.stored}; nothing was published`);
    return { postgres: postgres.value.stored, hot: hot.value.written, deleted: hot.value.deleted, loadMs: took };
  } finally {
    copyConn.closeSync();
  }
}

async function loadPostgres(conn: DuckDBConnection, job: JobDefinition, table: string, ctx: SyncContext, hasDuplicates: boolean): Promise<{ duckdb: number; stored: number }> {
  const copy = await ctx.db.openCopy(table, ['entity_id', 'event_time', ...job.features.map((f) => f.name)]);
  let duckdb: number;
  try {
    duckdb = await pipeCsv(conn, copySql(job, hasDuplicates, false), copy);
  } catch (error) {
    await copy.abort(error as Error);
    throw error;
  }
  return { duckdb, stored: await copy.finish() };
}

/** Bytes per buffer the hot-tier values are written into; buffers are reused once their batch is written. */
const SLAB_BYTES = 1 << 20;

/**
 * Streams the hot-tier keys and values DuckDB built into the hot tier, a few
 * batches in flight; counts deleted entities too. Values are written into a
 * few reused buffers rather than fresh ones per chunk: allocating (and
 * garbage-collecting) a buffer per chunk cost more CPU and resident memory
 * than anything else in this loop. HotTier.set does not keep the buffers past
 * its promise, so a batch's buffers are free again once its write settled.
 */
async function loadHotTier(conn: DuckDBConnection, job: JobDefinition, version: number, ctx: SyncContext, hasDuplicates: boolean, stopped: () => boolean): Promise<{ written: number; deleted: number }> {
  const inFlight: Promise<void>[] = [];
  let written = 0;
  let deleted = 0;
  let entries: [string, Buffer][] = [];
  const encoder = new HotRowEncoder(hotColumns(job).map((c) => c.type));
  const free: Buffer[] = [];
  let slabs: Buffer[] = [];
  let slab: Buffer | undefined;
  let at = 0;
  const room = (bytes: number) => {
    if (slab && at + bytes <= slab.length) return;
    slab = bytes <= SLAB_BYTES ? (free.pop() ?? Buffer.allocUnsafe(SLAB_BYTES)) : Buffer.allocUnsafe(bytes);
    slabs.push(slab);
    at = 0;
  };
  const flush = async () => {
    if (entries.length === 0) return;
    const batch = entries;
    const used = slabs;
    entries = [];
    slabs = [];
    slab = undefined;
    const write = ctx.hot.set(batch).then(() => void (written += batch.length));
    // Whatever the outcome, the batch is done with its buffers.
    const settled = write.finally(() => free.push(...used.filter((b) => b.length === SLAB_BYTES)));
    settled.catch(() => undefined); // handled when awaited; keeps an early failure from being "unhandled"
    inFlight.push(settled);
    if (inFlight.length >= HOT_WRITES_IN_FLIGHT) await inFlight.shift();
  };
  try {
    const result = await conn.stream(hotSql(job, hasDuplicates, hotKeyPrefix(job.view, version)));
    for (;;) {
      if (stopped()) throw new Error('the Postgres load failed, so the hot-tier load stopped');
      const chunk = await result.fetchChunk();
      if (!chunk || chunk.rowCount === 0) break;
      const last = chunk.columnCount - 1;
      const texts = chunk.getColumnVector(0).toArray();
      const deletions = chunk.getColumnVector(last).toArray();
      const columns = Array.from({ length: last - 1 }, (_, c) => valueColumn(chunk.getColumnVector(c + 1)));
      // In a snapshot, an entity whose latest row is a deletion is simply absent.
      for (const gone of deletions) if (gone) deleted++;
      room(encoder.bytesNeeded(texts));
      at = encoder.encode(texts, deletions, columns, entries, slab!, at);
      if (entries.length >= ctx.batchRows) await flush();
    }
    await flush();
    await Promise.all(inFlight);
    return { written, deleted };
  } catch (error) {
    await Promise.allSettled(inFlight);
    throw error;
  }
}

async function publishVersion(tx: Queryable, runId: number, view: string, version: number, watermark: string | null, rows: number): Promise<void> {
  const loaded = await tx.query(
    `UPDATE ${META_SCHEMA}.versions SET state = 'published', published_at = now(), as_of = $3, row_count = $4 WHERE view = $1 AND version = $2 AND state = 'loading' RETURNING version`,
    [view, version, watermark, rows],
  );
  // Only a version still loading is published: another run reclaimed it if this run lost its job lock.
  if (loaded.length !== 1) throw superseded(runId, `its version ${version} was reclaimed`);
  await tx.query(
    `INSERT INTO ${META_SCHEMA}.views (view, current_version, previous_version, switched_at) VALUES ($1, $2, NULL, now())
     ON CONFLICT (view) DO UPDATE SET previous_version = ${META_SCHEMA}.views.current_version, current_version = EXCLUDED.current_version, switched_at = now()`,
    [view, version],
  );
}

/**
 * A run's lock on its job can be lost mid-run (the lock's database session
 * killed by an idle timeout or a network reset), and then another run may
 * start and close this one as abandoned. So the run record is closed only if
 * it is still running, in the same transaction as the publish: a superseded
 * run publishes nothing and fails, naming why.
 */
class RunSupersededError extends Error {
  override name = 'RunSupersededError';
}

function superseded(runId: number, what?: string): RunSupersededError {
  return new RunSupersededError(`run ${runId} was closed by another run of its job while it ran (this run's job lock was lost${what ? `; ${what}` : ''}); nothing of this run was published`);
}

async function closeRun(db: Queryable, runId: number, outcome: RunOutcome): Promise<void> {
  if (!(await finishRun(db, runId, outcome))) throw superseded(runId);
}

async function discardVersion(view: string, version: number, db: Database, hot: HotTier): Promise<number> {
  await db.query(`DROP TABLE IF EXISTS ${versionTable(view, version)}`);
  const keys = await hot.dropVersion(view, version);
  await db.query(`UPDATE ${META_SCHEMA}.versions SET state = 'dropped' WHERE view = $1 AND version = $2`, [view, version]);
  return keys;
}

export interface ReclaimedVersion {
  readonly version: number;
  readonly hot_keys: number;
}

/** Drops published versions older than the retained ones. */
export async function reclaimOldVersions(view: string, db: Database, hot: HotTier): Promise<ReclaimedVersion[]> {
  const rows = await db.query<{ version: number }>(
    `SELECT ver.version FROM ${META_SCHEMA}.versions ver JOIN ${META_SCHEMA}.views v ON v.view = ver.view
      WHERE ver.view = $1 AND ver.state = 'published'
        AND ver.version <> v.current_version AND ver.version IS DISTINCT FROM v.previous_version
      ORDER BY ver.version`,
    [view],
  );
  return discardVersions(view, rows, db, hot);
}

/** Discards each of the versions in turn, saying what each freed. */
async function discardVersions(view: string, rows: readonly { version: number }[], db: Database, hot: HotTier): Promise<ReclaimedVersion[]> {
  const reclaimed: ReclaimedVersion[] = [];
  for (const { version } of rows) reclaimed.push({ version: Number(version), hot_keys: await discardVersion(view, Number(version), db, hot) });
  return reclaimed;
}

/**
 * Frees everything of a view whose definition was removed: every stored
 * version's table and hot-tier keys, then its row in the views table, under
 * the job's lock (so no run of it is in progress). Run records and rejects
 * stay, as history. Undefined when the lock is taken.
 */
export async function dropView(view: string, db: Database, hot: HotTier): Promise<ReclaimedVersion[] | undefined> {
  const locked = await db.withAdvisoryLock(jobLockKey(view), async () => {
    const rows = await db.query<{ version: number }>(`SELECT version FROM ${META_SCHEMA}.versions WHERE view = $1 AND state <> 'dropped' ORDER BY version`, [view]);
    // Readers first: once the row is gone no process serves the view, whatever is dropped next.
    await db.query(`DELETE FROM ${META_SCHEMA}.views WHERE view = $1`, [view]);
    return discardVersions(view, rows, db, hot);
  });
  return locked.acquired ? locked.value : undefined;
}

/** Closes runs and versions a dead process left behind; called holding the job's lock. */
async function reclaimDeadRuns(view: string, db: Database, hot: HotTier): Promise<ReclaimedVersion[]> {
  await db.query(
    `UPDATE ${META_SCHEMA}.runs SET status = 'abandoned', finished_at = now(),
            error = coalesce(error, 'the process running it stopped before the run finished; nothing of it was published')
      WHERE job = $1 AND status = 'running'`,
    [view],
  );
  const rows = await db.query<{ version: number }>(`SELECT version FROM ${META_SCHEMA}.versions WHERE view = $1 AND state = 'loading'`, [view]);
  return discardVersions(view, rows, db, hot);
}
