// Owns reading DuckDB result columns for the hot-tier encoder without
// allocating per value.
import os from 'node:os';
import { DuckDBTypeId, type DuckDBVector } from '@duckdb/node-api';
import { arrayColumn, type ValueColumn } from '../stores/hot-value.js';

/** The validity bitmap is 64-bit words; read as bytes, bit r is at byte r >> 3 only on a little-endian machine. */
const LITTLE_ENDIAN = os.endianness() === 'LE';

/**
 * A DOUBLE vector's values as its own Float64Array and validity bitmap, read
 * in place: copying them into an array boxes every double, and those
 * allocations were most of the sync's garbage collection. This reads fields
 * @duckdb/node-api does not publish, so it checks their shape and otherwise
 * falls back to the public (slower) toArray.
 */
export function valueColumn(vector: DuckDBVector): ValueColumn {
  const inner = vector as unknown as { items?: unknown; validity?: { data?: unknown; offset?: unknown } };
  const { items, validity } = inner;
  if (LITTLE_ENDIAN && vector.type.typeId === DuckDBTypeId.DOUBLE && items instanceof Float64Array && items.length === vector.itemCount && validity && validity.offset === 0) {
    if (validity.data === null) return { values: items, valid: null };
    if (validity.data instanceof BigUint64Array) return { values: items, valid: new Uint8Array(validity.data.buffer, validity.data.byteOffset, validity.data.byteLength) };
  }
  return arrayColumn(vector.toArray());
}

