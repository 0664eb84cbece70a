// Job definitions: good ones load; each bad one fails naming the file, the
// field and what was expected.
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadJobDefinitions, parseDuration, parseJobDefinition } from '../../src/jobs/definition.js';
import { tempDir } from '../support/fixtures.js';

const GOOD = `
view: route_delays
source: data/flights.parquet
transform: SELECT 1
entity_key: route
event_time: as_of
features:
  flights: { type: integer }
  mean_delay: { type: double, description: minutes }
schedule: "*/15 * * * *"
freshness: 1h30m
`;

const parse = (text: string, file = '/jobs/route_delays.yaml') => parseJobDefinition(file, text);

describe('sync job definitions', () => {
  it('loads a valid definition with paths resolved next to the file', () => {
    const job = parse(GOOD);
    expect(job).toMatchObject({ view: 'route_delays', source: '/jobs/data/flights.parquet', entityKey: 'route', eventTime: 'as_of', schedule: '*/15 * * * *', freshnessSeconds: 5400 });
    expect(job.features).toEqual([
      { name: 'flights', type: 'integer', description: undefined, nullable: true, min: undefined, max: undefined, allowed: undefined, unit: undefined },
      { name: 'mean_delay', type: 'double', description: 'minutes', nullable: true, min: undefined, max: undefined, allowed: undefined, unit: undefined },
    ]);
    expect(job).toMatchObject({ eventTimeUnit: undefined, maxRejectShare: 0, maxRowDrop: 0.5, deprecated: undefined });
  });

  it('loads the demo jobs shipped in sync-jobs/', async () => {
    const jobs = await loadJobDefinitions(path.resolve('sync-jobs'));
    expect(jobs.map((j) => j.view)).toEqual(['origin_airports', 'route_delays']);
  });

  it.each([
    ['a missing field', GOOD.replace('entity_key: route\n', ''), /route_delays\.yaml: invalid sync job definition\n {2}entity_key: is required/],
    ['an unknown feature type', GOOD.replace('type: integer', 'type: int64'), /features\.flights\.type: expected one of string, integer, double, boolean, timestamp/],
    ['a bad cron expression', GOOD.replace('"*/15 * * * *"', '"every hour"'), /schedule: expected a cron expression such as "\*\/15 \* \* \* \*", got "every hour"/],
    ['a bad freshness', GOOD.replace('1h30m', '90 minutes'), /freshness: expected a positive duration such as "90m", "26h" or "7d", got "90 minutes"/],
    ['an unknown field', GOOD + 'owner: data-team\n', /unknown field\(s\) "owner"/],
    ['a bad view name', GOOD.replace('view: route_delays', 'view: Route-Delays'), /view: expected a view name of lowercase letters/],
    ['a reserved feature name', GOOD.replace('mean_delay:', 'event_time:'), /features\.event_time: "event_time" is reserved/],
    ['no features', GOOD.replace(/features:[\s\S]*schedule/, 'features: {}\nschedule'), /features: expected at least one feature/],
    ['a column used twice', GOOD.replace('entity_key: route', 'entity_key: flights'), /column "flights" is named twice/],
    ['invalid YAML', 'view: [unclosed', /route_delays\.yaml: not valid YAML at line 1/],
    ['a non-object document', '- a\n- b', /\(top level\)/],
  ])('rejects %s', (_name, text, message) => {
    expect(() => parse(text)).toThrow(message);
  });

  it('rejects a file named differently from its view', () => {
    expect(() => parse(GOOD, '/jobs/other.yaml')).toThrow(/view: the view is "route_delays" but the file is named "other.yaml"; name the file route_delays.yaml/);
  });

  it('fails the whole load on one bad file, and on an empty or missing directory', async () => {
    const dir = await tempDir('jobs');
    await expect(loadJobDefinitions(dir)).rejects.toThrow(/no sync job definitions \(\*\.yaml\) in .* \(SYNC_JOBS_DIR\)/);
    await expect(loadJobDefinitions(path.join(dir, 'missing'))).rejects.toThrow(/cannot read the sync job directory .*missing \(SYNC_JOBS_DIR\): ENOENT/);
    await writeFile(path.join(dir, 'route_delays.yaml'), GOOD);
    await mkdir(path.join(dir, 'notes'));
    await writeFile(path.join(dir, 'broken.yaml'), GOOD.replace('view: route_delays', 'view: broken').replace('freshness: 1h30m', 'freshness: soon'));
    await expect(loadJobDefinitions(dir)).rejects.toThrow(/broken\.yaml: invalid sync job definition\n {2}freshness/);
  });

  it('parses durations', () => {
    expect(parseDuration('45s')).toBe(45);
    expect(parseDuration('26h')).toBe(93600);
    expect(parseDuration('7d')).toBe(604800);
    expect(parseDuration('1d2h3m4s')).toBe(93784);
    expect(parseDuration('0s')).toBeUndefined();
    expect(parseDuration('')).toBeUndefined();
    expect(parseDuration('5 m')).toBeUndefined();
  });
});
