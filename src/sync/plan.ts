// Owns the SQL the sync runs in DuckDB: the contract check of the source's
// columns, the projection to the view's declared types, the data checks, and the
// rows to load: typed columns that DuckDB writes as CSV for Postgres COPY (no
// row passes through JavaScript), and for the hot tier each row's key and text
// in one string plus its numbers as doubles, which the encoder copies without
// formatting.
import type { EpochUnit, FeatureDefinition, FeatureType, JobDefinition } from '../jobs/definition.js';
import { ENTITY_ID_PATTERN } from '../jobs/definition.js';
import { quoteIdent } from '../stores/database.js';
import { hotRowsSql, hotValuePostgresSql, type HotColumn } from '../stores/hot-value.js';
import { isoTimeSql } from '../stores/metadata.js';

/** A failure of the data or its contract: retrying will not help, fixing the data will. */
export class SyncDataError extends Error {
  override name = 'SyncDataError';
  constructor(
    message: string,
    readonly details: Record<string, unknown> = {},
  ) {
    super(message);
  }
}

const INTEGER_TYPES = ['TINYINT', 'SMALLINT', 'INTEGER', 'BIGINT', 'HUGEINT', 'UTINYINT', 'USMALLINT', 'UINTEGER', 'UBIGINT', 'UHUGEINT'];
const TIMESTAMP_TYPES = ['TIMESTAMP', 'TIMESTAMP WITH TIME ZONE', 'TIMESTAMP_S', 'TIMESTAMP_MS', 'TIMESTAMP_NS', 'DATE'];

/** Source column types each declared type accepts without losing meaning. */
function accepts(type: FeatureType, sourceType: string): boolean {
  switch (type) {
    case 'integer':
      return INTEGER_TYPES.includes(sourceType);
    case 'double':
      return INTEGER_TYPES.includes(sourceType) || sourceType === 'FLOAT' || sourceType === 'DOUBLE' || sourceType.startsWith('DECIMAL');
    case 'string':
      return sourceType === 'VARCHAR';
    case 'boolean':
      return sourceType === 'BOOLEAN';
    case 'timestamp':
      return TIMESTAMP_TYPES.includes(sourceType);
  }
}

const DUCK_TYPE: Record<FeatureType, string> = {
  string: 'VARCHAR',
  integer: 'BIGINT',
  double: 'DOUBLE',
  boolean: 'BOOLEAN',
  timestamp: 'TIMESTAMPTZ',
};

export const PG_TYPE: Record<FeatureType, string> = {
  string: 'text',
  integer: 'bigint',
  double: 'double precision',
  boolean: 'boolean',
  timestamp: 'timestamptz',
};

/** ISO 8601 in UTC with microseconds and an explicit Z: the one time format we store and serve. */
export const ISO_UTC_DUCK = `'%Y-%m-%dT%H:%M:%S.%fZ'`;

export const MAX_SAFE_INTEGER = Number.MAX_SAFE_INTEGER;

export function sqlString(text: string): string {
  return `'${text.replaceAll("'", "''")}'`;
}

export interface SourceColumn {
  readonly name: string;
  readonly type: string;
}

const NUMERIC_TYPES = [...INTEGER_TYPES, 'FLOAT', 'DOUBLE'];
const isNumeric = (t: string) => NUMERIC_TYPES.includes(t) || t.startsWith('DECIMAL');

/**
 * Compares the declared contract with the columns the source (after the
 * transform) really has. Throws naming each missing or mistyped column;
 * returns the source columns the contract ignores.
 */
