// Owns the metadata Postgres keeps about views, versions and sync runs: the
// schema, and every statement that reads or changes it. Postgres is the source
// of truth for which version is current; readers and the hot tier follow it.
import type { FeatureType } from '../jobs/definition.js';
import type { Database, Queryable } from './database.js';
import { quoteIdent } from './database.js';

export const META_SCHEMA = 'featurestore';
export const DATA_SCHEMA = 'featurestore_data';

const SCHEMA_SQL = `
CREATE SCHEMA IF NOT EXISTS ${META_SCHEMA};
CREATE SCHEMA IF NOT EXISTS ${DATA_SCHEMA};
CREATE TABLE IF NOT EXISTS ${META_SCHEMA}.runs (
  run_id       bigserial PRIMARY KEY,
  job          text NOT NULL,
  version      bigint,
  trigger      text NOT NULL,
  status       text NOT NULL CHECK (status IN ('running', 'succeeded', 'failed', 'abandoned', 'skipped')),
  started_at   timestamptz NOT NULL DEFAULT now(),
  finished_at  timestamptz,
  rows_read    bigint,
  rows_written bigint,
  watermark    timestamptz,
  error        text,
  details      jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX IF NOT EXISTS runs_job_started ON ${META_SCHEMA}.runs (job, run_id DESC);
ALTER TABLE ${META_SCHEMA}.runs ADD COLUMN IF NOT EXISTS scheduled_for timestamptz;
CREATE UNIQUE INDEX IF NOT EXISTS runs_tick_once ON ${META_SCHEMA}.runs (job, scheduled_for) WHERE scheduled_for IS NOT NULL AND status IN ('running', 'succeeded');
CREATE TABLE IF NOT EXISTS ${META_SCHEMA}.rejects (
  run_id      bigint NOT NULL,
  job         text NOT NULL,
  entity_id   text,
  column_name text NOT NULL,
  reason      text NOT NULL,
  created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS rejects_run ON ${META_SCHEMA}.rejects (run_id);
CREATE TABLE IF NOT EXISTS ${META_SCHEMA}.versions (
  view         text NOT NULL,
  version      bigint NOT NULL,
  run_id       bigint NOT NULL,
  state        text NOT NULL CHECK (state IN ('loading', 'published', 'dropped')),
  features     jsonb NOT NULL,
  as_of        timestamptz,
  row_count    bigint,
  created_at   timestamptz NOT NULL DEFAULT now(),
  published_at timestamptz,
  PRIMARY KEY (view, version)
);
CREATE TABLE IF NOT EXISTS ${META_SCHEMA}.api_keys (
  key_id     text PRIMARY KEY,
  name       text NOT NULL,
  hash       text NOT NULL,
  views      text[] NOT NULL,
  rate_per_second double precision,
  burst      integer,
  created_at timestamptz NOT NULL DEFAULT now(),
  revoked_at timestamptz
);
CREATE TABLE IF NOT EXISTS ${META_SCHEMA}.views (
  view             text PRIMARY KEY,
  current_version  bigint NOT NULL,
  previous_version bigint,
  switched_at      timestamptz NOT NULL
);
`;

/** The channel on which Postgres announces every switch of a view's current version (payload: "<view> <generation>"). */
export const VERSIONS_CHANNEL = 'featurestore_versions';

