// SLO accounting: compliance, error budget and burn rates over windows, from
// lookups recorded per minute.
import { describe, expect, it } from 'vitest';
import { latencyQuantiles, sumBuckets } from '../../src/observability/metrics.js';
import { combineSlo, SloTracker } from '../../src/observability/slo.js';

const config = { latencyThresholdMs: 10, latencyTarget: 0.99, availabilityTarget: 0.999, windowDays: 28 };

describe('SLO tracker', () => {
  it('reports a full budget and no compliance figure before any lookup', () => {
    const report = new SloTracker(config, () => 0).report();
    expect(report.objectives.map((o) => [o.name, o.total, o.compliance, o.error_budget_remaining, o.met])).toEqual([
      ['latency', 0, null, 1, true],
      ['availability', 0, null, 1, true],
    ]);
  });

  it('spends the latency budget on slow lookups and the availability budget on server errors', () => {
    let now = Date.UTC(2026, 0, 1);
    const slo = new SloTracker(config, () => now);
    for (let i = 0; i < 1000; i++) slo.record(i < 5 ? 50 : 2, i < 2);
    const [latency, availability] = slo.report().objectives;
    expect(latency).toMatchObject({ total: 1000, good: 995, compliance: 0.995, met: true });
    expect(latency!.error_budget_remaining).toBeCloseTo(0.5); // 5 of 10 allowed slow lookups spent
    expect(latency!.burn_rates['5m']).toBeCloseTo(0.5);
    expect(availability).toMatchObject({ total: 1000, good: 998, met: false });
    expect(availability!.error_budget_remaining).toBeCloseTo(-1); // 2 errors against 1 allowed
    expect(availability!.burn_rates['1h']).toBeCloseTo(2);

    // An hour later the 5-minute window is clean, the longer ones still remember.
    now += 61 * 60_000;
    for (let i = 0; i < 100; i++) slo.record(1, false);
    const later = slo.report().objectives[0]!;
    expect(later.burn_rates['5m']).toBe(0);
    expect(later.burn_rates['6h']).toBeCloseTo(5 / 1100 / 0.01);
    expect(later.total).toBe(1100);
  });

  it('forgets lookups older than the compliance window', () => {
    let now = Date.UTC(2026, 0, 1);
    const slo = new SloTracker({ ...config, windowDays: 1 }, () => now);
    slo.record(100, true);
    now += 2 * 86_400_000;
    slo.record(1, false);
    expect(slo.report().objectives[0]).toMatchObject({ total: 1, good: 1, compliance: 1 });
  });

  it('keeps the 3d burn rate whole under a compliance window shorter than 3 days', () => {
    let now = Date.UTC(2026, 0, 1);
    const slo = new SloTracker({ ...config, windowDays: 1 }, () => now);
    for (let i = 0; i < 1000; i++) slo.record(1, i < 100);
    now += 2 * 86_400_000;
    for (let i = 0; i < 1000; i++) slo.record(1, false);
    const availability = slo.report().objectives[1]!;
    // The 1-day period forgot the errors; the 3-day window still holds them: 100 of 2000 against 0.1% allowed.
    expect(availability).toMatchObject({ total: 1000, good: 1000 });
    expect(availability.burn_rates['3d']).toBeCloseTo(100 / 2000 / 0.001);
  });

  it('reports several processes combined exactly as one process that saw all their lookups', () => {
    let now = Date.UTC(2026, 0, 1);
    const clock = () => now;
    const one = new SloTracker(config, clock);
    const a = new SloTracker(config, clock);
    now += 90 * 60_000; // b started later: the combined report tracks from a's start
    const b = new SloTracker(config, clock);
    for (let i = 0; i < 600; i++) {
      now += 1000;
      const [duration, failed] = [i % 50 === 0 ? 40 : 3, i % 199 === 0];
      one.record(duration, failed);
      (i % 3 === 0 ? a : b).record(duration, failed);
    }
    expect(a.report().objectives[0]!.total).toBe(200);
    const combined = a.report(combineSlo([a.snapshot(), b.snapshot()]));
    expect(combined.objectives).toEqual(one.report().objectives);
    expect(combined.tracked_since).toBe(new Date(Date.UTC(2026, 0, 1)).toISOString());
    // The live rate adds up too: the last 10 s held 10 lookups over both, one of them failed (i = 597).
    expect(combineSlo([a.snapshot(), b.snapshot()]).recent).toEqual({ seconds: 10, total: 10, failed: 1 });
    expect(one.snapshot().recent).toEqual({ seconds: 10, total: 10, failed: 1 });
  });

  it('keeps a dead worker\'s minutes as handed over: replaced while it lives, added when it dies, forgotten past the window', () => {
    let now = Date.UTC(2026, 0, 1);
    const clock = () => now;
    const one = new SloTracker(config, clock);
    const worker = new SloTracker(config, clock);
    const mirror = new SloTracker(config, clock);
    const retired = new SloTracker(config, clock);
    // Hand-offs every 5 s, as src/cluster.ts makes them (every second).
    for (let i = 0; i < 400; i++) {
      now += 1000;
      const [duration, failed] = [i % 40 === 0 ? 40 : 3, i % 97 === 0];
      one.record(duration, failed);
      worker.record(duration, failed);
      if (i % 5 === 4) mirror.absorb(worker.handOff(), 'replace');
    }
    // Minutes handed over twice (a minute still counting at a hand-off) were replaced, not added twice.
    expect(mirror.report().objectives).toEqual(one.report().objectives);
    // The worker dies: its minutes join what the primary keeps, next to a minute of another dead worker.
    retired.absorb([[Math.floor(now / 60_000), 10, 1, 1]], 'add');
    retired.absorb(mirror.minutesFrom(-Infinity), 'add');
    const [latency, availability] = retired.report().objectives;
    expect(latency).toMatchObject({ total: 410, good: one.report().objectives[0]!.good + 10 - 1 });
    expect(availability).toMatchObject({ total: 410, good: one.report().objectives[1]!.good + 10 - 1 });
    // Minutes from outside the ring are not taken in, and kept minutes age out like recorded ones.
    retired.absorb([[Math.floor(now / 60_000) - 40_320 - 5, 99, 99, 99], [Number.NaN, 1, 1, 1]], 'add');
    expect(retired.report().objectives[0]!.total).toBe(410);
    now += 29 * 86_400_000;
    expect(retired.report().objectives[0]!.total).toBe(0);
  });

  it('sums lookup latency buckets over processes and reads quantiles from them', () => {
    const a = { '0.005': 90, '0.01': 99, '+Inf': 100 };
    const b = { '0.005': 10, '0.01': 100, '+Inf': 100 };
    const sum = sumBuckets([a, b]);
    expect(sum).toEqual({ '0.005': 100, '0.01': 199, '+Inf': 200 });
    const [p50, p99] = latencyQuantiles(sum, [0.5, 0.99]);
    expect(p50).toBeCloseTo(0.005);
    expect(p99).toBeCloseTo(0.005 + (0.005 * (198 - 100)) / 99);
    expect(latencyQuantiles({}, [0.5])).toEqual([null]);
  });
});

