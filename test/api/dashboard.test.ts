// The built-in dashboard, opened in headless Chromium: after real traffic and
// syncs it shows real figures. Saves a screenshot (test/artifacts/dashboard.png).
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { chromium, type Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, inject, it, onTestFinished } from 'vitest';
import { startServer, type RunningServer } from '../../src/server.js';
import { createApiKey } from '../../src/stores/api-keys.js';
import { freshDatabase } from '../support/db.js';
import { serverConfig, tempDir, writeJobs, writeParquet } from '../support/fixtures.js';
import { assertMatchesSpec } from '../support/openapi.js';
import { startRedis, type RedisServer } from '../support/servers.js';

describe('built-in dashboard in headless Chromium', () => {
  let redis: RedisServer;
  let database: { url: string; drop(): Promise<void> };
  let server: RunningServer;
  let browser: Browser;
  let baseUrl: string;
  let dir: string;

  beforeAll(async () => {
    redis = await startRedis();
    database = await freshDatabase(inject('databaseUrl'), 'dashboard');
    dir = await tempDir('dashboard');
    const fresh = await writeParquet(path.join(dir, 'fresh.parquet'), `SELECT 'u' || i AS id, now()::TIMESTAMP - INTERVAL 5 MINUTE AS t, i AS n FROM range(1, 101) t(i)`);
    const old = await writeParquet(path.join(dir, 'old.parquet'), `SELECT 'a' || i AS id, TIMESTAMP '2020-01-01' AS t, i * 1.5 AS x FROM range(1, 11) t(i)`);
    await writeJobs(dir, [
      { view: 'user_activity', source: fresh, entity_key: 'id', event_time: 't', features: { n: { type: 'integer' } }, freshness: '1h' },
      { view: 'legacy_scores', source: old, entity_key: 'id', event_time: 't', features: { x: { type: 'double' } }, freshness: '1d' },
    ]);
    server = await startServer(serverConfig({ DATABASE_URL: database.url, REDIS_URL: redis.url, SYNC_JOBS_DIR: dir }));
    baseUrl = `http://127.0.0.1:${server.port}`;
    await server.runner.run('user_activity', 'manual');
    await server.runner.run('legacy_scores', 'manual');
    browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'] });
  });

  afterAll(async () => {
    await browser?.close();
    await server?.close();
    await redis?.destroy();
    await database?.drop();
  });

  it('shows request rate, latency against the objective, freshness per view and the last runs', async () => {
    // Real traffic: lookups, a few misses.
    for (let i = 1; i <= 200; i++) await fetch(`${baseUrl}/features/v1/u${(i % 120) + 1}?view=user_activity`).then((r) => r.arrayBuffer());
    const stats = await fetch(`${baseUrl}/dashboard/v1/stats`);
    await assertMatchesSpec('GET', '/dashboard/v1/stats', stats);
    expect(await stats.json()).toMatchObject({ latency_objective_ms: 10, p50_ms: expect.any(Number), p99_ms: expect.any(Number) });

    // Live traffic while the page loads, so "lookups per second (last 10 s)" is live on a slow machine too.
    let pumping = true;
    const pump = (async () => {
      for (let i = 0; pumping; i++) await fetch(`${baseUrl}/features/v1/u${(i % 100) + 1}?view=user_activity`).then((r) => r.arrayBuffer());
    })();
    onTestFinished(async () => {
      pumping = false;
      await pump.catch(() => undefined);
    });
    const page = await browser.newPage({ viewport: { width: 1100, height: 760 } });
    const response = await page.goto(`${baseUrl}/dashboard`);
    expect(response!.status()).toBe(200);
    // Polled through a locator: a string predicate would need eval, which the page's CSP rightly forbids.
    await expect.poll(() => page.locator('#updated').innerText(), { timeout: 30_000 }).toMatch(/^updated/);
    const text = (id: string) => page.locator(`#${id}`).innerText();
    expect(Number(await text('rate'))).toBeGreaterThan(0);
    pumping = false;
    await pump;
    expect(await text('p50')).toMatch(/^\d+(\.\d+)? ms$/);
    expect(await text('p99')).toMatch(/^\d+(\.\d+)? ms$/);
    expect(await text('objective')).toBe('(objective 10 ms)');
    expect(await text('errors')).toBe('0.00%');
    expect(await text('latency-slo')).toMatch(/^\d+\.\d\d% \/ 99\.0%$/);
    const views = await page.locator('#views tr').allInnerTexts();
    expect(views.find((v) => v.startsWith('user_activity'))).toMatch(/fresh$/);
    expect(views.find((v) => v.startsWith('legacy_scores'))).toMatch(/stale$/);
    const runs = await page.locator('#runs tr').allInnerTexts();
    expect(runs).toHaveLength(2);
    expect(runs.every((r) => /succeeded/.test(r))).toBe(true);
    await mkdir('test/artifacts', { recursive: true });
    await page.screenshot({ path: 'test/artifacts/dashboard.png', fullPage: true });
  });

  it('works in keys mode, where /sync/v1 needs a key the page does not send: the runs table says so', async () => {
    await createApiKey(server.db, 'dashboard-test', ['*']);
    const keyed = await startServer(serverConfig({ DATABASE_URL: database.url, REDIS_URL: redis.url, SYNC_JOBS_DIR: dir, AUTH_MODE: 'keys', SYNC_ON_START: 'false', SCHEDULER_ENABLED: 'false' }));
    // The page polls every 2 s on a kept-alive connection: it is closed before the server, whose close waits for it.
    const page = await browser.newPage();
    try {
      await page.goto(`http://127.0.0.1:${keyed.port}/dashboard`);
      await expect.poll(() => page.locator('#updated').innerText(), { timeout: 30_000 }).toMatch(/^updated/);
      expect(await page.locator('#runs').innerText()).toMatch(/runs not shown: \/sync\/v1 needs an API key, which this page does not send/);
      expect((await page.locator('#views tr').allInnerTexts()).length).toBe(2);
    } finally {
      await page.close();
      await keyed.close();
    }
  });
});
