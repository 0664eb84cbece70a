// Owns the format of a hot-tier value: one entity's event time and feature
// values, in the version's feature order, as compact self-describing bytes.
// Three writers produce it (the sync from DuckDB's columns, Postgres after an
// incremental merge, a lookup filling a miss) and one reader decodes it on
// every lookup, so all four live here and must agree byte for byte
// (test/sync/hot-value.test.ts holds them to it).
//
// Layout: the format byte; per value a tag and its fixed-size payload
// (big-endian); an end tag; then the text of each string value, in order,
// each as UTF-8 followed by a NUL byte (which no stored string contains):
//   0 null | 1 false | 2 true | 3 int8 | 4 int16 | 5 int32 | 6 int64 | 7 float64
//   8 string (its text is the next one after the end tag)
//   9 time (int64 microseconds since 1970-01-01T00:00:00Z, for 1700 to 2199;
//     other instants are stored as their ISO text, exactly as served)
//   255 end
// No names, epoch numbers instead of ISO text, and raw IEEE doubles make a
// value about 60% the length of the same features as a JSON array, and doubles
// stay bit-exact. Keeping the strings together lets DuckDB hand the sync all
// of a row's text in one string, so the sync does no per-value text work.
// Values written as JSON arrays by earlier releases (first byte '[') still
// decode, so a version published before an upgrade keeps serving.
import type { FeatureType } from '../jobs/definition.js';
import type { FeatureRow } from './reader.js';

/** First byte of every value in this format: a UTF-8 continuation byte, so never the start of JSON text. */
export const HOT_FORMAT = 0xb1;
const LEGACY_JSON = 0x5b; // '['

const NULL = 0;
const FALSE = 1;
const TRUE = 2;
const INT8 = 3;
const INT16 = 4;
const INT32 = 5;
const INT64 = 6;
const FLOAT64 = 7;
const STRING = 8;
const TIME = 9;
const END = 0xff;

const TWO_32 = 4294967296;
/** int64 microseconds whose high word lies in ±2^20 are below 2^52 in magnitude: exact as a double. */
const SAFE_HIGH_WORD = 0x100000;
/** Times stored as numbers: their microseconds are exact as doubles (below 2^53), which the sync reads them as. */
const TIME_FLOOR = '1700-01-01 00:00:00+00';
const TIME_CEILING = '2199-12-31 23:59:59.999999+00';
const TIME_FLOOR_MS = Date.UTC(1700, 0, 1);
const TIME_CEILING_MS = Date.UTC(2200, 0, 1);

const pad2 = (n: number) => (n < 10 ? `0${n}` : String(n));
const MS_PER_DAY = 86_400_000;

/**
 * ISO 8601 UTC with microseconds and Z, as the sync and Postgres format times,
 * for years 1 to 9999. Built by hand (days to a civil date, after Howard
 * Hinnant's algorithm): Date#toISOString costs more than the rest of a decode.
 */
function isoFromMicros(ms: number, micros: number): string {
  const days = Math.floor(ms / MS_PER_DAY);
  let rest = ms - days * MS_PER_DAY;
  const z = days + 719468;
  const era = Math.floor(z / 146097);
  const doe = z - era * 146097;
  const yoe = Math.floor((doe - Math.floor(doe / 1460) + Math.floor(doe / 36524) - Math.floor(doe / 146096)) / 365);
  const doy = doe - (365 * yoe + Math.floor(yoe / 4) - Math.floor(yoe / 100));
  const mp = Math.floor((5 * doy + 2) / 153);
  const day = doy - Math.floor((153 * mp + 2) / 5) + 1;
  const month = mp < 10 ? mp + 3 : mp - 9;
  const year = yoe + era * 400 + (month <= 2 ? 1 : 0);
  const hour = Math.floor(rest / 3_600_000);
  rest -= hour * 3_600_000;
  const minute = Math.floor(rest / 60_000);
  rest -= minute * 60_000;
  const second = Math.floor(rest / 1000);
  const fraction = (rest - second * 1000) * 1000 + micros;
  const y = year < 10 ? `000${year}` : year < 100 ? `00${year}` : year < 1000 ? `0${year}` : String(year);
  const f = fraction < 10 ? `00000${fraction}` : fraction < 100 ? `0000${fraction}` : fraction < 1000 ? `000${fraction}` : fraction < 10000 ? `00${fraction}` : fraction < 100000 ? `0${fraction}` : String(fraction);
  return `${y}-${pad2(month)}-${pad2(day)}T${pad2(hour)}:${pad2(minute)}:${pad2(second)}.${f}Z`;
}

