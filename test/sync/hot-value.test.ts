// The hot-tier value format: every writer (the sync from DuckDB's columns,
// Postgres after an incremental merge, a lookup filling a miss) must produce
// bytes that decode to exactly what Postgres serves, and the sync and Postgres
// must agree byte for byte. Real DuckDB and a real Postgres, with edge values.
import { DuckDBInstance, type DuckDBConnection } from '@duckdb/node-api';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import type { FeatureType } from '../../src/jobs/definition.js';
import { quoteIdent } from '../../src/stores/database.js';
import { arrayColumn, decodeHotValue, encodeHotValue, HotRowEncoder, HotValueError, hotRowsSql, HOT_FORMAT, type HotColumn } from '../../src/stores/hot-value.js';
import { isoTimeSql } from '../../src/stores/metadata.js';
import { PostgresDatabase } from '../../src/stores/postgres.js';
import type { FeatureRow } from '../../src/stores/reader.js';
import { valueColumn } from '../../src/sync/duck-columns.js';
import { pipeCsv } from '../../src/sync/duck-copy.js';
import { hotValuesFromPostgresSql, ISO_UTC_DUCK, PG_TYPE } from '../../src/sync/plan.js';
import { freshDatabase } from '../support/db.js';

const INTEGERS = [0, -1, 1, 127, 128, -128, -129, 32767, 32768, -32768, -32769, 2147483647, 2147483648, -2147483648, -2147483649, 9007199254740991, -9007199254740991, null];
const DOUBLES = [0.1, -0, 0, 1e308, 5e-324, 2.5, -1.7976931348623157e308, 1 / 3, 0.1 + 0.2, 123456789.123, -42, null];
const STRINGS = ['', 'a', 'héllo wörld', '👍🏽 and 漢字', 'quote " comma , newline \n return \r tab \t', 'x'.repeat(300), ' padded ', null];
const BOOLEANS = [true, false, null];
const TIMES = [
  '2026-01-01 00:00:00.123456+00',
  '1970-01-01 00:00:00+00',
  '1969-12-31 23:59:59.999999+00',
  '1700-01-01 00:00:00+00',
  '2199-12-31 23:59:59.999999+00',
  '1699-12-31 23:59:59.999999+00',
  '2200-01-01 00:00:00+00',
  '0001-01-01 00:00:00+00',
  '9999-12-31 23:59:59.999999+00',
  '2024-02-29 12:34:56.000001+00',
  null,
];
const EVENT_TIMES = TIMES.filter((t) => t !== null);

const FEATURES: { name: string; type: FeatureType; values: readonly unknown[] }[] = [
  { name: 'n', type: 'integer', values: INTEGERS },
  { name: 'd', type: 'double', values: DOUBLES },
  { name: 's', type: 'string', values: STRINGS },
  { name: 'b', type: 'boolean', values: BOOLEANS },
  { name: 't', type: 'timestamp', values: TIMES },
  { name: 's2', type: 'string', values: [...STRINGS].reverse() },
];
const DUCK_TYPE: Record<FeatureType, string> = { integer: 'BIGINT', double: 'DOUBLE', string: 'VARCHAR', boolean: 'BOOLEAN', timestamp: 'TIMESTAMPTZ' };
const ROWS = 40;

const duckLiteral = (value: unknown, type: FeatureType): string => {
  if (value === null) return `NULL::${DUCK_TYPE[type]}`;
  if (type === 'string') return `'${String(value).replaceAll("'", "''")}'`;
  if (type === 'timestamp') return `TIMESTAMPTZ '${String(value)}'`;
  if (type === 'double') return Object.is(value, -0) ? `'-0.0'::DOUBLE` : `${(value as number).toExponential(17)}::DOUBLE`;
  return `${String(value)}::${DUCK_TYPE[type]}`;
};

