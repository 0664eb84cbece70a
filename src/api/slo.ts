// Owns GET /slo/v1: each objective's compliance, remaining error budget and
// burn rates as this process has seen them (as every serving process of the
// machine has, with WEB_CONCURRENCY > 1), and each view's freshness against
// its objective.
import { Hono } from 'hono';
import type { Catalog } from '../stores/catalog.js';
import type { SloTracker } from '../observability/slo.js';
import { freshnessOf } from './freshness.js';
import { ApiError } from './problem.js';

export function sloRoutes(deps: { readonly catalog: Catalog; readonly slo: SloTracker }): Hono {
  const app = new Hono();
  app.get('/', async (c) => {
    const unknown = Object.keys(c.req.queries());
    if (unknown.length) throw new ApiError('invalid-request', `unknown query parameter "${unknown[0]}"; /slo/v1 takes none`);
    const now = Date.now();
    const freshness = deps.catalog.list().map((view) => {
      const meta = view.current ? freshnessOf(view, view.current, now) : null;
      return {
        view: view.job.view,
        version: meta?.version ?? null,
        as_of: meta?.as_of ?? null,
        age_seconds: meta?.age_seconds ?? null,
        objective_seconds: view.job.freshnessSeconds,
        seconds_to_objective: meta ? view.job.freshnessSeconds - meta.age_seconds : null,
        // A view with nothing published is not fresh: nothing can be served from it.
        fresh: meta?.fresh ?? false,
      };
    });
    return c.json({ ...deps.slo.report(await deps.slo.gather()), freshness }, 200, { 'Cache-Control': 'no-store' });
  });
  return app;
}
