// Owns the sync job definition format: one YAML file per feature view in
// SYNC_JOBS_DIR, validated with zod when loaded. A bad definition stops start-up
// with the file, the field and what was expected.
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { Cron } from 'croner';
import { parse as parseYaml, YAMLParseError } from 'yaml';
import { z } from 'zod';

/** Entity ids the API accepts and the sync publishes: bounded, no spaces, no slashes. */
export const ENTITY_ID_PATTERN = '^[A-Za-z0-9_][A-Za-z0-9_.:@-]{0,127}$';
export const ENTITY_ID_MAX_LENGTH = 128;

const NAME_PATTERN = /^[a-z][a-z0-9_]{0,47}$/;
const TOP_LEVEL_FIELDS = 'view, description, source, transform, entity_key, event_time, features, schedule, freshness, mode, lookback, delete_column, max_reject_share, max_row_drop, deprecated';
/** Columns every version table has besides the features. */
export const RESERVED_COLUMNS = new Set(['entity_id', 'event_time']);

export const FEATURE_TYPES = ['string', 'integer', 'double', 'boolean', 'timestamp'] as const;
export type FeatureType = (typeof FEATURE_TYPES)[number];

const DURATION_PATTERN = /^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$/;

/** "26h", "1h30m", "7d", "45s" → seconds. */
export function parseDuration(text: string): number | undefined {
  const match = DURATION_PATTERN.exec(text);
  if (!match || text === '') return undefined;
  const [, d, h, m, s] = match.map((part) => Number(part ?? 0));
  const seconds = d! * 86_400 + h! * 3_600 + m! * 60 + s!;
  return seconds > 0 ? seconds : undefined;
}

const duration = z.string().transform((text, ctx) => {
  const seconds = parseDuration(text.trim());
  if (seconds === undefined) {
    ctx.addIssue({ code: 'custom', message: `expected a positive duration such as "90m", "26h" or "7d", got "${text}"` });
    return z.NEVER;
  }
  return seconds;
});

const cron = z.string().superRefine((expr, ctx) => {
  try {
    new Cron(expr, { paused: true });
  } catch {
    ctx.addIssue({ code: 'custom', message: `expected a cron expression such as "*/15 * * * *", got "${expr}"` });
  }
});

const identifier = (what: string) =>
  z.string().regex(NAME_PATTERN, `expected a ${what} of lowercase letters, digits and _ (starting with a letter, at most 48 characters)`);

export const EPOCH_UNITS = ['s', 'ms', 'us'] as const;
export type EpochUnit = (typeof EPOCH_UNITS)[number];
const epochUnit = z.enum(EPOCH_UNITS, { error: () => 'expected an epoch unit: s, ms or us' });

const featureSchema = z
  .strictObject({
    type: z.enum(FEATURE_TYPES, { error: () => `expected one of ${FEATURE_TYPES.join(', ')}` }),
    description: z.string().optional(),
    /** false: a null value rejects the row. */
    nullable: z.boolean().default(true),
    min: z.number().optional(),
    max: z.number().optional(),
    allowed: z.array(z.union([z.string(), z.number(), z.boolean()])).min(1, 'expected at least one allowed value').optional(),
    /** For a timestamp kept as an epoch number in the source: its unit. */
    unit: epochUnit.optional(),
  })
  .superRefine((f, ctx) => {
    const numeric = f.type === 'integer' || f.type === 'double';
    if ((f.min !== undefined || f.max !== undefined) && !numeric) ctx.addIssue({ code: 'custom', message: `min and max apply to integer and double features, not ${f.type}` });
    if (f.min !== undefined && f.max !== undefined && f.min > f.max) ctx.addIssue({ code: 'custom', path: ['min'], message: `min (${f.min}) is above max (${f.max})` });
    if (f.unit && f.type !== 'timestamp') ctx.addIssue({ code: 'custom', path: ['unit'], message: `unit applies to timestamp features, not ${f.type}` });
    if (f.allowed && f.type === 'timestamp') ctx.addIssue({ code: 'custom', path: ['allowed'], message: 'allowed values do not apply to timestamp features' });
  });