export function checkContract(job: JobDefinition, columns: readonly SourceColumn[]): { ignoredColumns: string[] } {
  const byName = new Map(columns.map((column) => [column.name, column.type]));
  const problems: string[] = [];
  const expect = (column: string, role: string, ok: (type: string) => boolean, expected: string) => {
    const found = byName.get(column);
    if (found === undefined) problems.push(`${role} column "${column}" is missing from the source (expected ${expected})`);
    else if (!ok(found)) problems.push(`${role} column "${column}" has type ${found}, expected ${expected}`);
  };
  const timeColumn = (column: string, role: string, unit: EpochUnit | undefined, declare: string) => {
    if (unit) return expect(column, role, isNumeric, `epoch ${UNIT_NAMES[unit]} as a number (the declared unit)`);
    const found = byName.get(column);
    if (found !== undefined && isNumeric(found)) {
      problems.push(`${role} column "${column}" holds ${found} numbers; if they are epoch times, declare their unit (${declare})`);
      return;
    }
    expect(column, role, (t) => TIMESTAMP_TYPES.includes(t), 'TIMESTAMP, TIMESTAMP WITH TIME ZONE or DATE');
  };
  expect(job.entityKey, 'entity key', (t) => t === 'VARCHAR' || INTEGER_TYPES.includes(t), 'VARCHAR or an integer type');
  if (job.deleteColumn) expect(job.deleteColumn, 'delete-flag', (t) => t === 'BOOLEAN', 'BOOLEAN');
  timeColumn(job.eventTime, 'event-time', job.eventTimeUnit, `event_time: { column: ${job.eventTime}, unit: s | ms | us }`);
  for (const feature of job.features) {
    if (feature.type === 'timestamp') timeColumn(feature.name, 'feature', feature.unit, `features.${feature.name}.unit: s | ms | us`);
    else expect(feature.name, 'feature', (t) => accepts(feature.type, t), `${feature.type} (${describeAccepted(feature.type)})`);
  }
  if (problems.length) {
    const available = columns.map((c) => `${c.name} ${c.type}`).join(', ');
    throw new SyncDataError(`the source does not match the contract of view "${job.view}": ${problems.join('; ')}. Source columns: ${available}`, {
      contract_violations: problems,
    });
  }
  const declared = new Set([job.entityKey, job.eventTime, ...job.features.map((f) => f.name), ...(job.deleteColumn ? [job.deleteColumn] : [])]);
  return { ignoredColumns: columns.map((c) => c.name).filter((name) => !declared.has(name)) };
}

/**
 * A published view's contract may grow (new features) but never silently
 * break: a removed or retyped feature, or another entity key (whose ids would
 * be mixed with the old ones, or stop finding them), must be published as a
 * new view.
 */
export function checkCompatibility(
  job: JobDefinition,
  previous: { readonly features: readonly { name: string; type: FeatureType }[]; readonly entityKey: string | null },
  incremental: boolean,
): void {
  const published = previous.features;
  const now = new Map(job.features.map((f) => [f.name, f.type]));
  const breaks = published.flatMap((f) => {
    const type = now.get(f.name);
    if (type === undefined) return [`feature "${f.name}" was removed`];
    if (type !== f.type) return [`feature "${f.name}" changed type from ${f.type} to ${type}`];
    return [];
  });
  if (previous.entityKey !== null && previous.entityKey !== job.entityKey) {
    breaks.push(
      `the entity key changed from column "${previous.entityKey}" to "${job.entityKey}" (if only the column's name changed and the ids are the same, keep entity_key: ${previous.entityKey} and rename the column in a transform: SELECT *, ${quoteIdent(job.entityKey)} AS ${quoteIdent(previous.entityKey)} FROM source)`,
    );
  }
  // An incremental run carries over the entities it does not read, with no value for a feature added since: a
  // contract that says the feature is never null would be broken for each of them.
  if (incremental) {
    const before = new Set(published.map((f) => f.name));
    for (const f of job.features) {
      if (!f.nullable && !before.has(f.name)) {
        breaks.push(`feature "${f.name}" is new and declared nullable: false, but an incremental run keeps the entities it does not read with no value for it (declare it nullable: true)`);
      }
    }
  }
  if (breaks.length) {
    throw new SyncDataError(
      `the contract of view "${job.view}" breaks what its callers rely on: ${breaks.join('; ')}. Publish the new contract as a new view (for example "${job.view}_v2") and mark this one deprecated, or restore the feature`,
      { contract_breaks: breaks },
    );
  }
}

/** A feature's rules as a version records them (absent in versions recorded before the rules were). */
export interface RecordedRules {
  readonly name: string;
  readonly nullable?: boolean;
  readonly min?: number;
  readonly max?: number;
  readonly allowed?: readonly (string | number | boolean)[];
}

/** What a version records of each feature: name, type and rules. */
export function recordedFeatures(job: JobDefinition): string {
  return JSON.stringify(job.features.map((f) => ({ name: f.name, type: f.type, nullable: f.nullable, min: f.min, max: f.max, allowed: f.allowed })));
}

/**
 * Rules the job declares now that the published version's values were not
 * held to (a feature made non-null, a min raised, a max lowered, a value no
 * longer allowed; any rule, for a version that recorded none, `unknown`): an
 * incremental run carries over the entities it does not read, so their stored
 * values must be checked against these. Each is a Postgres condition a
 * breaking row meets.
 */