// Every switch of readers (a publish or a rollback, by any process or tool,
// whatever its code version) gets a per-view generation that only grows, and
// announces itself on commit. Readers order versions by generation, not by
// version number, since a rollback makes an older version current again; and
// a replica that shows generation G for a view has replayed that switch's
// commit and so everything written before it, the version's table included.
// Kept in triggers so no writer can switch readers without both.
/** Columns added since the tables were first made: [table, column, type]. */
const ADDED_COLUMNS: readonly (readonly [string, string, string])[] = [
  ['views', 'generation', 'bigint NOT NULL DEFAULT 1'],
  // The entity key column a version was loaded by (null for versions from before it was recorded).
  ['versions', 'entity_key', 'text'],
];
const SWITCH_SQL = [
  `CREATE OR REPLACE FUNCTION ${META_SCHEMA}.views_next_generation() RETURNS trigger LANGUAGE plpgsql AS $$
   BEGIN
     NEW.generation := OLD.generation + 1;
     RETURN NEW;
   END $$`,
  `CREATE OR REPLACE FUNCTION ${META_SCHEMA}.views_announce() RETURNS trigger LANGUAGE plpgsql AS $$
   BEGIN
     PERFORM pg_notify('${VERSIONS_CHANNEL}', NEW.view || ' ' || NEW.generation);
     RETURN NULL;
   END $$`,
  `CREATE OR REPLACE TRIGGER views_next_generation BEFORE UPDATE ON ${META_SCHEMA}.views FOR EACH ROW EXECUTE FUNCTION ${META_SCHEMA}.views_next_generation()`,
  `CREATE OR REPLACE TRIGGER views_announce AFTER INSERT OR UPDATE ON ${META_SCHEMA}.views FOR EACH ROW EXECUTE FUNCTION ${META_SCHEMA}.views_announce()`,
];

/** Creates what is missing; safe to run from several processes at once. */
export async function ensureSchema(db: Database): Promise<void> {
  await db.transaction(async (tx) => {
    await tx.query(`SELECT pg_advisory_xact_lock(hashtextextended('featurestore:schema', 0))`);
    for (const statement of SCHEMA_SQL.split(';').map((s) => s.trim()).filter(Boolean)) {
      await tx.query(statement);
    }
    // ALTER TABLE locks the table exclusively (on replicas too) even when the column exists: only when it is missing.
    for (const [table, name, type] of ADDED_COLUMNS) {
      const [column] = await tx.query(`SELECT 1 FROM information_schema.columns WHERE table_schema = '${META_SCHEMA}' AND table_name = $1 AND column_name = $2`, [table, name]);
      if (!column) await tx.query(`ALTER TABLE ${META_SCHEMA}.${table} ADD COLUMN IF NOT EXISTS ${name} ${type}`);
    }
    for (const statement of SWITCH_SQL) await tx.query(statement);
  });
}

/** The fully qualified table that holds one version of a view. */
export function versionTable(view: string, version: number): string {
  return `${DATA_SCHEMA}.${quoteIdent(`${view}__v${version}`)}`;
}

export interface VersionFeature {
  readonly name: string;
  readonly type: FeatureType;
}

/** What readers need to serve one published version; resolved once per version, not per request. */
export interface PublishedVersion {
  readonly view: string;
  readonly version: number;
  /** Which switch of the view's readers made this version current; grows with every publish and rollback. */
  readonly generation: number;
  readonly features: readonly VersionFeature[];
  /** Newest event time in the version (ISO 8601, UTC, microseconds), or null for an empty version. */
  readonly asOf: string | null;
  readonly asOfMs: number | null;
  readonly rowCount: number;
  readonly publishedAt: Date;
}

type CatalogRow = {
  view: string;
  version: number;
  generation: number;
  features: VersionFeature[] | string;
  as_of: string | null;
  row_count: number;
  published_at: Date | string;
};

/** The one text form of times we store and serve: ISO 8601 in UTC with microseconds. */
export const isoTimeSql = (column: string) => `to_char(${column} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')`;

const toDate = (value: Date | string) => (value instanceof Date ? value : new Date(value));

export async function readPublishedVersions(db: Queryable): Promise<PublishedVersion[]> {
  const rows = await db.query<CatalogRow>(
    `SELECT v.view, v.current_version AS version, v.generation, ver.features, ${isoTimeSql('ver.as_of')} AS as_of, ver.row_count, ver.published_at
       FROM ${META_SCHEMA}.views v
       JOIN ${META_SCHEMA}.versions ver ON ver.view = v.view AND ver.version = v.current_version`,
  );
  return rows.map((row) => ({
    view: row.view,
    version: Number(row.version),
    generation: Number(row.generation),
    features: typeof row.features === 'string' ? (JSON.parse(row.features) as VersionFeature[]) : row.features,
    asOf: row.as_of,
    asOfMs: row.as_of === null ? null : Date.parse(row.as_of),
    rowCount: Number(row.row_count),
    publishedAt: toDate(row.published_at),
  }));
}

