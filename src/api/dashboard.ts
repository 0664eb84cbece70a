// Owns the built-in dashboard for teams without Grafana: GET /dashboard (one
// self-contained page, no external resources) and GET /dashboard/v1/stats,
// the live figures it polls. Freshness and runs come from /slo/v1 and
// /sync/v1/jobs, which the page reads too.
import { Hono } from 'hono';
import type { LatencyBuckets, Metrics } from '../observability/metrics.js';
import { bucketsSince, latencyQuantiles } from '../observability/metrics.js';
import { recentOf, type SloTracker } from '../observability/slo.js';

/** p50 and p99 cover about this long: the latency histogram counts since start, so quantiles are taken over its growth. */
const LATENCY_WINDOW_MS = 60_000;

export function dashboardRoutes(deps: { readonly metrics: Metrics; readonly slo: SloTracker; readonly now?: () => number }): Hono {
  const app = new Hono();
  const now = deps.now ?? Date.now;
  // The machine's latency buckets as earlier stats requests saw them, at most one a second: the oldest one kept is
  // the newest that is at least a window old, the base the quantiles are taken from. Until a process has one that
  // old (its first minute of being asked), they cover the time since start.
  const seen: { at: number; buckets: LatencyBuckets }[] = [];
  const recentBuckets = (buckets: LatencyBuckets): LatencyBuckets => {
    const at = now();
    while (seen.length > 1 && at - seen[1]!.at >= LATENCY_WINDOW_MS) seen.shift();
    const base = seen[0] && at - seen[0].at >= LATENCY_WINDOW_MS ? seen[0] : undefined;
    if (seen.length === 0 || at - seen.at(-1)!.at >= 1000) seen.push({ at, buckets });
    return base ? bucketsSince(buckets, base.buckets) : buckets;
  };

  app.get('/dashboard', (c) =>
    c.html(PAGE, 200, {
      'Cache-Control': 'no-store',
      // The page's own script and style only.
      'Content-Security-Policy': "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:",
    }),
  );

  app.get('/dashboard/v1/stats', async (c) => {
    // Every serving process of the machine, in a cluster worker.
    const [buckets, slo] = await Promise.all([deps.metrics.gatherLookupLatency(), deps.slo.gather()]);
    const [p50, p99] = latencyQuantiles(recentBuckets(buckets), [0.5, 0.99]);
    const recent = recentOf(slo.recent);
    const { latencyThresholdMs, latencyTarget } = deps.slo.config;
    return c.json(
      {
        lookups_per_second: recent.rate,
        error_rate: recent.errorRate,
        p50_ms: p50 === null ? null : p50! * 1000,
        p99_ms: p99 === null ? null : p99! * 1000,
        latency_objective_ms: latencyThresholdMs,
        latency_target: latencyTarget,
      },
      200,
      { 'Cache-Control': 'no-store' },
    );
  });

  return app;
}