export interface TightenedRule {
  readonly feature: string;
  /** Postgres condition a row breaking the rule meets. */
  readonly broken: string;
  readonly reason: string;
  /** The published version recorded no rules, so this one may not be new. */
  readonly unknown: boolean;
}

export function tightenedRules(published: readonly RecordedRules[], job: JobDefinition): TightenedRule[] {
  const before = new Map(published.map((f) => [f.name, f]));
  const rules: TightenedRule[] = [];
  for (const f of job.features) {
    const old = before.get(f.name);
    if (!old) continue;
    const known = old.nullable !== undefined;
    const col = quoteIdent(f.name);
    const add = (broken: string, reason: string) => rules.push({ feature: f.name, broken, reason, unknown: !known });
    if (!f.nullable && (!known || old.nullable)) add(`${col} IS NULL`, 'is null, and the contract now says nullable: false');
    if (f.min !== undefined && (!known || old.min === undefined || f.min > old.min)) add(`${col} < ${f.min}`, `is below the minimum ${f.min}`);
    if (f.max !== undefined && (!known || old.max === undefined || f.max < old.max)) add(`${col} > ${f.max}`, `is above the maximum ${f.max}`);
    if (f.allowed && (!known || !old.allowed || old.allowed.some((v) => !f.allowed!.includes(v)))) add(`${col} NOT IN (${f.allowed.map(literal).join(', ')})`, 'is not an allowed value');
  }
  return rules;
}

/** Fails when stored entities an incremental run carried over break rules the job tightened since (tightenedRules). */
export function judgeCarriedRows(job: JobDefinition, broken: { feature: string; reason: string; count: number; example: string; value: string | null }[]): void {
  if (!broken.length) return;
  const problems = broken.map((b) => `${b.count} × ${b.feature}: ${b.reason} (e.g. entity ${b.example}: ${b.value ?? 'null'})`);
  throw new SyncDataError(
    `stored entities of view "${job.view}" break rules its definition tightened since the published version: ${problems.join('; ')}. An incremental run keeps the entities it does not read as they are: send corrected rows with a newer event time (a row of the same event time replaces the stored one only if its values are greater, as duplicates resolve; rows older than the next run's window need npm run ctl -- backfill ${job.view} --from <instant>), or keep the old rule`,
    { carried_rule_breaks: problems },
  );
}

function describeAccepted(type: FeatureType): string {
  switch (type) {
    case 'integer':
      return 'an integer column';
    case 'double':
      return 'a floating-point, decimal or integer column';
    case 'string':
      return 'VARCHAR';
    case 'boolean':
      return 'BOOLEAN';
    case 'timestamp':
      return 'TIMESTAMP, TIMESTAMP WITH TIME ZONE or DATE';
  }
}

const UNIT_NAMES: Record<EpochUnit, string> = { s: 'seconds', ms: 'milliseconds', us: 'microseconds' };
const MICROS_PER_UNIT: Record<EpochUnit, number> = { s: 1_000_000, ms: 1_000, us: 1 };
/** Epoch times are accepted between these instants; in each unit the ranges are disjoint, so a wrong unit shows. */
export const EPOCH_FLOOR_SECONDS = 100_000_000; // 1973-03-03T09:46:40Z
export const EPOCH_CEILING_SECONDS = 7_258_118_400; // 2200-01-01T00:00:00Z
const EPOCH_WINDOW_TEXT = '1973-03-03 and 2200-01-01';
/** SQL: the time in `column` is outside the window epoch numbers are accepted in (one in the wrong unit lands there). */
const outsideEpochWindow = (column: string) => `epoch(${column}) NOT BETWEEN ${EPOCH_FLOOR_SECONDS} AND ${EPOCH_CEILING_SECONDS}`;

function timeExpression(column: string, unit: EpochUnit | undefined): string {
  if (!unit) return `CAST(t.${column} AS TIMESTAMPTZ)`;
  // Out-of-range numbers become NULL (and so a reject), never an overflow error: the scaling is done in DOUBLE, not
  // in the column's own integer type (INT32 seconds times a million overflows), and is exact for every epoch time up
  // to 2200 in microseconds (below 2^53).
  return `CAST(make_timestamp(TRY_CAST(round(CAST(t.${column} AS DOUBLE) * ${MICROS_PER_UNIT[unit]}) AS BIGINT)) AS TIMESTAMPTZ)`;
}

