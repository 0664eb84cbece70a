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

/** A YAML value for a message, as written: strings quoted, numbers as they are. */
const shown = (value: unknown): string => (typeof value === 'number' ? String(value) : (JSON.stringify(value) ?? String(value)));

/** "26h", "1h30m", "7d", "45s" → seconds. */
export function parseDuration(text: string): number | undefined {
  const match = DURATION_PATTERN.exec(text);
  if (!match || text === '') return undefined;
  const [, d, h, m, s] = match.map((part) => Number(part ?? 0));
  const seconds = d! * 86_400 + h! * 3_600 + m! * 60 + s!;
  return seconds > 0 ? seconds : undefined;
}

const DURATION_EXPECTED = 'expected a positive duration such as "90m", "26h" or "7d"';
const duration = z.string({ error: (issue) => `${DURATION_EXPECTED}, got ${shown(issue.input)}` }).transform((text, ctx) => {
  const seconds = parseDuration(text.trim());
  if (seconds === undefined) {
    ctx.addIssue({ code: 'custom', message: `${DURATION_EXPECTED}, got "${text}"` });
    return z.NEVER;
  }
  return seconds;
});

const cron = z.string().superRefine((expr, ctx) => {
  let schedule: Cron;
  try {
    schedule = new Cron(expr, { paused: true, timezone: 'UTC' });
  } catch {
    ctx.addIssue({ code: 'custom', message: `expected a cron expression such as "*/15 * * * *", got "${expr}"` });
    return;
  }
  // Croner accepts dates that never come ("0 0 31 2 *") or have passed (a year field); such a job would never run.
  if (schedule.nextRun() === null) ctx.addIssue({ code: 'custom', message: `"${expr}" never fires: it has no next run` });
});

const identifier = (what: string) =>
  z.string().regex(NAME_PATTERN, `expected a ${what} of lowercase letters, digits and _ (starting with a letter, at most 48 characters)`);

export const EPOCH_UNITS = ['s', 'ms', 'us'] as const;
export type EpochUnit = (typeof EPOCH_UNITS)[number];
const epochUnit = z.enum(EPOCH_UNITS, { error: () => 'expected an epoch unit: s, ms or us' });

/** What an allowed value of each type must be: one the column can hold, or every run fails in DuckDB. */
const ALLOWED_VALUES: Record<Exclude<FeatureType, 'timestamp'>, { readonly fits: (value: unknown) => boolean; readonly expected: string }> = {
  integer: { fits: Number.isSafeInteger, expected: 'an integer within ±2^53−1' },
  double: { fits: (value) => typeof value === 'number' && Number.isFinite(value), expected: 'a finite number' },
  string: { fits: (value) => typeof value === 'string', expected: 'a string' },
  boolean: { fits: (value) => typeof value === 'boolean', expected: 'true or false' },
};

const featureSchema = z
  .strictObject({
    type: z.enum(FEATURE_TYPES, { error: () => `expected one of ${FEATURE_TYPES.join(', ')}` }),
    description: z.string().optional(),
    /** false: a null value rejects the row. */
    nullable: z.boolean().default(true),
    min: z.number().optional(),
    max: z.number().optional(),
    allowed: z
      .array(z.union([z.string(), z.number(), z.boolean()], { error: (issue) => `expected a string, a finite number or a boolean, got ${shown(issue.input)}` }))
      .min(1, 'expected at least one allowed value')
      .optional(),
    /** For a timestamp kept as an epoch number in the source: its unit. */
    unit: epochUnit.optional(),
  })
  .superRefine((f, ctx) => {
    const numeric = f.type === 'integer' || f.type === 'double';
    if ((f.min !== undefined || f.max !== undefined) && !numeric) ctx.addIssue({ code: 'custom', message: `min and max apply to integer and double features, not ${f.type}` });
    if (f.min !== undefined && f.max !== undefined && f.min > f.max) ctx.addIssue({ code: 'custom', path: ['min'], message: `min (${f.min}) is above max (${f.max})` });
    if (f.unit && f.type !== 'timestamp') ctx.addIssue({ code: 'custom', path: ['unit'], message: `unit applies to timestamp features, not ${f.type}` });
    if (f.allowed && f.type === 'timestamp') ctx.addIssue({ code: 'custom', path: ['allowed'], message: 'allowed values do not apply to timestamp features' });
    if (f.allowed && f.type !== 'timestamp') {
      const { fits, expected } = ALLOWED_VALUES[f.type];
      f.allowed.forEach((value, index) => {
        const at = ['allowed', index];
        if (!fits(value)) ctx.addIssue({ code: 'custom', path: at, message: `expected ${expected}, got ${shown(value)}` });
        // A value outside min or max could never be accepted: every row holding it is rejected.
        else if (typeof value === 'number' && f.min !== undefined && value < f.min) ctx.addIssue({ code: 'custom', path: at, message: `${value} is below min (${f.min})` });
        else if (typeof value === 'number' && f.max !== undefined && value > f.max) ctx.addIssue({ code: 'custom', path: at, message: `${value} is above max (${f.max})` });
      });
    }
  });