function readTime(view: DataView, at: number): string {
  const high = view.getInt32(at);
  if (high >= -SAFE_HIGH_WORD && high < SAFE_HIGH_WORD) {
    const us = high * TWO_32 + view.getUint32(at + 4);
    let ms = Math.floor(us / 1000);
    let rest = us - ms * 1000;
    // Guard the float division at the edges of an integer millisecond.
    if (rest < 0) (ms -= 1), (rest += 1000);
    else if (rest >= 1000) (ms += 1), (rest -= 1000);
    return isoFromMicros(ms, rest);
  }
  const us = view.getBigInt64(at);
  let ms = us / 1000n;
  let rest = us - ms * 1000n;
  if (rest < 0n) (ms -= 1n), (rest += 1000n);
  return isoFromMicros(Number(ms), Number(rest));
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

function readString(bytes: Uint8Array, start: number, end: number): string {
  // Short ASCII strings (most feature values) are cheaper built here than through a decoder call.
  if (end - start <= 24) {
    let text = '';
    for (let i = start; i < end; i++) {
      const c = bytes[i]!;
      if (c > 0x7f) return utf8.decode(bytes.subarray(start, end));
      text += String.fromCharCode(c);
    }
    return text;
  }
  return utf8.decode(bytes.subarray(start, end));
}

export class HotValueError extends Error {
  override name = 'HotValueError';
}

const corrupt = (what: string) => new HotValueError(`a hot-tier value ${what}; drop the version's hot-tier keys and sync again`);

/** Decodes one hot-tier value; throws HotValueError on bytes that are not a whole value. */
export function decodeHotValue(value: Uint8Array): FeatureRow {
  try {
    return decode(value);
  } catch (error) {
    // A payload cut short reads past the end.
    if (error instanceof RangeError) throw corrupt('is truncated');
    throw error;
  }
}

function decode(value: Uint8Array): FeatureRow {
  if (value[0] === LEGACY_JSON) {
    const array = JSON.parse(utf8.decode(value)) as unknown[];
    return { eventTime: array[0] as string, values: array.slice(1) };
  }
  if (value[0] !== HOT_FORMAT) throw corrupt(`starts with byte ${value[0]}, which is no known format`);
  const view = new DataView(value.buffer, value.byteOffset, value.byteLength);
  const out: unknown[] = [];
  const length = value.length;
  // Where the strings begin: just after the end tag, found by walking the tags.
  let strings = 0;
  let at = 1;
  let stringCount = 0;
  while (strings === 0) {
    if (at >= length) throw corrupt('has no end tag');
    const tag = value[at++];
    switch (tag) {
      case NULL:
        out.push(null);
        break;
      case FALSE:
        out.push(false);
        break;
      case TRUE:
        out.push(true);
        break;
      case INT8:
        out.push(view.getInt8(at));
        at += 1;
        break;
      case INT16:
        out.push(view.getInt16(at));
        at += 2;
        break;
      case INT32:
        out.push(view.getInt32(at));
        at += 4;
        break;
      case INT64:
        // The sync refuses integers beyond ±2^53, so high × 2^32 + low is exact.
        out.push(view.getInt32(at) * TWO_32 + view.getUint32(at + 4));
        at += 8;
        break;
      case FLOAT64:
        out.push(view.getFloat64(at));
        at += 8;
        break;
      case STRING:
        // A placeholder, filled from the strings below.
        out.push(STRING_SLOT);
        stringCount++;
        break;
      case TIME:
        out.push(readTime(view, at));
        at += 8;
        break;
      case END:
        strings = at;
        break;
      default:
        throw corrupt(`has an unknown tag ${tag} at byte ${at - 1}`);
    }
  }
  if (stringCount > 0) {
    let cursor = strings;
    for (let i = 0; i < out.length; i++) {
      if (out[i] !== STRING_SLOT) continue;
      const stop = value.indexOf(0, cursor);
      if (stop < 0) throw corrupt('has fewer strings than its tags say');
      out[i] = readString(value, cursor, stop);
      cursor = stop + 1;
    }
    strings = cursor;
  }
  if (strings !== length || out.length === 0 || typeof out[0] !== 'string') throw corrupt('is truncated, too long, or has no event time');
  const eventTime = out.shift() as string;
  return { eventTime, values: out };
}

const STRING_SLOT = Symbol('string');

const ISO_MICROS = /^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3})(\d{3})Z$/;

