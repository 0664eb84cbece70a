// Owns the optional in-process tier in front of Redis and Postgres: rows of the
// versions being served, kept in this process's memory up to a bound per view.
// A version's rows never change after it is published, and the cache is keyed
// by the version object the catalog serves, so it can never answer with a
// version other than the one readers are switched to: when the catalog moves
// a view to another version, that version starts with an empty cache and the
// old one's rows are garbage once no request holds it.
import type { ServedVersion } from './catalog.js';
import type { FeatureRow, FeatureSource, ReadResult } from './reader.js';

export class ProcessCache implements FeatureSource {
  private readonly byVersion = new WeakMap<ServedVersion, Map<string, FeatureRow>>();

  /** @param maxEntriesPerView rows kept per served version; the oldest entry leaves first (FIFO). */
  constructor(
    private readonly inner: FeatureSource,
    private readonly maxEntriesPerView: number,
  ) {}

  async read(version: ServedVersion, ids: readonly string[]): Promise<ReadResult> {
    let rows = this.byVersion.get(version);
    if (!rows) {
      rows = new Map();
      this.byVersion.set(version, rows);
    }
    const found: (FeatureRow | null)[] = new Array(ids.length);
    const missing: number[] = [];
    for (let i = 0; i < ids.length; i++) {
      const row = rows.get(ids[i]!);
      if (row) found[i] = row;
      else missing.push(i);
    }
    if (missing.length === 0) return { rows: found, tier: 'memory', hotError: undefined, timings: {} };

    const result = await this.inner.read(version, missing.length === ids.length ? ids : missing.map((i) => ids[i]!));
    missing.forEach((at, j) => {
      const row = result.rows[j] ?? null;
      found[at] = row;
      // Absent entities are not kept: the bound is for rows that exist, not for every id a caller tries.
      if (row) this.remember(rows, ids[at]!, row);
    });
    return { ...result, rows: found };
  }

  private remember(rows: Map<string, FeatureRow>, id: string, row: FeatureRow): void {
    if (rows.size >= this.maxEntriesPerView) {
      const oldest = rows.keys().next();
      if (!oldest.done) rows.delete(oldest.value);
    }
    rows.set(id, row);
  }
}