/** A feature's value cast to its contract type; NULL (never an error) where the source value does not fit it. */
function featureExpression(f: FeatureDefinition): string {
  const col = quoteIdent(f.name);
  if (f.type === 'timestamp') return timeExpression(col, f.unit);
  // An integer beyond BIGINT (UBIGINT, HUGEINT) must become a reject, not fail the whole run.
  return f.type === 'integer' ? `TRY_CAST(t.${col} AS BIGINT)` : `CAST(t.${col} AS ${DUCK_TYPE[f.type]})`;
}

/**
 * `projected`: the source cast to the contract, with the two fixed columns
 * first, then `__deleted` and `__unfit`: the reject ("column|reason") of the
 * first feature whose source value is there but could not be cast (an epoch
 * number no timestamp holds, which a unit switch to microseconds gives, or an
 * integer beyond 64 bits), so that such a value is a reject, not a silent null.
 */
export function projectionSql(job: JobDefinition): string {
  const unfit = job.features
    .filter((f) => f.unit || f.type === 'integer')
    .map((f) => {
      const col = quoteIdent(f.name);
      const reason = f.unit ? `is not an epoch time in ${UNIT_NAMES[f.unit]}` : `is beyond ±${MAX_SAFE_INTEGER}, which JSON clients cannot read exactly`;
      return `WHEN t.${col} IS NOT NULL AND ${featureExpression(f)} IS NULL THEN '${f.name}|${reason} (got ' || left(CAST(t.${col} AS VARCHAR), 80) || ')'`;
    });
  const columns = [
    `CAST(t.${quoteIdent(job.entityKey)} AS VARCHAR) AS entity_id`,
    `${timeExpression(quoteIdent(job.eventTime), job.eventTimeUnit)} AS event_time`,
    ...job.features.map((f) => `${featureExpression(f)} AS ${quoteIdent(f.name)}`),
    `${job.deleteColumn ? `coalesce(CAST(t.${quoteIdent(job.deleteColumn)} AS BOOLEAN), false)` : 'false'} AS __deleted`,
    `${unfit.length ? `CASE ${unfit.join(' ')} END` : 'CAST(NULL AS VARCHAR)'} AS __unfit`,
  ];
  return `SELECT ${columns.join(', ')} FROM transformed t`;
}

function epochColumns(job: JobDefinition): { name: string; unit: EpochUnit }[] {
  return [...(job.eventTimeUnit ? [{ name: job.eventTime, unit: job.eventTimeUnit }] : []), ...job.features.filter((f) => f.unit).map((f) => ({ name: f.name, unit: f.unit! }))];
}

/** Median of each epoch-number column, to tell a wrong unit from a few odd rows. */
export function epochMediansSql(job: JobDefinition): string | undefined {
  const columns = epochColumns(job);
  if (!columns.length) return undefined;
  return `SELECT ${columns.map((c) => `CAST(median(${quoteIdent(c.name)}) AS DOUBLE) AS ${quoteIdent(c.name)}`).join(', ')} FROM transformed`;
}

/** Fails the run when an epoch column's values sit in another unit's range than the declared one. */
export function judgeEpochUnits(job: JobDefinition, medians: Record<string, unknown>): void {
  const problems: string[] = [];
  for (const { name, unit } of epochColumns(job)) {
    const median = medians[name];
    if (median === null || median === undefined) continue;
    const inUnit = (u: EpochUnit) => {
      const seconds = Number(median) * (MICROS_PER_UNIT[u] / 1_000_000);
      return seconds >= EPOCH_FLOOR_SECONDS && seconds <= EPOCH_CEILING_SECONDS;
    };
    if (inUnit(unit)) continue;
    const likely = (Object.keys(UNIT_NAMES) as EpochUnit[]).find(inUnit);
    problems.push(
      likely
        ? `column "${name}" is declared in epoch ${UNIT_NAMES[unit]} but its values look like epoch ${UNIT_NAMES[likely]} (median ${median}); fix the source or declare unit: ${likely}`
        : `column "${name}" is declared in epoch ${UNIT_NAMES[unit]} but its median value ${median} is no time between ${EPOCH_WINDOW_TEXT} in any unit`,
    );
  }
  if (problems.length) throw new SyncDataError(`the time columns of view "${job.view}" do not fit their declared units: ${problems.join('; ')}`, { unit_mismatches: problems });
}

/**
 * SQL: a time outside years 1 to 9999, which ISO 8601 text (and so the
 * answer) holds with four digits: Postgres and DuckDB would write a year BC or
 * past 9999 differently, and the stores would disagree.
 */
const outsideYears = (column: string) => `(${column} < TIMESTAMPTZ '0001-01-01 00:00:00+00' OR ${column} >= TIMESTAMPTZ '10000-01-01 00:00:00+00')`;

