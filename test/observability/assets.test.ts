// The alert rules and the Grafana dashboard only use metrics the server really
// exports (or that the rules record), so neither can silently watch nothing.
// promtool itself checks and unit-tests the rules in .ci/run.
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { Metrics } from '../../src/observability/metrics.js';

const PROMQL_WORDS = new Set(['absent', 'sum', 'by', 'rate', 'increase', 'histogram_quantile', 'and', 'or', 'unless', 'on', 'vector', 'le', 'round', 'humanizeDuration']);

function metricNames(expr: string): string[] {
  const withoutStrings = expr.replace(/"[^"]*"/g, '""').replace(/\{[^}]*\}/g, '{}').replace(/\[[^\]]*\]/g, '[]');
  return [...withoutStrings.matchAll(/[a-zA-Z_:][a-zA-Z0-9_:]*/g)].map((m) => m[0]).filter((w) => !PROMQL_WORDS.has(w) && !/^\d/.test(w) && !/^(sync_job|view|tier|status|http_\w+_code|http_route)$/.test(w));
}

describe('observability assets', () => {
  const metrics = new Metrics({ views: () => [{ view: 'v', version: 1, rows: 1, ageSeconds: 1, objectiveSeconds: 2 }] });
  const exported = async () => {
    const text = await metrics.registry.metrics();
    const names = new Set<string>();
    for (const line of text.split('\n')) {
      const match = /^# TYPE (\S+) (\S+)/.exec(line);
      if (!match) continue;
      names.add(match[1]!);
      if (match[2] === 'histogram') ['_bucket', '_count', '_sum'].forEach((suffix) => names.add(match[1]! + suffix));
    }
    return names;
  };
  const rules = parse(readFileSync('observability/prometheus/rules.yml', 'utf8')) as { groups: { rules: { record?: string; alert?: string; expr: string }[] }[] };
  const recorded = new Set(rules.groups.flatMap((g) => g.rules.flatMap((r) => (r.record ? [r.record] : []))));

  it('rules use only exported or recorded metrics', async () => {
    const known = await exported();
    const used = rules.groups.flatMap((g) => g.rules.flatMap((r) => metricNames(r.expr)));
    expect(used.length).toBeGreaterThan(20);
    // `up` is Prometheus's own, per scrape target.
    expect(used.filter((name) => !known.has(name) && !recorded.has(name) && name !== 'up')).toEqual([]);
  });

  it('every alert has a severity, a summary and a description', () => {
    const alerts = rules.groups.flatMap((g) => g.rules.filter((r) => r.alert)) as unknown as { alert: string; labels: { severity: string }; annotations: { summary: string; description: string } }[];
    expect(alerts.map((a) => a.alert).sort()).toEqual([
      'FeatureApiScrapeFailing',
      'FeatureLookupAvailabilityBudgetBurnFast',
      'FeatureLookupAvailabilityBudgetBurnSlow',
      'FeatureLookupLatencyBudgetBurnFast',
      'FeatureLookupLatencyBudgetBurnSlow',
      'FeatureSyncFailing',
      'FeatureViewAgeMissing',
      'FeatureViewFreshnessAtRisk',
      'FeatureViewStale',
    ]);
    for (const alert of alerts) {
      expect(['page', 'ticket']).toContain(alert.labels.severity);
      expect(alert.annotations.summary && alert.annotations.description).toBeTruthy();
    }
  });

  it('the Grafana dashboard is valid JSON whose panels use only exported or recorded metrics', async () => {
    const known = await exported();
    const dashboard = JSON.parse(readFileSync('observability/grafana/feature-api.json', 'utf8')) as { panels: { title: string; targets: { expr: string }[] }[] };
    expect(dashboard.panels.length).toBeGreaterThanOrEqual(10);
    const used = dashboard.panels.flatMap((p) => p.targets.flatMap((t) => metricNames(t.expr.replaceAll('$__rate_interval', '5m'))));
    expect(used.filter((name) => !known.has(name) && !recorded.has(name))).toEqual([]);
  });
});
