// Owns the Prometheus metrics: names in base units, OpenTelemetry HTTP names
// for requests, and only bounded labels (route templates, views, jobs, tiers;
// never entity ids). A sync job is labelled `sync_job`, since Prometheus
// reserves `job` for the scrape target.
import client from 'prom-client';

/** Latency buckets, dense around the lookup objective, with one bucket boundary exactly at it so compliance is read exactly. */
export function latencyBuckets(objectiveSeconds: number): number[] {
  const base = [0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];
  return [...new Set([...base, objectiveSeconds])].sort((a, b) => a - b);
}

export interface ViewGaugeSource {
  /** Per view: current version, rows, age of its data and its freshness objective, in seconds. */
  views(): { view: string; version: number; rows: number; ageSeconds: number; objectiveSeconds: number }[];
}

export class Metrics {
  readonly registry = new client.Registry();

  readonly requestDuration: client.Histogram<'http_request_method' | 'http_route' | 'http_response_status_code'>;

  readonly lookupsByTier = new client.Counter({
    name: 'featurestore_lookups_total',
    help: 'Entity lookups by the tier that answered them.',
    labelNames: ['view', 'tier'] as const,
    registers: [this.registry],
  });

  readonly hotTierErrors = new client.Counter({
    name: 'featurestore_hot_tier_errors_total',
    help: 'Lookup requests that met a hot-tier (Redis) failure or timeout (one per request, however many lookups a coalesced read carried), values it held that could not be decoded, and failed fills; those lookups were answered from Postgres.',
    registers: [this.registry],
  });

  readonly postgresErrors = new client.Counter({
    name: 'featurestore_postgres_errors_total',
    help: 'Lookup requests whose Postgres read failed or timed out.',
    registers: [this.registry],
  });

  readonly replicaReads = new client.Counter({
    name: 'featurestore_replica_reads_total',
    help: 'Postgres lookup reads answered by a read replica (the rest went to the primary).',
    labelNames: ['replica'] as const,
    registers: [this.registry],
  });

  readonly replicaSkips = new client.Counter({
    name: 'featurestore_replica_skips_total',
    help: 'Postgres lookup reads that passed over a replica: behind (has not replayed the served version), down, or failed (the read errored).',
    labelNames: ['replica', 'reason'] as const,
    registers: [this.registry],
  });

  readonly syncRejects = new client.Counter({
    name: 'featurestore_sync_rejects_total',
    help: 'Rows left out by sync runs because they broke a constraint.',
    labelNames: ['sync_job'] as const,
    registers: [this.registry],
  });

  readonly syncRuns = new client.Counter({
    name: 'featurestore_sync_runs_total',
    help: 'Sync runs by job and outcome.',
    labelNames: ['sync_job', 'status'] as const,
    registers: [this.registry],
  });

  readonly syncDuration = new client.Histogram({
    name: 'featurestore_sync_duration_seconds',
    help: 'Duration of sync runs that ran (succeeded or failed).',
    labelNames: ['sync_job', 'status'] as const,
    buckets: [0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600],
    registers: [this.registry],
  });

  readonly syncRows = new client.Counter({
    name: 'featurestore_sync_rows_total',
    help: 'Rows written by successful sync runs.',
    labelNames: ['sync_job'] as const,
    registers: [this.registry],
  });

  /**
   * The text served at /metrics: this process's registry, or, in a cluster
   * worker, every process's metrics aggregated (set by src/cluster.ts).
   */
  exposition: () => Promise<string> = () => this.registry.metrics();

  /** Lookup latency buckets of this process, or in a cluster worker of every serving process of the machine (set by src/cluster.ts): for the dashboard. */
  gatherLookupLatency: () => Promise<LatencyBuckets> = () => lookupLatencyBuckets(this);