const literal = (value: string | number | boolean) => (typeof value === 'string' ? sqlString(value) : String(value));
const shown = (col: string) => `left(CAST(${col} AS VARCHAR), 80)`;

/**
 * Each row's first broken rule as "column|reason", or NULL for a good row.
 * `now` is the run's one instant (ISO 8601): the checks and the loads each
 * evaluate these rules, and with DuckDB's now() (one per statement) a row near
 * the one-day bound could be counted a reject by the checks and loaded after.
 */
function rejectCase(job: JobDefinition, now: string): string {
  const pattern = sqlString(ENTITY_ID_PATTERN);
  const when: string[] = [
    `WHEN entity_id IS NULL THEN '${job.entityKey}|the entity key is null'`,
    `WHEN NOT regexp_full_match(entity_id, ${pattern}) THEN '${job.entityKey}|not a valid entity id (got "' || left(entity_id, 80) || '"); ids must match ${ENTITY_ID_PATTERN}'`,
    `WHEN event_time IS NULL THEN '${job.eventTime}|the event time is null${job.eventTimeUnit ? ` or not an epoch time in ${UNIT_NAMES[job.eventTimeUnit]}` : ''}'`,
    // Postgres and the hot tier would disagree on an infinite time (and JSON has none).
    `WHEN NOT isfinite(event_time) THEN '${job.eventTime}|the event time is infinite (got ' || ${shown('event_time')} || ')'`,
    `WHEN ${outsideYears('event_time')} THEN '${job.eventTime}|the event time is outside years 1 to 9999 (got ' || ${shown('event_time')} || ')'`,
    `WHEN event_time > ${sqlString(now)}::TIMESTAMPTZ + INTERVAL 1 DAY THEN '${job.eventTime}|the event time ' || strftime(event_time, ${ISO_UTC_DUCK}) || ' is more than a day in the future'`,
  ];
  if (job.eventTimeUnit) {
    when.push(`WHEN ${outsideEpochWindow('event_time')} THEN '${job.eventTime}|the epoch time is not between ${EPOCH_WINDOW_TEXT} (got ' || ${shown('event_time')} || ')'`);
  }
  // A deletion carries no features, so feature rules do not apply to it.
  const live = 'NOT __deleted AND ';
  when.push(`WHEN ${live}__unfit IS NOT NULL THEN __unfit`);
  for (const f of job.features) {
    const col = quoteIdent(f.name);
    const name = f.name;
    if (!f.nullable) when.push(`WHEN ${live}${col} IS NULL THEN '${name}|is null, and the contract says nullable: false'`);
    if (f.type === 'double') when.push(`WHEN ${live}NOT isfinite(${col}) THEN '${name}|is NaN or infinite, which JSON cannot carry'`);
    if (f.type === 'timestamp') {
      when.push(`WHEN ${live}NOT isfinite(${col}) THEN '${name}|is an infinite time, which JSON cannot carry (got ' || ${shown(col)} || ')'`);
      when.push(`WHEN ${live}${outsideYears(col)} THEN '${name}|is outside years 1 to 9999 (got ' || ${shown(col)} || ')'`);
    }
    if (f.type === 'integer') when.push(`WHEN ${live}abs(${col}) > ${MAX_SAFE_INTEGER} THEN '${name}|is beyond ±${MAX_SAFE_INTEGER}, which JSON clients cannot read exactly (got ' || ${shown(col)} || ')'`);
    if (f.type === 'string') when.push(`WHEN ${live}contains(${col}, chr(0)) THEN '${name}|contains a NUL character, which Postgres text cannot store'`);
    if (f.unit) when.push(`WHEN ${live}${outsideEpochWindow(col)} THEN '${name}|the epoch time is not between ${EPOCH_WINDOW_TEXT} (got ' || ${shown(col)} || ')'`);
    if (f.min !== undefined) when.push(`WHEN ${live}${col} < ${f.min} THEN '${name}|is below the minimum ${f.min} (got ' || ${shown(col)} || ')'`);
    if (f.max !== undefined) when.push(`WHEN ${live}${col} > ${f.max} THEN '${name}|is above the maximum ${f.max} (got ' || ${shown(col)} || ')'`);
    if (f.allowed) when.push(`WHEN ${live}${col} NOT IN (${f.allowed.map(literal).join(', ')}) THEN '${name}|is not an allowed value (got ' || ${shown(col)} || ')'`);
  }
  return `CASE ${when.join(' ')} END`;
}

