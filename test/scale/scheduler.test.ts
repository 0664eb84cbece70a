// Schedulers in every process, each scheduled run executed once: three servers
// with their schedulers on share one Postgres and one Redis; for a minute of an
// every-10-seconds job, each tick has exactly one succeeded run and the other
// processes record skips. A process whose tick fires late (after another
// process's run of that tick finished) skips too, rather than run it again.
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { parseJobDefinition } from '../../src/jobs/definition.js';
import { silentLogger } from '../../src/observability/log.js';
import { startServer, type RunningServer } from '../../src/server.js';
import { ensureSchema, listRuns, type RunRecord } from '../../src/stores/metadata.js';
import { PostgresDatabase } from '../../src/stores/postgres.js';
import { RedisHotTier } from '../../src/stores/redis.js';
import { runSync } from '../../src/sync/engine.js';
import { freshDatabase } from '../support/db.js';
import { serverConfig, tempDir, writeJobs, writeParquet } from '../support/fixtures.js';
import { startRedis, type RedisServer } from '../support/servers.js';

const TICK_MS = 10_000;

describe('schedulers in three processes', () => {
  let redis: RedisServer;
  let database: { url: string; drop(): Promise<void> };
  let db: PostgresDatabase;
  let dir: string;
  let source: string;
  const servers: RunningServer[] = [];

  beforeAll(async () => {
    redis = await startRedis();
    database = await freshDatabase(inject('databaseUrl'), 'sched3');
    db = new PostgresDatabase({ url: database.url });
    // Each test can run alone (-t): the schema does not wait for a server to make it.
    await ensureSchema(db);
    dir = await tempDir('sched3');
    source = await writeParquet(path.join(dir, 's.parquet'), `SELECT 'k' || i AS id, TIMESTAMP '2026-01-01' AS t, i AS n FROM range(1, 101) t(i)`);
    await writeJobs(dir, [{ view: 'every10', source, entity_key: 'id', event_time: 't', features: { n: { type: 'integer' } }, schedule: '*/10 * * * * *', max_row_drop: 1 } as never]);
  });

  afterAll(async () => {
    await Promise.allSettled(servers.map((s) => s.close()));
    await db?.close();
    await redis?.destroy();
    await database?.drop();
  });

  it('runs each tick of an every-10-seconds job once in a minute, the other processes recording skips', async () => {
    for (let i = 0; i < 3; i++) {
      servers.push(await startServer(serverConfig({ DATABASE_URL: database.url, REDIS_URL: redis.url, SYNC_JOBS_DIR: dir, SCHEDULER_ENABLED: 'true' })));
    }
    // Ticks are judged from the first one all three schedulers were up for.
    const firstTick = Math.ceil(Date.now() / TICK_MS) * TICK_MS;
    const lastTick = firstTick + 5 * TICK_MS; // six ticks: one minute
    // Stop halfway between ticks, after the last one, so no tick is half fired.
    await new Promise((resolve) => setTimeout(resolve, lastTick + TICK_MS / 2 - Date.now()));
    await Promise.all(servers.map((s) => s.close()));

    const runs = (await listRuns(db, 'every10', 1000)).filter((r) => r.trigger === 'schedule');
    expect(runs.every((r) => r.scheduledFor !== null)).toBe(true);
    const byTick = new Map<number, RunRecord[]>();
    for (const run of runs) byTick.set(run.scheduledFor!.getTime(), [...(byTick.get(run.scheduledFor!.getTime()) ?? []), run]);
    let ran = 0;
    for (let tick = firstTick; tick <= lastTick; tick += TICK_MS) {
      const ofTick = byTick.get(tick) ?? [];
      const summary = { tick: new Date(tick).toISOString(), statuses: ofTick.map((r) => r.status).sort() };
      if (summary.statuses.includes('succeeded')) {
        ran++;
        expect(summary).toEqual({ tick: summary.tick, statuses: ['skipped', 'skipped', 'succeeded'] });
        continue;
      }
      // On a loaded machine a run may outlast the 10 s: then the next tick is skipped by all three
      // (never queued), and only if the previous tick's run was still running at this tick's time.
      expect(summary).toEqual({ tick: summary.tick, statuses: ['skipped', 'skipped', 'skipped'] });
      expect(ofTick.every((r) => /in progress/.test(r.error ?? ''))).toBe(true);
      const previous = runs.find((r) => r.status === 'succeeded' && r.scheduledFor!.getTime() === tick - TICK_MS);
      expect(previous?.finishedAt?.getTime()).toBeGreaterThan(tick);
    }
    expect(ran).toBeGreaterThanOrEqual(3);
    // No run of any tick ran twice, before or after the window either.
    for (const [tick, ofTick] of byTick) {
      const ranOfTick = ofTick.filter((r) => r.status !== 'skipped').length;
      expect({ tick: new Date(tick).toISOString(), ranAtMostOnce: ranOfTick <= 1 }).toEqual({ tick: new Date(tick).toISOString(), ranAtMostOnce: true });
    }
    // Every tick was scheduled on a 10-second boundary, whenever its timer fired.
    expect([...byTick.keys()].every((t) => t % TICK_MS === 0)).toBe(true);
  }, 120_000);

  it('a tick that fires late, after another process ran it, is skipped rather than run again', async () => {
    const job = parseJobDefinition(path.join(dir, 'every10.yaml'), JSON.stringify({ view: 'every10', source, entity_key: 'id', event_time: 't', features: { n: { type: 'integer' } }, schedule: '*/10 * * * * *', freshness: '1d', max_row_drop: 1 }));
    const hot = new RedisHotTier({ url: redis.url, commandTimeoutMs: 5000 });
    try {
      const ctx = { db, hot, log: silentLogger, batchRows: 1000 };
      const scheduledFor = '2030-01-01T00:00:10.000Z';
      const first = await runSync(job, ctx, 'schedule', { scheduledFor });
      expect(first.status).toBe('succeeded');
      // The lock is free again: only the tick's identity stops the late one.
      const late = await runSync(job, ctx, 'schedule', { scheduledFor });
      expect(late).toMatchObject({ status: 'skipped', error: `the tick scheduled for ${scheduledFor} was already run (run ${first.runId}, succeeded)` });
      // The next tick runs.
      expect((await runSync(job, ctx, 'schedule', { scheduledFor: '2030-01-01T00:00:20.000Z' })).status).toBe('succeeded');
      // Unscheduled runs carry no tick and are never skipped for one.
      expect((await runSync(job, ctx, 'manual')).status).toBe('succeeded');
      const [manual] = await listRuns(db, 'every10', 1);
      expect(manual).toMatchObject({ trigger: 'manual', status: 'succeeded', scheduledFor: null });
      // The runs API shows each run's tick, so an operator sees which attempt was skipped for which tick.
      const api = await startServer(serverConfig({ DATABASE_URL: database.url, REDIS_URL: redis.url, SYNC_JOBS_DIR: dir }));
      try {
        const response = await fetch(`http://127.0.0.1:${api.port}/sync/v1/jobs/every10/runs?limit=4`);
        expect(response.status).toBe(200);
        const { runs } = (await response.json()) as { runs: { trigger: string; status: string; scheduled_for: string | null }[] };
        expect(runs.map((r) => [r.trigger, r.status, r.scheduled_for])).toEqual([
          ['manual', 'succeeded', null],
          ['schedule', 'succeeded', '2030-01-01T00:00:20.000Z'],
          ['schedule', 'skipped', scheduledFor],
          ['schedule', 'succeeded', scheduledFor],
        ]);
      } finally {
        await api.close();
      }
    } finally {
      await hot.close();
    }
  });
});