  constructor(source?: ViewGaugeSource, latencyObjectiveSeconds = 0.01) {
    this.requestDuration = new client.Histogram({
      name: 'http_server_request_duration_seconds',
      help: 'Duration of HTTP server requests.',
      labelNames: ['http_request_method', 'http_route', 'http_response_status_code'] as const,
      buckets: latencyBuckets(latencyObjectiveSeconds),
      registers: [this.registry],
    });
    client.collectDefaultMetrics({ register: this.registry });
    if (!source) return;
    // Aggregated over cluster workers (each has its own catalog), a view gauge
    // reports the least favourable process: the lowest version, the oldest data,
    // the smallest margin, so freshness alerts fire if any process lags.
    const gauge = (name: string, help: string, aggregator: client.Aggregator, pick: (v: ReturnType<ViewGaugeSource['views']>[number]) => number) =>
      new client.Gauge({
        name,
        help,
        aggregator,
        labelNames: ['view'] as const,
        registers: [this.registry],
        collect() {
          this.reset();
          for (const view of source.views()) this.set({ view: view.view }, pick(view));
        },
      });
    gauge('featurestore_view_version', 'Version readers are switched to (0: none yet).', 'min', (v) => v.version);
    gauge('featurestore_view_rows', 'Entities in the served version.', 'min', (v) => v.rows);
    gauge('featurestore_view_age_seconds', 'Age of the served data: now minus its as-of time (a view with no version yet: the time this process has served without one).', 'max', (v) => v.ageSeconds);
    gauge('featurestore_view_freshness_objective_seconds', 'The view\'s freshness objective.', 'max', (v) => v.objectiveSeconds);
    gauge('featurestore_view_freshness_margin_seconds', 'Seconds until the served data passes its freshness objective (negative: past it).', 'min', (v) => v.objectiveSeconds - v.ageSeconds);
  }
}

/**
 * Cumulative counts of lookups (routes under /features/v1/) per histogram
 * bound, keyed by the bound as Prometheus writes it ('0.005', '+Inf'): plain
 * data that adds up over processes (sumBuckets).
 */
export async function lookupLatencyBuckets(metrics: Metrics): Promise<LatencyBuckets> {
  const { values } = await metrics.requestDuration.get();
  const buckets: Record<string, number> = {};
  for (const v of values) {
    if (!v.metricName?.endsWith('_bucket') || !String(v.labels.http_route ?? '').startsWith('/features/v1/')) continue;
    const le = String((v.labels as Record<string, string | number | undefined>).le);
    buckets[le] = (buckets[le] ?? 0) + v.value;
  }
  return buckets;
}

export type LatencyBuckets = Record<string, number>;

/** Several processes' lookup buckets as one. */
export function sumBuckets(all: readonly LatencyBuckets[]): LatencyBuckets {
  const sum: Record<string, number> = {};
  for (const buckets of all) for (const [le, count] of Object.entries(buckets)) sum[le] = (sum[le] ?? 0) + count;
  return sum;
}

/** The lookups counted since `base` was taken (never below 0: a process restarted meanwhile starts from nothing). */
export function bucketsSince(buckets: LatencyBuckets, base: LatencyBuckets): LatencyBuckets {
  const since: Record<string, number> = {};
  for (const [le, count] of Object.entries(buckets)) since[le] = Math.max(0, count - (base[le] ?? 0));
  return since;
}

/** Quantiles of lookup latency in seconds, interpolated within buckets as Prometheus' histogram_quantile does; null before any lookup. */
export function latencyQuantiles(buckets: LatencyBuckets, quantiles: readonly number[]): (number | null)[] {
  const sorted = Object.entries(buckets)
    .map(([le, count]) => [le === '+Inf' ? Number.POSITIVE_INFINITY : Number(le), count] as const)
    .sort((a, b) => a[0] - b[0]);
  const total = sorted.at(-1)?.[1] ?? 0;
  return quantiles.map((q) => {
    if (total === 0) return null;
    const rank = q * total;
    let previousLe = 0;
    let previousCount = 0;
    for (const [le, count] of sorted) {
      if (count >= rank) {
        if (!Number.isFinite(le)) return previousLe;
        return previousLe + ((le - previousLe) * (rank - previousCount)) / Math.max(count - previousCount, 1);
      }
      previousLe = le;
      previousCount = count;
    }
    return previousLe;
  });
}