/**
 * `checked`: the projected rows with the reason each broken row is rejected
 * for. `since` (incremental runs) keeps only rows from that instant on, and
 * rows whose event time is no time at all (null, or an epoch number outside
 * the sane window: one in the wrong unit lands in 1970), so that those are
 * rejected rather than skipped: a unit switch in new rows cannot vanish.
 */
export function checkedSql(job: JobDefinition, since: string | null, now: string): string {
  const insane = job.eventTimeUnit ? ` OR ${outsideEpochWindow('event_time')}` : '';
  const window = since ? ` WHERE event_time IS NULL OR event_time >= ${sqlString(since)}::TIMESTAMPTZ${insane}` : '';
  return `SELECT *, ${rejectCase(job, now)} AS reject FROM projected${window}`;
}

/**
 * `row_checks`: each row's entity, event time and reject reason, written once
 * so that the counts and the reject summaries below read three narrow columns
 * rather than the whole source again. DuckDB keeps it under its memory limit
 * (spilling to its temp directory). It is also what lets the distinct count
 * fit: done in the same pass as the checks, over every column of the source,
 * counting 10M entities among 20M rows ran out of a 128 MB limit (measured);
 * over this table it fits in 64 MB.
 */
export const rowChecksSql = (job: JobDefinition) => `CREATE TEMP TABLE row_checks AS SELECT entity_id, event_time, reject${job.deleteColumn ? ', __deleted' : ''} FROM checked`;
export const DROP_ROW_CHECKS_SQL = `DROP TABLE IF EXISTS row_checks`;

/**
 * One aggregate pass over `row_checks`: counts, duplicates and the watermark of
 * the rows that will load. The watermark is never later than the run: rows up
 * to a day ahead are accepted (clock skew), but one of them must not make the
 * version look fresher than it is, nor start the next incremental window
 * after rows that have yet to arrive.
 */
export const STATS_SQL = `SELECT
    count(*) AS rows,
    count(reject) AS rejected,
    count(DISTINCT entity_id) FILTER (WHERE reject IS NULL) AS entities,
    strftime(least(max(event_time) FILTER (WHERE reject IS NULL), now()), ${ISO_UTC_DUCK}) AS watermark
  FROM row_checks`;

/**
 * Entities a snapshot with deletions will hold: those whose winning row is
 * not a deletion (a deletion wins a tie, so an entity is gone when its latest
 * deletion is at least as new as its latest update). Needs `__deleted` in
 * row_checks (rowChecksSql with a delete column).
 */
export const LIVE_ENTITIES_SQL = `SELECT count(*) AS live FROM (
    SELECT max(event_time) FILTER (WHERE NOT __deleted) AS updated, max(event_time) FILTER (WHERE __deleted) AS deleted
      FROM row_checks WHERE reject IS NULL GROUP BY entity_id)
  WHERE updated IS NOT NULL AND (deleted IS NULL OR updated > deleted)`;

/** The commonest reasons, each with one example value: rows with different values but the same broken rule count together. */
export const REJECT_SUMMARY_SQL = `SELECT regexp_replace(reject, ' \\(got .*?\\)', '') AS reject, count(*) AS n, nullif(max(regexp_extract(reject, '\\(got .*?\\)')), '') AS example
  FROM row_checks WHERE reject IS NOT NULL GROUP BY 1 ORDER BY n DESC, 1 LIMIT 5`;

/** Rejected rows kept for inspection per run; all are counted. */
export const REJECT_SAMPLE_LIMIT = 1000;
export const REJECT_SAMPLE_SQL = `SELECT entity_id, split_part(reject, '|', 1) AS column_name, split_part(reject, '|', 2) AS reason FROM row_checks WHERE reject IS NOT NULL LIMIT ${REJECT_SAMPLE_LIMIT}`;

export interface RunStats {
  readonly rowsRead: number;
  readonly rejected: number;
  /** Distinct entities among the accepted rows: what the version will hold. */
  readonly entities: number;
  /** Accepted rows dropped because a later row of the same entity won. */
  readonly duplicates: number;
  readonly watermark: string | null;
}

export function toRunStats(row: Record<string, unknown>): RunStats {
  const rowsRead = Number(row.rows ?? 0);
  const rejected = Number(row.rejected ?? 0);
  const entities = Number(row.entities ?? 0);
  return { rowsRead, rejected, entities, duplicates: rowsRead - rejected - entities, watermark: (row.watermark as string | null) ?? null };
}