describe('the dashboard\'s latency figures', () => {
  it('are taken over the last minute, so a slow spell after a long fast one shows at once', async () => {
    const { Metrics } = await import('../../src/observability/metrics.js');
    const { dashboardRoutes } = await import('../../src/api/dashboard.js');
    let now = 1_000_000;
    const metrics = new Metrics();
    const app = dashboardRoutes({ metrics, slo: new SloTracker(config, () => now), now: () => now });
    const lookups = (n: number, seconds: number) => {
      const observer = metrics.requestDuration.labels({ http_request_method: 'GET', http_route: '/features/v1/:entity_id', http_response_status_code: '200' });
      for (let i = 0; i < n; i++) observer.observe(seconds);
    };
    const stats = async () => (await (await app.request('/dashboard/v1/stats')).json()) as { p50_ms: number | null; p99_ms: number | null };

    lookups(10_000, 0.001);
    expect((await stats()).p99_ms).toBeLessThan(2);
    // A minute later, 50 lookups of 200 ms: half a percent of all since start, every one of the last minute.
    now += 61_000;
    lookups(50, 0.2);
    const slow = await stats();
    expect(slow.p50_ms).toBeGreaterThan(100);
    expect(slow.p99_ms).toBeGreaterThan(100);
    // Another quiet minute: no lookups in it, so no latency to show.
    now += 61_000;
    await stats();
    now += 61_000;
    expect(await stats()).toMatchObject({ p50_ms: null, p99_ms: null });
  });
});
