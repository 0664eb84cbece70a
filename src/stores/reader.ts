// Owns the read path: the hot tier first, Postgres for what it misses or when
// it is unavailable, filling the hot tier behind Postgres. Both stores hold the
// same version, so the answer does not depend on which one gave it.
import type { Tracer } from '@opentelemetry/api';
import { inSpan } from '../observability/tracing.js';
import type { ServedVersion } from './catalog.js';
import type { Database } from './database.js';
import type { HotTier } from './hot-tier.js';
import { hotKey } from './hot-tier.js';
import type { ReplicaSet } from './postgres.js';
import { decodeHotValue, encodeHotValue } from './hot-value.js';

/** One entity's stored row: its event time and the feature values in the version's order. */
export interface FeatureRow {
  readonly eventTime: string;
  readonly values: readonly unknown[];
}

export type Tier = 'memory' | 'redis' | 'postgres';

export interface ReadResult {
  /** In the order of the ids asked for; null where the version has no such entity. */
  readonly rows: (FeatureRow | null)[];
  /** The tier that answered, or the slowest one involved when several did. */
  readonly tier: Tier;
  readonly hotError: Error | undefined;
  /** Milliseconds spent in each store, for Server-Timing. */
  readonly timings: { hot?: number; postgres?: number };
}

/** What the API reads features through: the tiered reader, or the in-process cache in front of it. */
export interface FeatureSource {
  read(version: ServedVersion, ids: readonly string[]): Promise<ReadResult>;
}

export interface ReaderOptions {
  /** TTL of entries written into the hot tier after a miss. */
  readonly fillTtlSeconds: number;
  /** After a store fails, skip it for this long before trying again (a circuit breaker), so an absent store costs nothing per request. */
  readonly hotRetryAfterMs?: number;
  /** Spans for each store read, when tracing is on. */
  readonly tracer?: Tracer | undefined;
  readonly onHotError?: (error: Error) => void;
  readonly onPostgresError?: (error: Error) => void;
  /** Streaming replicas that Postgres reads go to first, each only for versions it has replayed; the primary is the last resort. */
  readonly replicas?: ReplicaSet | undefined;
}

/** Postgres could not answer; the caller reports the stores as unavailable. */
export class StoreUnavailableError extends Error {
  override name = 'StoreUnavailableError';
}

/** Postgres no longer has the version asked for (it was reclaimed); the caller refreshes and retries. */
export class VersionGoneError extends Error {
  override name = 'VersionGoneError';
}

const HOT_TIER_SKIPPED = new Error('the hot tier failed recently and is skipped until its retry time');

export class FeatureReader implements FeatureSource {
  /** Until when the hot tier is skipped after a failure. */
  private hotOpenUntil = 0;
  /** Until when Postgres is not asked after it failed: misses are refused at once instead of each waiting out a timeout. */
  private postgresOpenUntil = 0;

  constructor(
    private readonly db: Database,
    private readonly hot: HotTier | null,
    private readonly options: ReaderOptions,
  ) {}

  async read(version: ServedVersion, ids: readonly string[]): Promise<ReadResult> {
    const rows: (FeatureRow | null)[] = new Array(ids.length).fill(null);
    let missing: number[] = ids.map((_, i) => i);
    let hotError: Error | undefined;
    let tier: Tier = 'postgres';
    const timings: { hot?: number; postgres?: number } = {};
    const tracer = this.options.tracer;

    if (this.hot && (this.hotOpenUntil === 0 || Date.now() >= this.hotOpenUntil)) {
      try {
        const started = performance.now();
        const keys = ids.map((id) => hotKey(version.view, version.version, id));
        const hot = this.hot;
        // Without tracing, no span arguments are built at all: this is the hottest line of a lookup.
        const values = tracer
          ? await inSpan(tracer, `${hot.kind} get`, { 'db.system': hot.kind === 'redis' ? 'redis' : 'memory', 'db.operation.name': keys.length === 1 ? 'GET' : 'MGET', 'featurestore.keys': keys.length }, () => hot.get(keys))
          : await hot.get(keys);
        timings.hot = performance.now() - started;
        missing = [];
        values.forEach((value, i) => {
          if (value === null) {
            missing.push(i);
            return;
          }
          try {
            rows[i] = decodeHotValue(value);
          } catch (error) {
            // A value that cannot be decoded (corrupt, or from an unknown release) is read from Postgres
            // like a miss, and the fill below rewrites it; the hot tier itself answered, so it stays in use.
            missing.push(i);
            this.options.onHotError?.(error as Error);
          }
        });
        tier = this.hot.kind;
        this.hotOpenUntil = 0;
      } catch (error) {
        hotError = error as Error;
        this.hotOpenUntil = Date.now() + (this.options.hotRetryAfterMs ?? 1000);
        this.options.onHotError?.(hotError);
      }
    } else if (this.hot) {
      hotError = HOT_TIER_SKIPPED;
    }
    if (missing.length === 0) return { rows, tier, hotError, timings };

    const wanted = missing.map((i) => ids[i]!);
    const started = performance.now();
    const found = await inSpan(tracer, 'postgres select', { 'db.system': 'postgresql', 'db.operation.name': 'SELECT', 'featurestore.keys': wanted.length }, () => this.readPostgres(version, wanted));
    timings.postgres = performance.now() - started;
    const fills: [string, Buffer][] = [];
    for (const i of missing) {
      const row = found.get(ids[i]!);
      if (!row) continue;
      rows[i] = row;
      if (this.hot && !hotError) {
        // A value the hot tier cannot hold is served from Postgres each time rather than failing the lookup.
        try {
          fills.push([hotKey(version.view, version.version, ids[i]!), encodeHotValue(row)]);
        } catch (error) {
          this.options.onHotError?.(error as Error);
        }
      }
    }
    // Filling is best effort and off the response path.
    if (fills.length) void this.hot!.set(fills, this.options.fillTtlSeconds).catch((error: Error) => this.options.onHotError?.(error));
    return { rows, tier: 'postgres', hotError, timings };
  }

  private async readPostgres(version: ServedVersion, ids: readonly string[]): Promise<Map<string, FeatureRow>> {
    // Pinned to the version readers are switched to: a replica that has not replayed its switch is skipped.
    const fromReplica = await this.options.replicas?.query<unknown[]>(version.view, version.generation, version.select.text, [ids], { name: version.select.name, rowMode: 'array' });
    if (fromReplica) return toRows(fromReplica);
    if (this.postgresOpenUntil !== 0 && Date.now() < this.postgresOpenUntil) throw new StoreUnavailableError('Postgres failed recently and is skipped until its retry time');
    let result: unknown[][];
    try {
      result = await this.db.query<unknown[]>(version.select.text, [ids], { name: version.select.name, rowMode: 'array' });
      this.postgresOpenUntil = 0;
    } catch (error) {
      if ((error as { code?: string }).code === '42P01') throw new VersionGoneError(`version ${version.version} of ${version.view} is no longer stored`);
      this.postgresOpenUntil = Date.now() + (this.options.hotRetryAfterMs ?? 1000);
      this.options.onPostgresError?.(error as Error);
      throw new StoreUnavailableError((error as Error).message);
    }
    return toRows(result);
  }
}

function toRows(result: unknown[][]): Map<string, FeatureRow> {
  const byId = new Map<string, FeatureRow>();
  for (const row of result) byId.set(row[0] as string, { eventTime: row[1] as string, values: row.slice(2) });
  return byId;
}