/** Fails when rejected rows pass the view's limit, naming the commonest reasons. */
export function judgeRejects(job: JobDefinition, stats: RunStats, summary: { reject: string; n: unknown; example: string | null }[]): void {
  if (stats.rejected === 0) return;
  const share = stats.rejected / stats.rowsRead;
  if (share <= job.maxRejectShare) return;
  const reasons = summary.map((r) => {
    const [column, reason] = r.reject.split('|');
    // The example is "(got …)".
    return `${Number(r.n)} × ${column}: ${reason}${r.example ? ` (e.g. ${r.example.slice(1)}` : ''}`;
  });
  throw new SyncDataError(
    `${stats.rejected} of ${stats.rowsRead} rows (${(share * 100).toFixed(2)}%) of view "${job.view}" broke its constraints; the limit (max_reject_share) is ${(job.maxRejectShare * 100).toFixed(2)}%. Commonest: ${reasons.join('; ')}`,
    { reject_reasons: reasons },
  );
}

/**
 * Fails an empty snapshot, or one that shrank past the view's limit, unless
 * forced. `entities` is what the snapshot will hold: deleted entities do not count.
 */
export function judgeSnapshot(job: JobDefinition, entities: number, previous: { version: number; rows: number } | undefined, force: boolean): void {
  if (force) return;
  const deletions = job.deleteColumn ? ' (entities whose latest row is a deletion do not count)' : '';
  if (entities === 0) throw new SyncDataError(`the snapshot of view "${job.view}" has no rows to publish${deletions}; fix the source, or force the run to publish an empty view`);
  if (!previous || previous.rows === 0) return;
  const drop = (previous.rows - entities) / previous.rows;
  if (drop > job.maxRowDrop) {
    throw new SyncDataError(
      `the snapshot of view "${job.view}" has ${entities} entities${deletions}, ${(drop * 100).toFixed(1)}% fewer than the ${previous.rows} of version ${previous.version}; the limit (max_row_drop) is ${(job.maxRowDrop * 100).toFixed(1)}%. Force the run if the shrink is intended`,
    );
  }
}

/**
 * The accepted rows, one per entity. With duplicates, one row per entity wins:
 * the latest event time, and on a tie a deletion, then the row with the
 * greatest values in feature order (a value beats a null), so the winner never
 * depends on file order (and the Postgres and hot-tier loads, which each run
 * this, pick the same rows). An incremental merge breaks ties the same way
 * (mergeSql), so the outcome does not depend on which run a row came in.
 */
function winnersSql(job: JobDefinition, hasDuplicates: boolean, columns: string): string {
  const rows = `SELECT ${columns} FROM checked WHERE reject IS NULL`;
  if (!hasDuplicates) return rows;
  // A deletion wins a tie with an update of the same instant.
  const values = job.features.map((f) => `${quoteIdent(f.name)} DESC NULLS LAST`);
  return `${rows} QUALIFY row_number() OVER (PARTITION BY entity_id ORDER BY ${['event_time DESC', '__deleted DESC', ...values].join(', ')}) = 1`;
}

/**
 * The rows for Postgres COPY, typed, for DuckDB's CSV writer (whose text
 * Postgres reads back exactly: shortest round-trip doubles, times with
 * microseconds and offset, "" for an empty string and nothing for NULL). A
 * snapshot leaves deleted entities out; a delta keeps them, flagged.
 */
export function copySql(job: JobDefinition, hasDuplicates: boolean, withDeletions: boolean): string {
  const columns = ['entity_id', 'event_time', ...job.features.map((f) => quoteIdent(f.name))];
  const winners = winnersSql(job, hasDuplicates, `${columns.join(', ')}, __deleted`);
  return withDeletions ? `SELECT ${columns.join(', ')}, __deleted AS deleted FROM (${winners})` : `SELECT ${columns.join(', ')} FROM (${winners}) WHERE NOT __deleted`;
}

/** What a hot-tier value holds, in order: the event time, then the features. */
export function hotColumns(job: JobDefinition): HotColumn[] {
  return [{ sql: 'event_time', type: 'timestamp' }, ...job.features.map((f) => ({ sql: quoteIdent(f.name), type: f.type }))];
}

/**
 * The rows for the hot tier: the key and text column and the value columns
 * HotRowEncoder reads, then the deletion flag (a snapshot writes no key for a
 * deleted entity). The key is built here, in bulk, rather than per row in JavaScript.
 */
export function hotSql(job: JobDefinition, hasDuplicates: boolean, hotKeyPrefix: string): string {
  const columns = hotRowsSql(`${sqlString(hotKeyPrefix)} || entity_id`, hotColumns(job), ISO_UTC_DUCK);
  return `SELECT ${columns.join(', ')}, __deleted FROM (${winnersSql(job, hasDuplicates, '*')})`;
}

/** Postgres DDL for one version's table; the primary key is added after the load. */
export function createTableSql(table: string, features: readonly FeatureDefinition[]): string {
  const columns = ['entity_id text NOT NULL', 'event_time timestamptz NOT NULL', ...features.map((f) => `${quoteIdent(f.name)} ${PG_TYPE[f.type]}`)];
  return `CREATE TABLE ${table} (${columns.join(', ')})`;
}

/** Postgres DDL for an incremental run's delta: the version's columns plus the delete flag. */
export function createDeltaTableSql(table: string, features: readonly FeatureDefinition[]): string {
  const columns = ['entity_id text NOT NULL', 'event_time timestamptz NOT NULL', ...features.map((f) => `${quoteIdent(f.name)} ${PG_TYPE[f.type]}`), 'deleted boolean NOT NULL'];
  return `CREATE UNLOGGED TABLE ${table} (${columns.join(', ')})`;
}

/**
 * SQL: the incoming row (EXCLUDED) beats the stored one (cur) of the same
 * event time, as winnersSql orders duplicates: greater values in feature
 * order, a value beating a null; text compared byte by byte (COLLATE "C"), as
 * DuckDB does. Equal rows do not beat each other, so a replay changes nothing.
 */
function beatsOnTie(features: readonly FeatureDefinition[]): string {
  return features.reduceRight((rest, f) => {
    const collate = f.type === 'string' ? ' COLLATE "C"' : '';
    const [ex, cur] = [`EXCLUDED.${quoteIdent(f.name)}`, `cur.${quoteIdent(f.name)}`];
    return `(${ex} IS NOT NULL AND (${cur} IS NULL OR ${ex}${collate} > ${cur}${collate}) OR ${ex} IS NOT DISTINCT FROM ${cur} AND ${rest})`;
  }, 'false');
}

/**
 * Applies a delta to a version table: a newer event time wins, an equal one
 * only if it beats the stored row as duplicates are resolved (beatsOnTie), an
 * older one changes nothing (so a replay is a no-op), and a deletion removes
 * the entity only if it is at least as new as the stored row.
 */
export function mergeSql(table: string, delta: string, features: readonly FeatureDefinition[]): { upsert: string; remove: string } {
  const columns = ['entity_id', 'event_time', ...features.map((f) => f.name)].map(quoteIdent);
  const updates = columns.slice(1).map((c) => `${c} = EXCLUDED.${c}`);
  return {
    upsert: `WITH up AS (
        INSERT INTO ${table} AS cur (${columns.join(', ')}) SELECT ${columns.join(', ')} FROM ${delta} WHERE NOT deleted
        ON CONFLICT (entity_id) DO UPDATE SET ${updates.join(', ')}
          WHERE cur.event_time < EXCLUDED.event_time OR cur.event_time = EXCLUDED.event_time AND ${beatsOnTie(features)}
        RETURNING (xmax = 0) AS inserted)
      SELECT count(*) FILTER (WHERE inserted) AS inserted, count(*) FILTER (WHERE NOT inserted) AS updated FROM up`,
    remove: `WITH gone AS (
        DELETE FROM ${table} cur USING ${delta} d WHERE d.deleted AND cur.entity_id = d.entity_id AND cur.event_time <= d.event_time RETURNING 1)
      SELECT count(*) AS deleted FROM gone`,
  };
}

/**
 * Rows of a version table as (entity id, hot-tier value), encoded by Postgres
 * byte for byte as the sync encodes them. With `page`, up to that many rows
 * after entity id $1, in id order: the embedded store reads it page by page,
 * each page its own query, so no transaction holds its one session between
 * pages (every lookup would wait meanwhile).
 */
export function hotValuesFromPostgresSql(table: string, features: readonly { readonly name: string; readonly type: FeatureType }[], page?: number): string {
  const value = hotValuePostgresSql([{ sql: 'event_time', type: 'timestamp' }, ...features.map((f) => ({ sql: quoteIdent(f.name), type: f.type }))], isoTimeSql);
  const rows = `SELECT entity_id, ${value} FROM ${table}`;
  return page === undefined ? rows : `${rows} WHERE entity_id > $1 ORDER BY entity_id LIMIT ${Math.max(1, Math.floor(page))}`;
}