/** The microseconds of an ISO time in the served format, if it round-trips and is stored as a number. */
function parseIsoMicros(text: string): number | undefined {
  const match = ISO_MICROS.exec(text);
  if (!match) return undefined;
  const ms = Date.parse(`${match[1]}Z`);
  if (!(ms >= TIME_FLOOR_MS && ms < TIME_CEILING_MS)) return undefined;
  const micros = Number(match[2]);
  return isoFromMicros(ms, micros) === text ? ms * 1000 + micros : undefined;
}

function writeTime(out: Buffer, at: number, micros: number): number {
  out[at] = TIME;
  const high = Math.floor(micros / TWO_32);
  out.writeInt32BE(high, at + 1);
  out.writeUInt32BE(micros - high * TWO_32, at + 5);
  return at + 9;
}

function writeNumber(out: Buffer, at: number, v: number): number {
  if (Number.isSafeInteger(v) && !Object.is(v, -0)) {
    if (v >= -128 && v <= 127) {
      out[at] = INT8;
      out.writeInt8(v, at + 1);
      return at + 2;
    }
    if (v >= -32768 && v <= 32767) {
      out[at] = INT16;
      out.writeInt16BE(v, at + 1);
      return at + 3;
    }
    if (v >= -2147483648 && v <= 2147483647) {
      out[at] = INT32;
      out.writeInt32BE(v, at + 1);
      return at + 5;
    }
    out[at] = INT64;
    const high = Math.floor(v / TWO_32);
    out.writeInt32BE(high, at + 1);
    out.writeUInt32BE(v - high * TWO_32, at + 5);
    return at + 9;
  }
  return writeDouble(out, at, v);
}

function writeDouble(out: Buffer, at: number, v: number): number {
  out[at] = FLOAT64;
  out.writeDoubleBE(v, at + 1);
  return at + 9;
}

/**
 * Encodes a row read from Postgres (a lookup filling a miss). Values are typed
 * by their JavaScript value: times arrive as ISO strings and stay strings,
 * which decode to the same text; numbers that are integers take the integer
 * tags, which decode to the same number.
 */
export function encodeHotValue(row: FeatureRow): Buffer {
  const texts: string[] = [];
  const out = Buffer.allocUnsafe(2 + 9 * (row.values.length + 1) + 3 * (row.eventTime.length + row.values.reduce<number>((n, v) => n + (typeof v === 'string' ? v.length + 1 : 0), 1)));
  out[0] = HOT_FORMAT;
  let at = 1;
  const micros = parseIsoMicros(row.eventTime);
  if (micros !== undefined) at = writeTime(out, at, micros);
  else {
    out[at++] = STRING;
    texts.push(row.eventTime);
  }
  for (const v of row.values) {
    if (v === null || v === undefined) out[at++] = NULL;
    else if (v === true) out[at++] = TRUE;
    else if (v === false) out[at++] = FALSE;
    else if (typeof v === 'number') at = writeNumber(out, at, v);
    else if (typeof v === 'string') {
      if (v.includes('\0')) throw new HotValueError('a string feature value contains a NUL character, which the hot tier cannot store');
      out[at++] = STRING;
      texts.push(v);
    } else throw new HotValueError(`a feature value of type ${typeof v} has no hot-tier encoding`);
  }
  out[at++] = END;
  for (const text of texts) {
    at += out.write(text, at);
    out[at++] = 0;
  }
  return out.subarray(0, at);
}

/**
 * Encodes the sync's rows from the columns of a DuckDB result chunk, selected
 * as `hotRowsSql` says: per row, one string holding the key and all the text
 * (the key, a NUL, then each string value followed by a NUL), and one column
 * per value with numbers as doubles. The values of a chunk share one buffer,
 * so nothing is allocated or formatted per value.
 */
export class HotRowEncoder {
  private readonly kinds: Uint8Array;

  constructor(types: readonly FeatureType[]) {
    this.kinds = Uint8Array.from(types, (type) => KIND[type]);
  }

  /** Bytes `encode` may need for these rows, at most. */
  bytesNeeded(texts: readonly unknown[]): number {
    let textChars = 0;
    for (let r = 0; r < texts.length; r++) textChars += (texts[r] as string).length;
    return texts.length * (2 + 9 * this.kinds.length) + 3 * textChars;
  }

