// Owns the read-only sync routes: GET /sync/v1/jobs (each job with its
// schedule, current version, last run, watermark and freshness) and
// GET /sync/v1/jobs/{job}/runs.
import { Hono } from 'hono';
import type { KeyGrant } from '../stores/api-keys.js';
import type { Catalog, ServedView } from '../stores/catalog.js';
import type { Database } from '../stores/database.js';
import { lastWatermark, listRuns, type RunRecord } from '../stores/metadata.js';
import { deprecationFor, requireView, visibleViews } from './features.js';
import { freshnessOf } from './freshness.js';
import { ApiError } from './problem.js';

export interface SyncStatusDeps {
  readonly catalog: Catalog;
  readonly db: Database;
}

const RUNS_DEFAULT = 20;
const RUNS_MAX = 100;

function runBody(run: RunRecord) {
  return {
    run_id: run.runId,
    job: run.job,
    status: run.status,
    trigger: run.trigger,
    scheduled_for: run.scheduledFor?.toISOString() ?? null,
    version: run.version,
    started_at: run.startedAt.toISOString(),
    finished_at: run.finishedAt?.toISOString() ?? null,
    rows_read: run.rowsRead,
    rows_written: run.rowsWritten,
    watermark: run.watermark?.toISOString() ?? null,
    error: run.error,
    details: run.details,
  };
}

function rejectUnknownParams(query: Record<string, string[]>, accepted: string[]): void {
  for (const [key, values] of Object.entries(query)) {
    if (!accepted.includes(key)) throw new ApiError('invalid-request', `unknown query parameter "${key}"; accepted: ${accepted.join(', ') || 'none'}`);
    if (values.length > 1) throw new ApiError('invalid-request', `query parameter "${key}" is given ${values.length} times; give it once`);
  }
}

export function syncStatusRoutes(deps: SyncStatusDeps): Hono {
  const { catalog, db } = deps;
  const app = new Hono();

  async function jobBody(view: ServedView, grant: KeyGrant | undefined, now: number) {
    const [lastRun] = await listRuns(db, view.job.view, 1);
    const current = view.current;
    const deprecated = view.job.deprecated && deprecationFor(view.job.deprecated, grant);
    return {
      job: view.job.view,
      description: view.job.description ?? null,
      schedule: view.job.schedule,
      next_run_at: catalog.nextRun(view.job.view)?.toISOString() ?? null,
      freshness_objective_seconds: view.job.freshnessSeconds,
      current_version: current?.version ?? null,
      rows: current?.rowCount ?? null,
      freshness: current ? freshnessOf(view, current, now) : null,
      watermark: await lastWatermark(db, view.job.view),
      last_run: lastRun ? runBody(lastRun) : null,
      deprecated: deprecated ? { since: deprecated.since.toISOString(), sunset: deprecated.sunset.toISOString(), successor: deprecated.successor ?? null } : null,
    };
  }

  app.get('/jobs', async (c) => {
    rejectUnknownParams(c.req.queries(), []);
    const now = Date.now();
    const grant = c.get('grant');
    const jobs = await Promise.all(visibleViews(catalog, grant).map((view) => jobBody(view, grant, now)));
    return c.json({ jobs }, 200, { 'Cache-Control': 'no-store' });
  });

  app.get('/jobs/:job/runs', async (c) => {
    rejectUnknownParams(c.req.queries(), ['limit']);
    const name = c.req.param('job');
    requireView(catalog, name, c.get('grant'));
    const limitText = c.req.query('limit');
    const limit = limitText === undefined ? RUNS_DEFAULT : Number(limitText);
    if (!/^\d+$/.test(limitText ?? '20') || limit < 1 || limit > RUNS_MAX) throw new ApiError('invalid-request', `limit must be a whole number from 1 to ${RUNS_MAX}, got "${limitText}"`);
    const runs = await listRuns(db, name, limit);
    return c.json({ job: name, runs: runs.map(runBody) }, 200, { 'Cache-Control': 'no-store' });
  });

  return app;
}