// A union's own issue says only "Invalid input": say what either form looks like.
const eventTimeSchema = z.union(
  [z.string().min(1, 'expected the name of the event-time column'), z.strictObject({ column: z.string().min(1), unit: epochUnit })],
  { error: (issue) => `expected a column name, or { column, unit: s | ms | us }, got ${shown(issue.input)}` },
);

const lookback = z.union([z.literal(0), duration], {
  error: (issue) => `expected 0 or a duration of whole d, h, m and s parts in that order, such as "30m", "1h30m" or "2d", got ${shown(issue.input)}`,
});

const share = z.number().min(0, 'expected a share between 0 and 1').max(1, 'expected a share between 0 and 1');

const DATE_PATTERN = /^\d{4}-\d{2}-\d{2}$/;

/**
 * A calendar date, YYYY-MM-DD, as midnight UTC (YAML 1.1 hands an unquoted one
 * over as a Date already). No coercion: 2026 would be 2 seconds past 1970 and
 * 2026-02-30 would roll over into March.
 */
const calendarDate = (example: string) => {
  const expected = `expected a date such as ${example} (YYYY-MM-DD)`;
  return z.union([z.string(), z.date()], { error: (issue) => `${expected}, got ${shown(issue.input)}` }).transform((value, ctx) => {
    const text = value instanceof Date ? value.toISOString().replace(/T00:00:00\.000Z$/, '') : value;
    const date = new Date(`${text}T00:00:00Z`);
    if (DATE_PATTERN.test(text) && !Number.isNaN(date.getTime()) && date.toISOString().startsWith(text)) return date;
    ctx.addIssue({ code: 'custom', message: `${expected}, got ${shown(value)}` });
    return z.NEVER;
  });
};

const deprecationSchema = z.strictObject({
  since: calendarDate('2026-12-01'),
  sunset: calendarDate('2027-06-30'),
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
    lookback: lookback.default(3600),
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
  // zod v4 keeps an issue's input only when asked; without it a wrong-type field would read as missing.
  // The error map says what such a field got; a schema's own message still wins.
  const parsed = definitionSchema.safeParse(raw, {
    reportInput: true,
    error: (issue) => (issue.code === 'invalid_type' ? `expected ${issue.expected}, got ${shown(issue.input)}` : undefined),
  });
  if (!parsed.success) {
    const problems = parsed.error.issues.map((issue) => {
      const field = issue.path.length ? issue.path.join('.') : '(top level)';
      const message =
        issue.code === 'unrecognized_keys'
          ? `unknown field(s) ${issue.keys.map((key) => `"${key}"`).join(', ')}; expected only ${issue.path.length ? 'the documented fields here' : TOP_LEVEL_FIELDS}`
          : (issue.code === 'invalid_type' || issue.code === 'invalid_union') && issue.input === undefined
            ? 'is required'
            : issue.message;
      return `  ${field}: ${message}`;
    });
    throw new JobDefinitionError(`${file}: invalid sync job definition\n${problems.join('\n')}`);
  }
  const def = parsed.data;
  const stem = path.basename(file).replace(/\.ya?ml$/i, '');
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
  const files = entries.filter((name) => /\.ya?ml$/i.test(name)).sort();
  if (files.length === 0) {
    throw new JobDefinitionError(`no sync job definitions (*.yaml) in ${dir} (SYNC_JOBS_DIR); add one per feature view`);
  }
  const jobs: JobDefinition[] = [];
  const fileOfView = new Map<string, string>();
  for (const name of files) {
    const file = path.join(dir, name);
    const job = parseJobDefinition(file, await readFile(file, 'utf8'));
    // snap.yaml and snap.yml both match their view's name; two jobs of one name would both run.
    const other = fileOfView.get(job.view);
    if (other) throw new JobDefinitionError(`${file}: view: "${job.view}" is also defined by ${other}; keep one definition per view`);
    fileOfView.set(job.view, file);
    jobs.push(job);
  }
  // Only now is every view known; the Link header must not send callers to a view that is not there.
  for (const job of jobs) {
    const successor = job.deprecated?.successor;
    if (successor !== undefined && !fileOfView.has(successor)) {
      throw new JobDefinitionError(`${job.file}: deprecated.successor: no view "${successor}" is defined in ${dir}; expected the name of the view that replaces this one`);
    }
  }
  return jobs;
}