const eventTimeSchema = z.union([
  z.string().min(1, 'expected the name of the event-time column'),
  z.strictObject({ column: z.string().min(1), unit: epochUnit }),
]);

const share = z.number().min(0, 'expected a share between 0 and 1').max(1, 'expected a share between 0 and 1');

const deprecationSchema = z.strictObject({
  since: z.coerce.date({ error: () => 'expected a date such as 2026-12-01' }),
  sunset: z.coerce.date({ error: () => 'expected a date such as 2027-06-30' }),
  successor: z.string().regex(NAME_PATTERN, 'expected the name of the view that replaces this one').optional(),
});

const definitionSchema = z
  .strictObject({
    view: identifier('view name'),
    description: z.string().optional(),
    source: z.string().min(1, 'expected a Parquet file path or glob'),
    transform: z.string().min(1).optional(),
    entity_key: z.string().min(1, 'expected the name of the entity key column'),
    event_time: eventTimeSchema,
    features: z
      .record(identifier('feature name'), featureSchema)
      .refine((features) => Object.keys(features).length > 0, 'expected at least one feature'),
    schedule: cron,
    freshness: duration,
    /** Share of rows that may break constraints before the run fails (they are left out and recorded). */
    max_reject_share: share.default(0),
    /** A snapshot may have at most this share fewer rows than the version it replaces, unless forced. */
    max_row_drop: share.default(0.5),
    /** snapshot: each run replaces the view; incremental: each run applies the rows past the last watermark. */
    mode: z.enum(['snapshot', 'incremental'], { error: () => 'expected snapshot or incremental' }).default('snapshot'),
    /** Incremental runs re-read this far behind the last watermark, for late rows. */
    lookback: z.union([z.literal(0), duration]).default(3600),
    /** A boolean source column: true removes the entity. */
    delete_column: z.string().min(1).optional(),
    deprecated: deprecationSchema.optional(),
  })
  .superRefine((def, ctx) => {
    if (def.deprecated && def.deprecated.sunset < def.deprecated.since) {
      ctx.addIssue({ code: 'custom', path: ['deprecated', 'sunset'], message: 'the sunset date must not be before the deprecation date (since)' });
    }
    if (def.deprecated?.successor === def.view) ctx.addIssue({ code: 'custom', path: ['deprecated', 'successor'], message: 'a view cannot succeed itself' });
    for (const name of Object.keys(def.features)) {
      if (RESERVED_COLUMNS.has(name)) {
        ctx.addIssue({ code: 'custom', path: ['features', name], message: `"${name}" is reserved; rename the feature` });
      }
    }
  });

export interface FeatureDefinition {
  readonly name: string;
  readonly type: FeatureType;
  readonly description: string | undefined;
  readonly nullable: boolean;
  readonly min: number | undefined;
  readonly max: number | undefined;
  readonly allowed: readonly (string | number | boolean)[] | undefined;
  readonly unit: EpochUnit | undefined;
}

export interface Deprecation {
  readonly since: Date;
  readonly sunset: Date;
  readonly successor: string | undefined;
}

export interface JobDefinition {
  /** The job and the view it publishes share one name. */
  readonly view: string;
  readonly description: string | undefined;
  readonly file: string;
  /** Absolute path or glob of the Parquet source. */
  readonly source: string;
  /** DuckDB SQL over the relation `source`; absent means the source as it is. */
  readonly transform: string | undefined;
  readonly entityKey: string;
  readonly eventTime: string;
  /** Set when the event-time column holds epoch numbers in this unit. */
  readonly eventTimeUnit: EpochUnit | undefined;
  readonly features: readonly FeatureDefinition[];
  readonly schedule: string;
  readonly freshnessSeconds: number;
  readonly maxRejectShare: number;
  readonly maxRowDrop: number;
  readonly mode: 'snapshot' | 'incremental';
  readonly lookbackSeconds: number;
  readonly deleteColumn: string | undefined;
  readonly deprecated: Deprecation | undefined;
}