  /**
   * Appends [key, value] for each row not flagged in `skip` to `out`, the
   * values written into `buffer` from `offset` (which must have
   * `bytesNeeded(texts)` bytes free); returns the offset after them.
   * `columns` are the value columns in order.
   */
  encode(texts: readonly unknown[], skip: readonly unknown[], columns: readonly ValueColumn[], out: [string, Buffer][], buffer: Buffer, offset: number): number {
    const rows = texts.length;
    const kinds = this.kinds;
    const width = kinds.length;
    // A DataView's setters are much cheaper per call than Buffer's checked write methods.
    const view = new DataView(buffer.buffer, buffer.byteOffset, buffer.byteLength);
    let at = offset;
    for (let r = 0; r < rows; r++) {
      if (skip[r]) continue;
      const text = texts[r] as string;
      const start = at;
      buffer[at++] = HOT_FORMAT;
      for (let c = 0; c < width; c++) {
        const column = columns[c]!;
        const valid = column.valid;
        const v = column.values[r] as number | boolean | null;
        if (v === null || (valid !== null && (valid[r >> 3]! & (1 << (r & 7))) === 0)) {
          buffer[at++] = NULL;
          continue;
        }
        switch (kinds[c]) {
          case KIND.integer: {
            // Integer columns arrive as doubles holding integers below 2^53.
            const n = v as number;
            if (n >= -128 && n <= 127) {
              buffer[at] = INT8;
              view.setInt8(at + 1, n);
              at += 2;
            } else if (n >= -32768 && n <= 32767) {
              buffer[at] = INT16;
              view.setInt16(at + 1, n);
              at += 3;
            } else if (n >= -2147483648 && n <= 2147483647) {
              buffer[at] = INT32;
              view.setInt32(at + 1, n);
              at += 5;
            } else {
              buffer[at] = INT64;
              const high = Math.floor(n / TWO_32);
              view.setInt32(at + 1, high);
              view.setUint32(at + 5, n - high * TWO_32);
              at += 9;
            }
            break;
          }
          case KIND.double:
            buffer[at] = FLOAT64;
            view.setFloat64(at + 1, v as number);
            at += 9;
            break;
          case KIND.boolean:
            buffer[at++] = v ? TRUE : FALSE;
            break;
          case KIND.string:
            // The column says only that the string is there; its text is in `text`.
            buffer[at++] = STRING;
            break;
          case KIND.timestamp: {
            const us = v as number;
            // NaN: outside the numeric range; its ISO text is in `text`.
            if (us !== us) buffer[at++] = STRING;
            else {
              buffer[at] = TIME;
              const high = Math.floor(us / TWO_32);
              view.setInt32(at + 1, high);
              view.setUint32(at + 5, us - high * TWO_32);
              at += 9;
            }
            break;
          }
        }
      }
      buffer[at++] = END;
      const keyEnd = text.indexOf('\0');
      // Copy ASCII by hand (most text is); hand the rest to the UTF-8 encoder.
      for (let i = keyEnd + 1; i < text.length; i++) {
        const code = text.charCodeAt(i);
        if (code < 0x80) buffer[at++] = code;
        else {
          at += buffer.write(text.slice(i), at);
          break;
        }
      }
      out.push([text.slice(0, keyEnd), buffer.subarray(start, at)]);
    }
    return at;
  }
}

/**
 * One value column of a chunk: its values (an array with null for a missing
 * value, or a typed array), and when the values are a typed array, its
 * validity bitmap (bit r set: row r has a value; null: every row has one).
 */
export interface ValueColumn {
  readonly values: ArrayLike<unknown>;
  readonly valid: Uint8Array | null;
}

/** A column given as an array with null for a missing value. */
export const arrayColumn = (values: readonly unknown[]): ValueColumn => ({ values, valid: null });

const KIND = { integer: 0, double: 1, boolean: 2, string: 3, timestamp: 4 } as const satisfies Record<FeatureType, number>;

/** A column to encode: SQL for its value, and its declared type. */
export interface HotColumn {
  readonly sql: string;
  readonly type: FeatureType;
}

const inTimeRange = (c: string) => `${c} BETWEEN TIMESTAMPTZ '${TIME_FLOOR}' AND TIMESTAMPTZ '${TIME_CEILING}'`;

