// Owns the SQL the sync runs in DuckDB: the contract check of the source's
// columns, the projection to the view's declared types, the data checks, and the
// per-row CSV (for Postgres COPY) and JSON (for the hot tier) text, which DuckDB
// formats in bulk so that no per-row work happens in JavaScript.
import type { FeatureDefinition, FeatureType, JobDefinition } from '../jobs/definition.js';
import { ENTITY_ID_PATTERN } from '../jobs/definition.js';
import { quoteIdent } from '../stores/database.js';

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
  expect(job.entityKey, 'entity key', (t) => t === 'VARCHAR' || INTEGER_TYPES.includes(t), 'VARCHAR or an integer type');
  expect(job.eventTime, 'event-time', (t) => TIMESTAMP_TYPES.includes(t), 'TIMESTAMP, TIMESTAMP WITH TIME ZONE or DATE');
  for (const feature of job.features) {
    expect(feature.name, 'feature', (t) => accepts(feature.type, t), `${feature.type} (${describeAccepted(feature.type)})`);
  }
  if (problems.length) {
    const available = columns.map((c) => `${c.name} ${c.type}`).join(', ');
    throw new SyncDataError(`the source does not match the contract of view "${job.view}": ${problems.join('; ')}. Source columns: ${available}`, {
      contract_violations: problems,
    });
  }
  const declared = new Set([job.entityKey, job.eventTime, ...job.features.map((f) => f.name)]);
  return { ignoredColumns: columns.map((c) => c.name).filter((name) => !declared.has(name)) };
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

/** `projected`: the source cast to the contract, with the two fixed columns first. */
export function projectionSql(job: JobDefinition): string {
  const columns = [
    `CAST(t.${quoteIdent(job.entityKey)} AS VARCHAR) AS entity_id`,
    `CAST(t.${quoteIdent(job.eventTime)} AS TIMESTAMPTZ) AS event_time`,
    ...job.features.map((f) => `CAST(t.${quoteIdent(f.name)} AS ${DUCK_TYPE[f.type]}) AS ${quoteIdent(f.name)}`),
  ];
  return `SELECT ${columns.join(', ')} FROM transformed t`;
}

/** One aggregate pass that finds every reason to refuse the data before a row is written. */
export function checkSql(job: JobDefinition): string {
  const pattern = sqlString(ENTITY_ID_PATTERN);
  const perFeature = job.features.flatMap((f) => {
    const col = quoteIdent(f.name);
    if (f.type === 'double') return [`count(*) FILTER (WHERE NOT isfinite(${col})) AS ${quoteIdent(`nonfinite:${f.name}`)}`];
    if (f.type === 'integer') return [`count(*) FILTER (WHERE abs(${col}) > ${MAX_SAFE_INTEGER}) AS ${quoteIdent(`unsafe:${f.name}`)}`];
    if (f.type === 'string') return [`count(*) FILTER (WHERE contains(${col}, chr(0))) AS ${quoteIdent(`nul:${f.name}`)}`];
    return [];
  });
  return `SELECT
      count(*) AS rows,
      count(*) FILTER (WHERE entity_id IS NULL) AS null_keys,
      count(*) FILTER (WHERE NOT regexp_full_match(entity_id, ${pattern})) AS bad_keys,
      any_value(entity_id) FILTER (WHERE NOT regexp_full_match(entity_id, ${pattern})) AS bad_key_example,
      count(*) - count(DISTINCT entity_id) - count(*) FILTER (WHERE entity_id IS NULL) AS duplicate_rows,
      count(*) FILTER (WHERE event_time IS NULL) AS null_event_times,
      strftime(max(event_time), ${ISO_UTC_DUCK}) AS watermark
      ${perFeature.map((expr) => `, ${expr}`).join('')}
    FROM projected`;
}

export interface CheckResult {
  readonly rows: number;
  readonly watermark: string | null;
}

/** Turns the check row into a verdict: a SyncDataError naming each problem, or the counts. */
export function judgeCheck(job: JobDefinition, row: Record<string, unknown>): CheckResult {
  const n = (key: string) => Number(row[key] ?? 0);
  const problems: string[] = [];
  if (n('null_keys')) problems.push(`${n('null_keys')} row(s) have no entity key (column "${job.entityKey}" is null)`);
  if (n('bad_keys'))
    problems.push(`${n('bad_keys')} entity key(s) are not valid ids (for example ${JSON.stringify(row.bad_key_example)}); ids must match ${ENTITY_ID_PATTERN}`);
  if (n('duplicate_rows')) problems.push(`${n('duplicate_rows')} row(s) repeat an entity key already present; one row per entity is expected`);
  if (n('null_event_times')) problems.push(`${n('null_event_times')} row(s) have no event time (column "${job.eventTime}" is null)`);
  for (const f of job.features) {
    if (n(`nonfinite:${f.name}`)) problems.push(`feature "${f.name}" has ${n(`nonfinite:${f.name}`)} NaN or infinite value(s), which JSON cannot carry`);
    if (n(`nul:${f.name}`)) problems.push(`feature "${f.name}" has ${n(`nul:${f.name}`)} value(s) containing a NUL character, which Postgres text cannot store`);
    if (n(`unsafe:${f.name}`)) problems.push(`feature "${f.name}" has ${n(`unsafe:${f.name}`)} value(s) beyond ±${MAX_SAFE_INTEGER}, which JSON clients cannot read exactly`);
  }
  if (problems.length) throw new SyncDataError(`the data of view "${job.view}" was refused: ${problems.join('; ')}`, { data_problems: problems });
  return { rows: n('rows'), watermark: (row.watermark as string | null) ?? null };
}

function csvField(name: string, type: FeatureType | 'key'): string {
  const col = quoteIdent(name);
  switch (type) {
    case 'key':
    case 'string':
      // Quoted, so an empty string stays distinct from NULL (an empty unquoted field).
      return `CASE WHEN ${col} IS NULL THEN '' ELSE '"' || replace(${col}, '"', '""') || '"' END`;
    case 'timestamp':
      return `coalesce(strftime(${col}, ${ISO_UTC_DUCK}), '')`;
    default:
      return `coalesce(CAST(${col} AS VARCHAR), '')`;
  }
}

function jsonField(feature: FeatureDefinition): string {
  const col = quoteIdent(feature.name);
  return feature.type === 'timestamp' ? `strftime(${col}, ${ISO_UTC_DUCK})` : col;
}

/** Rows as (entity id, CSV record for COPY, compact JSON array for the hot tier). */
export function loadSql(job: JobDefinition): string {
  const csv = [csvField('entity_id', 'key'), csvField('event_time', 'timestamp'), ...job.features.map((f) => csvField(f.name, f.type))].join(` || ',' || `);
  const json = `CAST(json_array(strftime(event_time, ${ISO_UTC_DUCK}), ${job.features.map(jsonField).join(', ')}) AS VARCHAR)`;
  return `SELECT entity_id, ${csv} AS csv, ${json} AS hot FROM projected`;
}

/** Postgres DDL for one version's table; the primary key is added after the load. */
export function createTableSql(table: string, features: readonly FeatureDefinition[]): string {
  const columns = ['entity_id text NOT NULL', 'event_time timestamptz NOT NULL', ...features.map((f) => `${quoteIdent(f.name)} ${PG_TYPE[f.type]}`)];
  return `CREATE TABLE ${table} (${columns.join(', ')})`;
}
