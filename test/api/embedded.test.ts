// The out-of-the-box mode: no DATABASE_URL or REDIS_URL, embedded Postgres and
// an in-process hot tier, the demo views synced at start from real flights.
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServer, type RunningServer } from '../../src/server.js';
import { duck, serverConfig } from '../support/fixtures.js';

const FLIGHTS = path.resolve('node_modules/vega-datasets/data/flights-3m.parquet');

describe('embedded default with the demo views', () => {
  let server: RunningServer;
  let baseUrl: string;

  beforeAll(async () => {
    server = await startServer(serverConfig({ SYNC_ON_START: 'true' }));
    baseUrl = `http://127.0.0.1:${server.port}`;
    await server.startupSyncs;
  });

  afterAll(async () => {
    await server?.close();
  });

  it('is ready once the start-up syncs have published both views', async () => {
    const response = await fetch(`${baseUrl}/readyz`);
    expect(response.status).toBe(200);
    expect(await response.json()).toMatchObject({ status: 'ready', checks: { postgres: 'ok', hot_tier: { kind: 'memory', status: 'ok' } } });
  });

  it('serves the README curl with features and freshness headers, matching DuckDB on the raw flights', async () => {
    const response = await fetch(`${baseUrl}/features/v1/SFO-LAX`);
    expect(response.status).toBe(200);
    for (const header of ['ETag', 'Last-Modified', 'Cache-Control', 'Feature-Version', 'Feature-As-Of', 'Feature-Age', 'Feature-Freshness']) {
      expect(response.headers.get(header), header).toBeTruthy();
    }
    expect(response.headers.get('Feature-Tier')).toBe('memory');
    const body = (await response.json()) as { view: string; features: Record<string, number | string> };
    const [want] = await duck<{ flights: bigint; mean: number; p95: number; distance: bigint }>(
      `SELECT count(*) AS flights, round(avg(delay), 3) AS mean, quantile_cont(delay, 0.95) AS p95, max(distance) AS distance
         FROM read_parquet('${FLIGHTS}') WHERE origin = 'SFO' AND destination = 'LAX'`,
    );
    expect(body.view).toBe('route_delays');
    expect(body.features).toMatchObject({ origin: 'SFO', destination: 'LAX', flights: Number(want!.flights), mean_delay_minutes: want!.mean, p95_delay_minutes: want!.p95, distance_miles: Number(want!.distance) });
  });

  it('holds one row per route and per airport', async () => {
    const [counts] = await duck<{ routes: bigint; airports: bigint }>(`SELECT count(DISTINCT (origin, destination)) AS routes, count(DISTINCT origin) AS airports FROM read_parquet('${FLIGHTS}')`);
    expect(server.catalog.get('route_delays')!.current!.rowCount).toBe(Number(counts!.routes));
    expect(server.catalog.get('origin_airports')!.current!.rowCount).toBe(Number(counts!.airports));
  });
});