/**
 * DuckDB select-list items for HotRowEncoder: the text (key SQL, NUL, then
 * each string value and each out-of-range time's ISO text, each ended by a
 * NUL), then per column its value as the encoder reads it: numbers and times
 * (microseconds, NaN when out of range) as DOUBLE, which is exact for integers
 * below 2^53 (the contract's limit) and for times in range; strings as whether
 * they are present.
 */
export function hotRowsSql(keySql: string, columns: readonly HotColumn[], isoFormat: string): string[] {
  const text = [keySql, 'chr(0)'];
  const values: string[] = [];
  for (const { sql: c, type } of columns) {
    switch (type) {
      case 'string':
        text.push(`${c} || chr(0)`);
        values.push(`CASE WHEN ${c} IS NOT NULL THEN true END`);
        break;
      case 'timestamp':
        text.push(`CASE WHEN NOT (${inTimeRange(c)}) THEN strftime(${c}, ${isoFormat}) || chr(0) END`);
        values.push(`CASE WHEN ${inTimeRange(c)} THEN CAST(epoch_us(${c}) AS DOUBLE) WHEN ${c} IS NOT NULL THEN 'NaN'::DOUBLE END`);
        break;
      case 'integer':
      case 'double':
        values.push(`CAST(${c} AS DOUBLE)`);
        break;
      case 'boolean':
        values.push(c);
        break;
    }
  }
  // concat() skips NULLs: an absent string adds nothing to the text.
  return [`concat(${text.join(', ')})`, ...values];
}

const pgByte = (tag: number) => `'\\x${tag.toString(16).padStart(2, '0')}'::bytea`;
/** The last byte of a two-byte big-endian integer: an int8 in two's complement. */
const pgLowByte = (sql: string) => `substring(int2send((${sql})::int2) from 2 for 1)`;
const pgInTimeRange = (c: string) => `${c} BETWEEN '${TIME_FLOOR}'::timestamptz AND '${TIME_CEILING}'::timestamptz`;

function pgValue(column: HotColumn): string {
  const c = column.sql;
  let present: string;
  switch (column.type) {
    case 'boolean':
      present = `CASE WHEN ${c} THEN ${pgByte(TRUE)} ELSE ${pgByte(FALSE)} END`;
      break;
    case 'integer':
      present = `CASE WHEN ${c} BETWEEN -128 AND 127 THEN ${pgByte(INT8)} || ${pgLowByte(c)}
        WHEN ${c} BETWEEN -32768 AND 32767 THEN ${pgByte(INT16)} || int2send((${c})::int2)
        WHEN ${c} BETWEEN -2147483648 AND 2147483647 THEN ${pgByte(INT32)} || int4send((${c})::int4)
        ELSE ${pgByte(INT64)} || int8send((${c})::int8) END`;
      break;
    case 'double':
      present = `${pgByte(FLOAT64)} || float8send((${c})::float8)`;
      break;
    case 'string':
      present = pgByte(STRING);
      break;
    case 'timestamp':
      present = `CASE WHEN ${pgInTimeRange(c)} THEN ${pgByte(TIME)} || int8send((extract(epoch FROM ${c}) * 1000000)::int8) ELSE ${pgByte(STRING)} END`;
      break;
  }
  return `CASE WHEN ${c} IS NULL THEN ${pgByte(NULL)} ELSE ${present} END`;
}

function pgText(column: HotColumn, isoSql: (column: string) => string): string | undefined {
  const c = column.sql;
  if (column.type === 'string') return `coalesce(convert_to(${c}, 'UTF8') || ${pgByte(0)}, ''::bytea)`;
  if (column.type === 'timestamp') return `CASE WHEN NOT (${pgInTimeRange(c)}) THEN convert_to(${isoSql(c)}, 'UTF8') || ${pgByte(0)} ELSE ''::bytea END`;
  return undefined;
}

/** Postgres SQL for the same value as the sync writes, byte for byte; a bytea. */
export function hotValuePostgresSql(columns: readonly HotColumn[], isoSql: (column: string) => string): string {
  const texts = columns.map((c) => pgText(c, isoSql)).filter((t): t is string => t !== undefined);
  return [pgByte(HOT_FORMAT), ...columns.map(pgValue), pgByte(END), ...texts].join(' || ');
}

/** A value as a Buffer without copying, whatever Uint8Array a driver returned. */
export function asBuffer(bytes: Uint8Array): Buffer {
  return Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}
