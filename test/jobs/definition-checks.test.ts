// Definitions that used to load, or failed with the wrong words: each now fails
// naming the file, the field and what was expected (or loads, where it should).
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadJobDefinitions, parseJobDefinition } from '../../src/jobs/definition.js';
import { tempDir } from '../support/fixtures.js';

const GOOD = `
view: route_delays
source: data/flights.parquet
entity_key: route
event_time: as_of
features:
  flights: { type: integer }
schedule: "*/15 * * * *"
freshness: 1h30m
`;

const parse = (text: string, file = '/jobs/route_delays.yaml') => parseJobDefinition(file, text);
const withFeature = (spec: string) => GOOD.replace('flights: { type: integer }', `flights: ${spec}`);
const deprecated = (fields: string) => `${GOOD}deprecated: { ${fields} }\n`;

/** Writes `name: yaml` pairs into a fresh directory and returns it. */
async function jobsDir(files: Record<string, string>): Promise<string> {
  const dir = await tempDir('jobs');
  for (const [name, text] of Object.entries(files)) await writeFile(path.join(dir, name), text);
  return dir;
}
const job = (view: string, extra = '') => GOOD.replace('view: route_delays', `view: ${view}`) + extra;

describe('sync job definition checks', () => {
  describe('a field of the wrong type says what it got and what was expected', () => {
    it.each([
      ['freshness: 3600', GOOD.replace('freshness: 1h30m', 'freshness: 3600'), /\n {2}freshness: expected a positive duration such as "90m", "26h" or "7d", got 3600$/],
      ['view: 5', GOOD.replace('view: route_delays', 'view: 5'), /\n {2}view: expected string, got 5$/],
      ['max_reject_share: "10%"', GOOD + 'max_reject_share: "10%"\n', /\n {2}max_reject_share: expected number, got "10%"$/],
      ['nullable: "no"', withFeature('{ type: integer, nullable: "no" }'), /\n {2}features\.flights\.nullable: expected boolean, got "no"$/],
      ['a null feature', withFeature(''), /\n {2}features\.flights: expected object, got null$/],
    ])('%s', (_name, text, message) => {
      expect(() => parse(text)).toThrow(message);
    });

    it.each([
      ['freshness', GOOD.replace('freshness: 1h30m\n', '')],
      ['event_time', GOOD.replace('event_time: as_of\n', '')],
      ['deprecated.since', deprecated('sunset: 2027-06-30')],
    ])('a missing %s is still reported as required', (field, text) => {
      expect(() => parse(text)).toThrow(new RegExp(`\\n {2}${field.replace('.', '\\.')}: is required$`));
    });
  });

  describe('the union fields say what they accept', () => {
    const EVENT_TIME = /\n {2}event_time: expected a column name, or \{ column, unit: s \| ms \| us \}/;
    const LOOKBACK = /\n {2}lookback: expected 0 or a duration of whole d, h, m and s parts in that order, such as "30m", "1h30m" or "2d", got /;
    it.each([
      ['event_time with an unknown unit', GOOD.replace('event_time: as_of', 'event_time: { column: t, unit: sec }'), EVENT_TIME],
      ['event_time as a number', GOOD.replace('event_time: as_of', 'event_time: 5'), EVENT_TIME],
      ['event_time without a unit', GOOD.replace('event_time: as_of', 'event_time: { column: t }'), EVENT_TIME],
      ['lookback: 2x', GOOD + 'mode: incremental\nlookback: 2x\n', LOOKBACK],
      ['lookback: 3600', GOOD + 'mode: incremental\nlookback: 3600\n', LOOKBACK],
      ['lookback: 30m1h', GOOD + 'mode: incremental\nlookback: 30m1h\n', LOOKBACK],
    ])('%s', (_name, text, message) => {
      expect(() => parse(text)).toThrow(message);
    });

    it('still loads both event_time forms and lookback 0', () => {
      expect(parse(GOOD.replace('event_time: as_of', 'event_time: { column: t, unit: ms }'))).toMatchObject({ eventTime: 't', eventTimeUnit: 'ms' });
      expect(parse(GOOD + 'mode: incremental\nlookback: 0\n').lookbackSeconds).toBe(0);
      expect(parse(GOOD + 'mode: incremental\nlookback: 1h30m\n').lookbackSeconds).toBe(5400);
    });
  });

  describe('a schedule that never fires is refused', () => {
    it.each([['0 0 31 2 *'], ['0 0 0 * * * 2020']])('"%s"', (schedule) => {
      const escaped = schedule.replace(/\*/g, '\\*');
      expect(() => parse(GOOD.replace('"*/15 * * * *"', `"${schedule}"`))).toThrow(new RegExp(`\\n {2}schedule: "${escaped}" never fires: it has no next run`));
    });

    it('loads schedules that fire, rarely or on the last day of the month', () => {
      expect(parse(GOOD.replace('"*/15 * * * *"', '"0 0 29 2 *"')).schedule).toBe('0 0 29 2 *');
      expect(parse(GOOD.replace('"*/15 * * * *"', '"0 0 L * *"')).schedule).toBe('0 0 L * *');
    });
  });

  describe('allowed values must fit the feature type and its min and max', () => {
    it.each([
      ['strings on an integer', '{ type: integer, allowed: [low, high] }', /\n {2}features\.flights\.allowed\.0: expected an integer within ±2\^53−1, got "low"\n {2}features\.flights\.allowed\.1: expected an integer within ±2\^53−1, got "high"/],
      ['a fraction on an integer', '{ type: integer, allowed: [1, 1.5] }', /\n {2}features\.flights\.allowed\.1: expected an integer within ±2\^53−1, got 1\.5$/],
      ['an integer beyond 2^53', '{ type: integer, allowed: [9007199254740993] }', /\n {2}features\.flights\.allowed\.0: expected an integer within ±2\^53−1, got 9007199254740992$/],
      ['infinity on a double', '{ type: double, allowed: [0.5, .inf] }', /\n {2}features\.flights\.allowed\.1: expected a string, a finite number or a boolean, got Infinity$/],
      ['a number on a string', '{ type: string, allowed: [AA, 1] }', /\n {2}features\.flights\.allowed\.1: expected a string, got 1$/],
      ['a string on a boolean', '{ type: boolean, allowed: [true, "yes"] }', /\n {2}features\.flights\.allowed\.1: expected true or false, got "yes"$/],
      ['a value above max', '{ type: integer, min: 0, max: 10, allowed: [5, 50] }', /\n {2}features\.flights\.allowed\.1: 50 is above max \(10\)$/],
      ['a value below min', '{ type: double, min: 0.5, allowed: [0.25] }', /\n {2}features\.flights\.allowed\.0: 0.25 is below min \(0.5\)$/],
    ])('refuses %s', (_name, spec, message) => {
      expect(() => parse(withFeature(spec))).toThrow(message);
    });

    it('loads allowed values that fit', () => {
      expect(parse(withFeature('{ type: integer, min: 0, max: 10, allowed: [0, 10] }')).features[0]!.allowed).toEqual([0, 10]);
      expect(parse(withFeature('{ type: double, allowed: [0.5, 2] }')).features[0]!.allowed).toEqual([0.5, 2]);
      expect(parse(withFeature('{ type: string, allowed: [AA, UA] }')).features[0]!.allowed).toEqual(['AA', 'UA']);
      expect(parse(withFeature('{ type: boolean, allowed: [true] }')).features[0]!.allowed).toEqual([true]);
    });
  });

  describe('deprecation dates are strict calendar dates', () => {
    it.each([
      ['a number', 'since: 2026, sunset: 2027-06-30', /\n {2}deprecated\.since: expected a date such as 2026-12-01 \(YYYY-MM-DD\), got 2026$/],
      ['null', 'since: null, sunset: 2027-06-30', /\n {2}deprecated\.since: expected a date such as 2026-12-01 \(YYYY-MM-DD\), got null$/],
      ['"1"', 'since: "1", sunset: 2027-06-30', /\n {2}deprecated\.since: expected a date such as 2026-12-01 \(YYYY-MM-DD\), got "1"$/],
      ['February 30', 'since: 2026-02-30, sunset: 2027-06-30', /\n {2}deprecated\.since: expected a date such as 2026-12-01 \(YYYY-MM-DD\), got "2026-02-30"$/],
      ['a date and time', 'since: 2026-01-01, sunset: "2027-06-30T12:00:00Z"', /\n {2}deprecated\.sunset: expected a date such as 2027-06-30 \(YYYY-MM-DD\), got "2027-06-30T12:00:00Z"$/],
    ])('refuses %s', (_name, fields, message) => {
      expect(() => parse(deprecated(fields))).toThrow(message);
    });

    it('loads YYYY-MM-DD as midnight UTC, also when YAML 1.1 has made it a Date', () => {
      const expected = { since: new Date('2026-12-01T00:00:00Z'), sunset: new Date('2027-06-30T00:00:00Z'), successor: undefined };
      expect(parse(deprecated('since: 2026-12-01, sunset: 2027-06-30')).deprecated).toEqual(expected);
      expect(parse(`%YAML 1.1\n---\n${deprecated('since: 2026-12-01, sunset: 2027-06-30')}`).deprecated).toEqual(expected);
      expect(() => parse(deprecated('since: 2027-01-01, sunset: 2026-06-30'))).toThrow(/deprecated\.sunset: the sunset date must not be before/);
    });
  });

  describe('loading a directory', () => {
    it('refuses two definitions of one view, naming both files', async () => {
      const dir = await jobsDir({ 'snap.yaml': job('snap'), 'snap.yml': job('snap') });
      await expect(loadJobDefinitions(dir)).rejects.toThrow(`${path.join(dir, 'snap.yml')}: view: "snap" is also defined by ${path.join(dir, 'snap.yaml')}; keep one definition per view`);
    });

    it('loads definitions whatever the case of the extension', async () => {
      const dir = await jobsDir({ 'inc.YAML': job('inc'), 'snap.Yml': job('snap') });
      expect((await loadJobDefinitions(dir)).map((j) => j.view)).toEqual(['inc', 'snap']);
    });

    it('refuses a successor that names no loaded view', async () => {
      const dir = await jobsDir({ 'old.yaml': job('old', 'deprecated: { since: 2026-01-01, sunset: 2027-06-30, successor: nowhere }\n') });
      await expect(loadJobDefinitions(dir)).rejects.toThrow(`${path.join(dir, 'old.yaml')}: deprecated.successor: no view "nowhere" is defined in ${dir}; expected the name of the view that replaces this one`);
    });

    it('loads a successor that is defined', async () => {
      const dir = await jobsDir({ 'old.yaml': job('old', 'deprecated: { since: 2026-01-01, sunset: 2027-06-30, successor: new }\n'), 'new.yaml': job('new') });
      const jobs = await loadJobDefinitions(dir);
      expect(jobs.find((j) => j.view === 'old')!.deprecated!.successor).toBe('new');
    });
  });
});