describe('hot-tier values', () => {
  let database: { url: string; drop(): Promise<void> };
  let db: PostgresDatabase;
  let duck: DuckDBInstance;
  let conn: DuckDBConnection;

  beforeAll(async () => {
    database = await freshDatabase(inject('databaseUrl'), 'hot_value');
    db = new PostgresDatabase({ url: database.url });
    duck = await DuckDBInstance.create(':memory:');
    conn = await duck.connect();
    await conn.run(`SET TimeZone = 'UTC'`);
    const rows = Array.from({ length: ROWS }, (_, i) => {
      const values = FEATURES.map((f) => duckLiteral(f.values[i % f.values.length], f.type));
      return `('e${i}', ${duckLiteral(EVENT_TIMES[i % EVENT_TIMES.length], 'timestamp')}, ${values.join(', ')})`;
    });
    await conn.run(`CREATE TABLE src AS SELECT * FROM (VALUES ${rows.join(', ')}) v(entity_id, event_time, ${FEATURES.map((f) => f.name).join(', ')})`);
  });

  afterAll(async () => {
    conn?.closeSync();
    duck?.closeSync();
    await db?.close();
    await database?.drop();
  });

  const columns: HotColumn[] = [{ sql: 'event_time', type: 'timestamp' }, ...FEATURES.map((f) => ({ sql: quoteIdent(f.name), type: f.type }))];

  /** Values as the sync writes them: DuckDB's columns through HotRowEncoder. */
  async function fromSync(): Promise<Map<string, Buffer>> {
    const reader = await conn.runAndReadAll(`SELECT ${hotRowsSql("'k:' || entity_id", columns, ISO_UTC_DUCK).join(', ')}, false FROM src`);
    const chunkColumns = Array.from({ length: reader.columnCount }, (_, c) => reader.getColumns()[c]!);
    const skip = chunkColumns.pop()!;
    const texts = chunkColumns.shift()!;
    const out: [string, Buffer][] = [];
    const encoder = new HotRowEncoder(columns.map((c) => c.type));
    const buffer = Buffer.alloc(encoder.bytesNeeded(texts) + 16);
    // Written from an offset, as the sync writes a chunk after another into one buffer.
    expect(encoder.encode(texts, skip, chunkColumns.map(arrayColumn), out, buffer, 16)).toBeLessThanOrEqual(buffer.length);
    return new Map(out.map(([key, value]) => [key.slice(2), value]));
  }

  /** The same rows loaded into Postgres the way the sync loads them (DuckDB's CSV into COPY). */
  async function loadPostgres(): Promise<void> {
    await db.query(`CREATE TABLE v (entity_id text NOT NULL, event_time timestamptz NOT NULL, ${FEATURES.map((f) => `${quoteIdent(f.name)} ${PG_TYPE[f.type]}`).join(', ')})`);
    const copy = await db.openCopy('v', ['entity_id', 'event_time', ...FEATURES.map((f) => f.name)]);
    expect(await pipeCsv(conn, `SELECT * FROM src`, copy)).toBe(ROWS);
    expect(await copy.finish()).toBe(ROWS);
  }

  /** Rows as Postgres serves them (times formatted by Postgres, as the catalog's select does). */
  async function served(): Promise<Map<string, FeatureRow>> {
    const select = FEATURES.map((f) => (f.type === 'timestamp' ? isoTimeSql(quoteIdent(f.name)) : quoteIdent(f.name)));
    const rows = await db.query<unknown[]>(`SELECT entity_id, ${isoTimeSql('event_time')}, ${select.join(', ')} FROM v`, [], { rowMode: 'array' });
    return new Map(rows.map((row) => [row[0] as string, { eventTime: row[1] as string, values: row.slice(2) }]));
  }

  it('decodes what the sync writes to exactly what Postgres serves, and Postgres writes the same bytes', async () => {
    await loadPostgres();
    const sync = await fromSync();
    const expected = await served();
    const fromPostgres = new Map((await db.query<unknown[]>(hotValuesFromPostgresSql('v', FEATURES), [], { rowMode: 'array' })).map((row) => [row[0] as string, row[1] as Buffer]));
    expect(sync.size).toBe(ROWS);
    for (const [id, row] of expected) {
      const value = sync.get(id)!;
      expect(value[0]).toBe(HOT_FORMAT);
      // toEqual tells -0 from 0, so doubles are checked bit for bit.
      expect(decodeHotValue(value), id).toEqual(row);
      expect(fromPostgres.get(id)!.equals(value), `${id}: Postgres ${fromPostgres.get(id)!.toString('hex')} vs sync ${value.toString('hex')}`).toBe(true);
      // A lookup filling a miss writes a value that decodes the same.
      expect(decodeHotValue(encodeHotValue(row))).toEqual(row);
    }
  });

  it('reads the double columns of DuckDB chunks in place (nulls included) to the same bytes as through arrays', async () => {
    const expected = await fromSync();
    // More rows than one chunk, with nulls, so the validity bitmap is exercised past its first word.
    await conn.run(`CREATE TABLE big AS SELECT src.* FROM src, range(80)`);
    const result = await conn.stream(`SELECT ${hotRowsSql("'k:' || entity_id", columns, ISO_UTC_DUCK).join(', ')}, false FROM big`);
    const encoder = new HotRowEncoder(columns.map((c) => c.type));
    let inPlace = 0;
    let rows = 0;
    for (;;) {
      const chunk = await result.fetchChunk();
      if (!chunk || chunk.rowCount === 0) break;
      const texts = chunk.getColumnVector(0).toArray();
      const skip = chunk.getColumnVector(chunk.columnCount - 1).toArray();
      const read = Array.from({ length: chunk.columnCount - 2 }, (_, c) => valueColumn(chunk.getColumnVector(c + 1)));
      inPlace += read.filter((c) => c.values instanceof Float64Array).length;
      const out: [string, Buffer][] = [];
      encoder.encode(texts, skip, read, out, Buffer.alloc(encoder.bytesNeeded(texts)), 0);
      for (const [key, value] of out) expect(value.equals(expected.get(key.slice(2))!), key).toBe(true);
      rows += out.length;
    }
    expect(rows).toBe(ROWS * 80);
    expect(inPlace).toBeGreaterThan(0);
  });

  it('is shorter than the same values as a JSON array', async () => {
    const sync = await fromSync();
    const binary = [...sync.values()].reduce((n, v) => n + v.length, 0);
    const json = [...sync.values()].reduce((n, v) => n + Buffer.byteLength(JSON.stringify(((r) => [r.eventTime, ...r.values])(decodeHotValue(v)))), 0);
    expect(binary).toBeLessThan(json);
  });

  it('turns epoch microseconds into the served ISO text across the numeric time range', () => {
    const floor = Date.UTC(1700, 0, 1);
    const ceiling = Date.UTC(2200, 0, 1);
    let seed = 42;
    const random = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
    for (let i = 0; i < 20_000; i++) {
      const ms = floor + Math.floor(random() * (ceiling - floor));
      const micros = String(Math.floor(random() * 1000)).padStart(3, '0');
      const text = `${new Date(ms).toISOString().slice(0, 23)}${micros}Z`;
      const encoded = encodeHotValue({ eventTime: text, values: [] });
      // Stored as a number (tag, 8 bytes), not as text.
      expect(encoded.length).toBe(1 + 9 + 1);
      expect(decodeHotValue(encoded).eventTime).toBe(text);
    }
  });

  it('round-trips any JavaScript feature values a lookup fills, bit-exact', () => {
    const values = [...INTEGERS, ...DOUBLES, ...STRINGS, ...BOOLEANS, Number.MAX_SAFE_INTEGER + 2, -(2 ** 60), Number.MIN_VALUE, '1700-01-01T00:00:00.000000Z'];
    const row = { eventTime: '0001-01-01T00:00:00.000000Z', values };
    expect(decodeHotValue(encodeHotValue(row))).toEqual(row);
    expect(Object.is(decodeHotValue(encodeHotValue({ eventTime: 'x', values: [-0] })).values[0], -0)).toBe(true);
  });

  it('still decodes values written as JSON arrays by earlier releases', () => {
    const legacy = Buffer.from(JSON.stringify(['2026-01-01T00:00:00.000000Z', 1, 2.5, 'é', null, true]));
    expect(decodeHotValue(legacy)).toEqual({ eventTime: '2026-01-01T00:00:00.000000Z', values: [1, 2.5, 'é', null, true] });
  });

  it('refuses bytes that are not a whole value, saying what to do', () => {
    const good = encodeHotValue({ eventTime: '2026-01-01T00:00:00.000000Z', values: [1, 'abc', 2.5] });
    expect(() => decodeHotValue(Buffer.from([0x42, 1, 2]))).toThrow(HotValueError);
    expect(() => decodeHotValue(good.subarray(0, good.length - 2))).toThrow(/truncated|fewer strings|sync again/);
    expect(() => decodeHotValue(good.subarray(0, 5))).toThrow(HotValueError);
    expect(() => decodeHotValue(Buffer.concat([good, Buffer.from([1])]))).toThrow(/too long|sync again/);
    expect(() => encodeHotValue({ eventTime: 'x', values: ['a\0b'] })).toThrow(/NUL/);
  });
});