export type RunStatus = 'running' | 'succeeded' | 'failed' | 'abandoned' | 'skipped';
export type RunTrigger = 'schedule' | 'startup' | 'manual' | 'rollback';

export interface RunRecord {
  readonly runId: number;
  readonly job: string;
  readonly version: number | null;
  readonly trigger: RunTrigger;
  readonly status: RunStatus;
  readonly startedAt: Date;
  readonly finishedAt: Date | null;
  readonly rowsRead: number | null;
  readonly rowsWritten: number | null;
  readonly watermark: Date | null;
  readonly error: string | null;
  readonly details: Record<string, unknown>;
  /** Scheduled runs (and their skips): the tick they were for, which runs at most once across processes. */
  readonly scheduledFor: Date | null;
}

type RunRow = {
  run_id: number;
  job: string;
  version: number | null;
  trigger: RunTrigger;
  status: RunStatus;
  started_at: Date | string;
  finished_at: Date | string | null;
  rows_read: number | null;
  rows_written: number | null;
  watermark: Date | string | null;
  error: string | null;
  details: Record<string, unknown> | string;
  scheduled_for: Date | string | null;
};

function toRunRecord(row: RunRow): RunRecord {
  return {
    runId: Number(row.run_id),
    job: row.job,
    version: row.version === null ? null : Number(row.version),
    trigger: row.trigger,
    status: row.status,
    startedAt: toDate(row.started_at),
    finishedAt: row.finished_at === null ? null : toDate(row.finished_at),
    rowsRead: row.rows_read === null ? null : Number(row.rows_read),
    rowsWritten: row.rows_written === null ? null : Number(row.rows_written),
    watermark: row.watermark === null ? null : toDate(row.watermark),
    error: row.error,
    details: typeof row.details === 'string' ? (JSON.parse(row.details) as Record<string, unknown>) : row.details,
    scheduledFor: row.scheduled_for === null || row.scheduled_for === undefined ? null : toDate(row.scheduled_for),
  };
}

export async function startRun(db: Queryable, job: string, trigger: RunTrigger, scheduledFor?: string): Promise<number> {
  const [row] = await db.query<{ run_id: number }>(
    `INSERT INTO ${META_SCHEMA}.runs (job, trigger, status, scheduled_for) VALUES ($1, $2, 'running', $3) RETURNING run_id`,
    [job, trigger, scheduledFor ?? null],
  );
  return Number(row!.run_id);
}

/** A run that never started because another was in progress (or its tick had already run). */
export async function recordSkippedRun(db: Queryable, job: string, trigger: RunTrigger, reason: string, scheduledFor?: string): Promise<number> {
  const [row] = await db.query<{ run_id: number }>(
    `INSERT INTO ${META_SCHEMA}.runs (job, trigger, status, finished_at, error, scheduled_for) VALUES ($1, $2, 'skipped', now(), $3, $4) RETURNING run_id`,
    [job, trigger, reason, scheduledFor ?? null],
  );
  return Number(row!.run_id);
}

/**
 * The run that already took this tick of the job's schedule, if any (a skip
 * does not take it). Asked holding the job's lock, so no other process can
 * take the tick between the question and the new run's record.
 */
export async function runOfTick(db: Queryable, job: string, scheduledFor: string): Promise<{ runId: number; status: RunStatus } | undefined> {
  const [row] = await db.query<{ run_id: number; status: RunStatus }>(
    `SELECT run_id, status FROM ${META_SCHEMA}.runs WHERE job = $1 AND scheduled_for = $2 AND status <> 'skipped' ORDER BY run_id LIMIT 1`,
    [job, scheduledFor],
  );
  return row ? { runId: Number(row.run_id), status: row.status } : undefined;
}

export interface RunOutcome {
  readonly status: Exclude<RunStatus, 'running' | 'skipped'>;
  readonly version?: number | null;
  readonly rowsRead?: number | null;
  readonly rowsWritten?: number | null;
  readonly watermark?: Date | null;
  readonly error?: string | null;
  readonly details?: Record<string, unknown>;
}

