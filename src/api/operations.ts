// Owns the routes for operators and tooling: liveness, readiness, Prometheus
// metrics and the OpenAPI document.
import { Hono } from 'hono';
import { withDeadline } from '../deadline.js';
import type { Catalog } from '../stores/catalog.js';
import type { Database } from '../stores/database.js';
import type { HotTier } from '../stores/hot-tier.js';
import type { Metrics } from '../observability/metrics.js';
import type { ReplicaSet } from '../stores/postgres.js';

export interface OperationRouteDeps {
  readonly catalog: Catalog;
  readonly db: Database;
  readonly hot: HotTier | null;
  readonly metrics: Metrics;
  readonly openapiYaml: string;
  /** For the replicas its Postgres reads are routed to (reported, never a reason to be unready: the primary answers). */
  readonly replicas?: ReplicaSet | undefined;
}

const CHECK_TIMEOUT_MS = 1000;

async function check(probe: () => Promise<void>): Promise<'ok' | 'unreachable'> {
  try {
    await withDeadline(probe(), CHECK_TIMEOUT_MS, () => new Error('timeout'));
    return 'ok';
  } catch {
    return 'unreachable';
  }
}

export function operationRoutes(deps: OperationRouteDeps): Hono {
  const app = new Hono();

  app.get('/healthz', (c) => c.json({ status: 'ok' }, 200, { 'Cache-Control': 'no-store' }));

  // Ready means: every view has a version to serve and at least one store
  // answers. One store down is "degraded" (still 200): Redis down costs speed,
  // Postgres down costs the entities Redis does not hold.
  app.get('/readyz', async (c) => {
    const [postgres, hotTier] = await Promise.all([check(() => deps.db.ping()), deps.hot ? check(() => deps.hot!.ping()) : Promise.resolve('ok' as const)]);
    const views = Object.fromEntries(deps.catalog.list().map((v) => [v.job.view, v.current ? { version: v.current.version } : { version: null }]));
    const viewsReady = Object.values(views).every((v) => v.version !== null);
    const ready = viewsReady && (postgres === 'ok' || (deps.hot !== null && hotTier === 'ok'));
    const status = !ready ? 'not_ready' : postgres === 'ok' && hotTier === 'ok' ? 'ready' : 'degraded';
    // From the replicas' last poll: costs no query here.
    const replicas = deps.replicas?.status().map(({ replayLsn, ...rest }) => ({ ...rest, replay_lsn: replayLsn }));
    return c.json(
      { status, checks: { postgres, hot_tier: deps.hot ? { kind: deps.hot.kind, status: hotTier } : { kind: 'none', status: 'ok' }, views, ...(replicas ? { replicas } : {}) } },
      ready ? 200 : 503,
      { 'Cache-Control': 'no-store' },
    );
  });

  app.get('/metrics', async (c) => c.body(await deps.metrics.exposition(), 200, { 'Content-Type': deps.metrics.registry.contentType }));

  app.get('/openapi.yaml', (c) => c.body(deps.openapiYaml, 200, { 'Content-Type': 'application/yaml; charset=utf-8', 'Cache-Control': 'public, max-age=300' }));

  return app;
}