export class JobDefinitionError extends Error {
  override name = 'JobDefinitionError';
}

export function parseJobDefinition(file: string, text: string): JobDefinition {
  let raw: unknown;
  try {
    raw = parseYaml(text);
  } catch (error) {
    const where = error instanceof YAMLParseError && error.linePos ? ` at line ${error.linePos[0].line}` : '';
    throw new JobDefinitionError(`${file}: not valid YAML${where}: ${(error as Error).message.split('\n')[0]}`);
  }
  const parsed = definitionSchema.safeParse(raw);
  if (!parsed.success) {
    const problems = parsed.error.issues.map((issue) => {
      const field = issue.path.length ? issue.path.join('.') : '(top level)';
      const message =
        issue.code === 'unrecognized_keys'
          ? `unknown field(s) ${issue.keys.map((key) => `"${key}"`).join(', ')}; expected only ${issue.path.length ? 'the documented fields here' : TOP_LEVEL_FIELDS}`
          : issue.code === 'invalid_type' && issue.input === undefined
            ? 'is required'
            : issue.message;
      return `  ${field}: ${message}`;
    });
    throw new JobDefinitionError(`${file}: invalid sync job definition\n${problems.join('\n')}`);
  }
  const def = parsed.data;
  const stem = path.basename(file).replace(/\.ya?ml$/, '');
  if (stem !== def.view) {
    throw new JobDefinitionError(`${file}: view: the view is "${def.view}" but the file is named "${path.basename(file)}"; name the file ${def.view}.yaml`);
  }
  const eventTime = typeof def.event_time === 'string' ? { column: def.event_time, unit: undefined } : def.event_time;
  const columns = [def.entity_key, eventTime.column, ...Object.keys(def.features), ...(def.delete_column ? [def.delete_column] : [])];
  const repeated = columns.find((column, index) => columns.indexOf(column) !== index);
  if (repeated) {
    throw new JobDefinitionError(`${file}: column "${repeated}" is named twice among entity_key, event_time, features and delete_column; each must be its own column`);
  }
  return Object.freeze({
    view: def.view,
    description: def.description,
    file,
    source: path.resolve(path.dirname(file), def.source),
    transform: def.transform,
    entityKey: def.entity_key,
    eventTime: eventTime.column,
    eventTimeUnit: eventTime.unit,
    features: Object.entries(def.features).map(([name, f]) =>
      Object.freeze({ name, type: f.type, description: f.description, nullable: f.nullable, min: f.min, max: f.max, allowed: f.allowed, unit: f.unit }),
    ),
    schedule: def.schedule,
    freshnessSeconds: def.freshness,
    maxRejectShare: def.max_reject_share,
    maxRowDrop: def.max_row_drop,
    mode: def.mode,
    lookbackSeconds: def.lookback,
    deleteColumn: def.delete_column,
    deprecated: def.deprecated ? Object.freeze({ since: def.deprecated.since, sunset: def.deprecated.sunset, successor: def.deprecated.successor }) : undefined,
  });
}

/** Loads every *.yaml / *.yml in `dir`; any bad file fails the whole load. */
export async function loadJobDefinitions(dir: string): Promise<JobDefinition[]> {
  let entries: string[];
  try {
    entries = await readdir(dir);
  } catch (error) {
    throw new JobDefinitionError(`cannot read the sync job directory ${dir} (SYNC_JOBS_DIR): ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`);
  }
  const files = entries.filter((name) => /\.ya?ml$/.test(name)).sort();
  if (files.length === 0) {
    throw new JobDefinitionError(`no sync job definitions (*.yaml) in ${dir} (SYNC_JOBS_DIR); add one per feature view`);
  }
  const jobs: JobDefinition[] = [];
  for (const name of files) {
    const file = path.join(dir, name);
    jobs.push(parseJobDefinition(file, await readFile(file, 'utf8')));
  }
  return jobs;
}