/** Closes a run; only a run still marked running is changed, so an outcome is written once. */
export async function finishRun(db: Queryable, runId: number, outcome: RunOutcome): Promise<boolean> {
  const rows = await db.query(
    `UPDATE ${META_SCHEMA}.runs
        SET status = $2, finished_at = now(), version = coalesce($3, version), rows_read = coalesce($4, rows_read),
            rows_written = coalesce($5, rows_written), watermark = coalesce($6, watermark), error = $7,
            details = details || $8::jsonb
      WHERE run_id = $1 AND status = 'running'
      RETURNING run_id`,
    [
      runId,
      outcome.status,
      outcome.version ?? null,
      outcome.rowsRead ?? null,
      outcome.rowsWritten ?? null,
      outcome.watermark ?? null,
      outcome.error ?? null,
      JSON.stringify(outcome.details ?? {}),
    ],
  );
  return rows.length === 1;
}

export async function getRun(db: Queryable, runId: number): Promise<RunRecord | undefined> {
  const [row] = await db.query<RunRow>(`SELECT * FROM ${META_SCHEMA}.runs WHERE run_id = $1`, [runId]);
  return row ? toRunRecord(row) : undefined;
}

export async function listRuns(db: Queryable, job: string, limit: number): Promise<RunRecord[]> {
  const rows = await db.query<RunRow>(`SELECT * FROM ${META_SCHEMA}.runs WHERE job = $1 ORDER BY run_id DESC LIMIT $2`, [job, limit]);
  return rows.map(toRunRecord);
}

export class RollbackError extends Error {
  override name = 'RollbackError';
}

/** Another run of the job holds its lock, so the rollback did not run (the CLI exits 3, as for a skipped sync). */
export class JobBusyError extends RollbackError {
  override name = 'JobBusyError';
}

/**
 * Switches readers back to the view's previous version in one commit and
 * records it as a run (trigger "rollback"). The version rolled away from is
 * kept until the next publish reclaims it.
 */
export async function rollbackView(db: Database, view: string, lockKey: string): Promise<{ from: number; to: number; runId: number }> {
  const locked = await db.withAdvisoryLock(lockKey, () =>
    db.transaction(async (tx) => {
      const [row] = await tx.query<{ current_version: number; previous_version: number | null }>(
        `SELECT current_version, previous_version FROM ${META_SCHEMA}.views WHERE view = $1 FOR UPDATE`,
        [view],
      );
      if (!row) throw new RollbackError(`view "${view}" has no published version to roll back`);
      const from = Number(row.current_version);
      if (row.previous_version === null) throw new RollbackError(`view "${view}" has no previous version to roll back to (version ${from} is the only one kept)`);
      const to = Number(row.previous_version);
      const [kept] = await tx.query<{ state: string }>(`SELECT state FROM ${META_SCHEMA}.versions WHERE view = $1 AND version = $2`, [view, to]);
      if (kept?.state !== 'published') throw new RollbackError(`version ${to} of view "${view}" is no longer stored; cannot roll back`);
      await tx.query(`UPDATE ${META_SCHEMA}.views SET current_version = $2, previous_version = NULL, switched_at = now() WHERE view = $1`, [view, to]);
      const [run] = await tx.query<{ run_id: number }>(
        `INSERT INTO ${META_SCHEMA}.runs (job, version, trigger, status, finished_at, details)
         VALUES ($1, $2, 'rollback', 'succeeded', now(), $3::jsonb) RETURNING run_id`,
        [view, to, JSON.stringify({ rolled_back_from: from })],
      );
      return { from, to, runId: Number(run!.run_id) };
    }),
  );
  if (!locked.acquired) throw new JobBusyError(`a sync of "${view}" is running; roll back after it ends`);
  return locked.value;
}

/** The watermark of the job's last successful run. */
export async function lastWatermark(db: Queryable, job: string): Promise<string | null> {
  const [row] = await db.query<{ watermark: string | null }>(
    `SELECT ${isoTimeSql('watermark')} AS watermark FROM ${META_SCHEMA}.runs WHERE job = $1 AND status = 'succeeded' AND trigger <> 'rollback' ORDER BY run_id DESC LIMIT 1`,
    [job],
  );
  return row?.watermark ?? null;
}