const PAGE = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Feature API dashboard</title>
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #1b1f24; background: #f6f8fa; }
  h1 { font-size: 20px; margin: 0 0 16px; } h2 { font-size: 15px; margin: 24px 0 8px; }
  .cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(170px, 1fr)); gap: 12px; }
  .card { background: #fff; border: 1px solid #d0d7de; border-radius: 8px; padding: 12px 14px; }
  .label { color: #57606a; font-size: 12px; } .value { font-size: 24px; font-weight: 600; margin-top: 4px; }
  .ok { color: #1a7f37; } .bad { color: #cf222e; } .muted { color: #57606a; }
  table { border-collapse: collapse; width: 100%; background: #fff; border: 1px solid #d0d7de; border-radius: 8px; }
  th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid #eaeef2; } th { font-size: 12px; color: #57606a; }
  #updated { font-size: 12px; color: #57606a; }
</style>
</head>
<body>
<h1>Feature API <span id="updated">loading…</span></h1>
<div class="cards">
  <div class="card"><div class="label">Lookups / s (last 10 s)</div><div class="value" id="rate">–</div></div>
  <div class="card"><div class="label">p50 latency</div><div class="value" id="p50">–</div></div>
  <div class="card"><div class="label">p99 latency <span id="objective"></span></div><div class="value" id="p99">–</div></div>
  <div class="card"><div class="label">Error rate (5xx)</div><div class="value" id="errors">–</div></div>
  <div class="card"><div class="label">Latency SLO compliance</div><div class="value" id="latency-slo">–</div></div>
  <div class="card"><div class="label">Latency error budget left</div><div class="value" id="budget">–</div></div>
</div>
<h2>Freshness per view</h2>
<table><thead><tr><th>View</th><th>Version</th><th>As of</th><th>Age</th><th>Objective</th><th>Status</th></tr></thead><tbody id="views"></tbody></table>
<h2>Last sync runs</h2>
<table><thead><tr><th>Job</th><th>Run</th><th>Status</th><th>Trigger</th><th>Finished</th><th>Rows written</th><th>Error</th></tr></thead><tbody id="runs"></tbody></table>
<script>
const $ = (id) => document.getElementById(id);
const ms = (v) => v === null || v === undefined ? '–' : (v < 10 ? v.toFixed(2) : v.toFixed(1)) + ' ms';
const pct = (v, digits = 2) => v === null || v === undefined ? '–' : (v * 100).toFixed(digits) + '%';
const duration = (s) => s === null ? '–' : s < 120 ? s + ' s' : s < 7200 ? Math.round(s / 60) + ' min' : s < 172800 ? Math.round(s / 3600) + ' h' : Math.round(s / 86400) + ' d';
const cell = (text, cls) => { const td = document.createElement('td'); td.textContent = text; if (cls) td.className = cls; return td; };
const row = (cells) => { const tr = document.createElement('tr'); cells.forEach((c) => tr.appendChild(c)); return tr; };
async function refresh() {
  try {
    // /sync/v1 needs an API key in keys mode, which this page does not send: the runs table says so, the rest works.
    const [stats, slo, jobs] = await Promise.all(['/dashboard/v1/stats', '/slo/v1', '/sync/v1/jobs'].map((u) => fetch(u).then((r) => r.json().then((body) => (r.ok ? body : { problem: body })))));
    if (stats.problem || slo.problem) throw new Error((stats.problem || slo.problem).detail || 'an error response');
    $('rate').textContent = stats.lookups_per_second.toFixed(1);
    $('p50').textContent = ms(stats.p50_ms);
    $('p99').textContent = ms(stats.p99_ms);
    $('p99').className = 'value ' + (stats.p99_ms === null ? '' : stats.p99_ms <= stats.latency_objective_ms ? 'ok' : 'bad');
    $('objective').textContent = '(objective ' + stats.latency_objective_ms + ' ms)';
    $('errors').textContent = pct(stats.error_rate);
    const latency = slo.objectives.find((o) => o.name === 'latency');
    $('latency-slo').textContent = pct(latency.compliance) + ' / ' + pct(latency.target, 1);
    $('latency-slo').className = 'value ' + (latency.met ? 'ok' : 'bad');
    $('budget').textContent = pct(latency.error_budget_remaining, 1);
    $('budget').className = 'value ' + (latency.error_budget_remaining > 0 ? 'ok' : 'bad');
    $('views').replaceChildren(...slo.freshness.map((v) => row([cell(v.view), cell(v.version ?? '–'), cell(v.as_of ?? '–'), cell(duration(v.age_seconds)), cell(duration(v.objective_seconds)), cell(v.fresh ? 'fresh' : 'stale', v.fresh ? 'ok' : 'bad')])));
    if (jobs.problem) {
      const note = cell('runs not shown: ' + (jobs.problem.status === 401 ? '/sync/v1 needs an API key, which this page does not send (npm run ctl -- runs <job> lists them)' : jobs.problem.detail), 'muted');
      note.colSpan = 7;
      $('runs').replaceChildren(row([note]));
    } else {
      const runs = jobs.jobs.filter((j) => j.last_run).map((j) => j.last_run).sort((a, b) => b.run_id - a.run_id);
      $('runs').replaceChildren(...runs.map((r) => row([cell(r.job), cell(String(r.run_id)), cell(r.status, r.status === 'succeeded' ? 'ok' : r.status === 'failed' ? 'bad' : 'muted'), cell(r.trigger), cell(r.finished_at ?? 'running'), cell(r.rows_written ?? '–'), cell(r.error ?? '', 'muted')])));
    }
    $('updated').textContent = 'updated ' + new Date().toLocaleTimeString();
  } catch (error) {
    $('updated').textContent = 'cannot reach the API: ' + error.message;
  }
}
refresh();
setInterval(refresh, 2000);
</script>
</body>
</html>
`;
