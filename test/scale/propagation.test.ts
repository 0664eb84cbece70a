// Several API processes on one Postgres and one Redis: a version published
// (or rolled back) anywhere is served by every process within the documented
// bound, learned from the primary's NOTIFY (polling is set to a minute here, so
// it cannot be what delivers it), also after the listening connection is
// killed; and no process ever serves an older switch after a newer one.
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { startServer, type RunningServer } from '../../src/server.js';
import { ensureSchema, META_SCHEMA, rollbackView, VERSIONS_CHANNEL } from '../../src/stores/metadata.js';
import { NotificationListener, PostgresDatabase } from '../../src/stores/postgres.js';
import { jobLockKey } from '../../src/sync/engine.js';
import { freshDatabase } from '../support/db.js';
import { serverConfig, tempDir, writeJobs, writeParquet } from '../support/fixtures.js';
import { startPostgres, startRedis, type RedisServer } from '../support/servers.js';

/** The bound this test holds the NOTIFY path to (README "Several API processes"); typically it takes a few ms. */
const BOUND_MS = 2000;
const ENTITIES = 200;

const roundSql = (round: number) => `SELECT 'k' || i AS id, TIMESTAMP '2026-01-01' + INTERVAL (${round}) HOUR AS t, i * 1000 + ${round} AS n FROM range(1, ${ENTITIES + 1}) t(i)`;

interface Observation {
  readonly status: number;
  /** Which publish round the served values come from. */
  readonly round: number | undefined;
  readonly version: number | undefined;
  readonly endedAt: number;
}

describe('several API processes', () => {
  let database: { url: string; drop(): Promise<void> };
  let redis: RedisServer;
  let servers: RunningServer[];
  let admin: PostgresDatabase;
  let source: string;
  /** Every switch of readers, in order: the round it serves and when it began. */
  const switches: { round: number; startedAt: number }[] = [];
  const observed: Observation[][] = [[], [], []];
  let polling = true;
  let pollers: Promise<void>;
  const latencies: number[] = [];

  const lookup = async (server: RunningServer): Promise<Observation> => {
    const response = await fetch(`http://127.0.0.1:${server.port}/features/v1/k5?view=prop`);
    const body = (await response.json()) as { features?: { n: number }; metadata?: { version: number } };
    return { status: response.status, round: body.features ? body.features.n - 5000 : undefined, version: body.metadata?.version, endedAt: performance.now() };
  };

  /** Milliseconds from `since` until `server` serves `round`. */
  const timeUntilServed = async (server: RunningServer, round: number, since: number): Promise<number> => {
    for (;;) {
      if ((await lookup(server)).round === round) return performance.now() - since;
      if (performance.now() - since > 30_000) throw new Error(`server on port ${server.port} did not serve round ${round} within 30 s`);
      await new Promise((r) => setTimeout(r, 5));
    }
  };

  /** Publishes round r through servers[through]; resolves once the others serve it, checking the bound. */
  const publishThrough = async (through: number, round: number) => {
    await writeParquet(source, roundSql(round));
    switches.push({ round, startedAt: performance.now() });
    const run = await servers[through]!.runner.run('prop', 'manual');
    expect(run.status, run.error ?? '').toBe('succeeded');
    const committed = performance.now();
    const others = servers.filter((_, i) => i !== through);
    const took = await Promise.all(others.map((s) => timeUntilServed(s, round, committed)));
    latencies.push(...took);
    for (const ms of took) expect(ms).toBeLessThan(BOUND_MS);
  };

  beforeAll(async () => {
    database = await freshDatabase(inject('databaseUrl'), 'propagation');
    redis = await startRedis();
    const dir = await tempDir('propagation');
    source = path.join(dir, 'prop.parquet');
    await writeJobs(dir, [{ view: 'prop', source, entity_key: 'id', event_time: 't', features: { n: { type: 'integer' } } }]);
    // Polling once a minute: within the bound, only NOTIFY can deliver a switch.
    const config = serverConfig({ DATABASE_URL: database.url, REDIS_URL: redis.url, SYNC_JOBS_DIR: dir, CATALOG_REFRESH_MS: '60000' });
    servers = [await startServer(config), await startServer(config), await startServer(config)];
    admin = new PostgresDatabase({ url: database.url });
    await publishThrough(0, 1);
    // Each process polls itself, one lookup at a time, for the whole file.
    pollers = Promise.all(
      servers.map(async (server, i) => {
        while (polling) {
          observed[i]!.push(await lookup(server));
          await new Promise((r) => setTimeout(r, 15));
        }
      }),
    ).then(() => undefined);
  });

  afterAll(async () => {
    polling = false;
    await pollers;
    await Promise.all((servers ?? []).map((s) => s.close()));
    await admin?.close();
    await redis?.destroy();
    await database?.drop();
  });

  it('a version published through one process is served by the other two within the bound', async () => {
    await publishThrough(0, 2);
    await publishThrough(1, 3);
    await publishThrough(2, 4);
  });

  it('a rollback from outside any server (as `ctl rollback` does) reaches all three, and so does the next publish', async () => {
    switches.push({ round: 3, startedAt: performance.now() });
    const result = await rollbackView(admin, 'prop', jobLockKey('prop'));
    const committed = performance.now();
    expect(result).toMatchObject({ from: 4, to: 3 });
    const took = await Promise.all(servers.map((s) => timeUntilServed(s, 3, committed)));
    latencies.push(...took);
    for (const ms of took) expect(ms).toBeLessThan(BOUND_MS);
    await publishThrough(1, 5);
  });

  it('after its listening connection is killed, each process listens again and still learns within the bound', async () => {
    const listeners = async () =>
      Number(
        (await admin.query<{ n: number }>(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'feature-serving-api listener'`))[0]!.n,
      );
    expect(await listeners()).toBe(3);
    const killed = await admin.query<{ ok: boolean }>(
      `SELECT pg_terminate_backend(pid) AS ok FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'feature-serving-api listener'`,
    );
    expect(killed).toHaveLength(3);
    await expect.poll(listeners, { timeout: 20_000 }).toBe(3);
    await publishThrough(2, 6);
  });

  it('no process ever served an older switch after a newer one, nor a switch before it began, nor an error', async () => {
    // Let every poller see the last switch, then stop them.
    await expect.poll(() => observed.every((o) => o.at(-1)?.round === 6), { timeout: 10_000 }).toBe(true);
    polling = false;
    await pollers;
    for (const [i, observations] of observed.entries()) {
      expect(observations.filter((o) => o.status !== 200), `server ${i}`).toEqual([]);
      expect(observations.length, `server ${i}`).toBeGreaterThan(20);
      // Walk the switch history forward only: each answer is the switch already reached,
      // or a later one that had begun by the time the answer came back.
      let at = 0;
      for (const o of observations) {
        if (switches[at]!.round === o.round) continue;
        const next = switches.findIndex((s, j) => j > at && s.round === o.round && s.startedAt <= o.endedAt);
        expect(next, `server ${i} served round ${o.round} after round ${switches[at]!.round} (history ${switches.map((s) => s.round).join(',')})`).toBeGreaterThan(at);
        at = next;
      }
      expect(switches[at]!.round).toBe(6);
    }
    // The generation grew with every switch, the rollback included.
    const [row] = await admin.query<{ generation: number; current_version: number }>(`SELECT generation, current_version FROM ${META_SCHEMA}.views WHERE view = 'prop'`);
    expect(row).toEqual({ generation: 7, current_version: 6 });
    console.log(`propagation: ${latencies.length} switches seen by other processes, max ${Math.max(...latencies).toFixed(1)} ms, median ${[...latencies].sort((a, b) => a - b)[Math.floor(latencies.length / 2)]!.toFixed(1)} ms`);
  });
});

describe('an existing database', () => {
  it('gains switch generations and notifications, keeping its current versions, however often the schema is ensured', async () => {
    const database = await freshDatabase(inject('databaseUrl'), 'upgrade');
    const db = new PostgresDatabase({ url: database.url });
    const payloads: string[] = [];
    const listener = new NotificationListener({ url: database.url, channel: VERSIONS_CHANNEL, onNotification: (p) => payloads.push(p), onListening: () => undefined });
    try {
      // The views table as it was before generations.
      await db.query(`CREATE SCHEMA ${META_SCHEMA}`);
      await db.query(`CREATE TABLE ${META_SCHEMA}.views (view text PRIMARY KEY, current_version bigint NOT NULL, previous_version bigint, switched_at timestamptz NOT NULL)`);
      await db.query(`INSERT INTO ${META_SCHEMA}.views VALUES ('old', 3, 2, now())`);
      await ensureSchema(db);
      await ensureSchema(db);
      expect(await db.query(`SELECT view, current_version, previous_version, generation FROM ${META_SCHEMA}.views`)).toEqual([{ view: 'old', current_version: 3, previous_version: 2, generation: 1 }]);
      listener.start();
      await expect.poll(() => listener.listening, { timeout: 10_000 }).toBe(true);
      await db.query(`UPDATE ${META_SCHEMA}.views SET current_version = 4, previous_version = 3, switched_at = now() WHERE view = 'old'`);
      await db.query(`INSERT INTO ${META_SCHEMA}.views VALUES ('new', 1, NULL, now())`);
      expect(await db.query(`SELECT view, generation FROM ${META_SCHEMA}.views ORDER BY view`)).toEqual([
        { view: 'new', generation: 1 },
        { view: 'old', generation: 2 },
      ]);
      await expect.poll(() => payloads, { timeout: 10_000 }).toEqual(['old 2', 'new 1']);
    } finally {
      await listener.close();
      await db.close();
      await database.drop();
    }
  });
});

describe('the listening connection', () => {
  it('is replaced when it stops answering without a word (a frozen server stands for a dropped idle flow), and LISTENs again', async () => {
    const postgres = await startPostgres();
    const lost: string[] = [];
    const payloads: string[] = [];
    let listens = 0;
    const listener = new NotificationListener({
      url: postgres.url,
      channel: 'probe',
      onNotification: (p) => payloads.push(p),
      onListening: () => listens++,
      onLost: (error) => lost.push(error.message),
      heartbeatMs: 200,
      // Loose enough that a loaded machine's stalls do not read as a dead connection.
      heartbeatTimeoutMs: 2000,
      connectTimeoutMs: 1000,
    });
    const db = new PostgresDatabase({ url: postgres.url });
    try {
      listener.start();
      await expect.poll(() => listens, { timeout: 10_000 }).toBe(1);
      // Checks that pass change nothing.
      await new Promise((resolve) => setTimeout(resolve, 700));
      expect(lost).toEqual([]);
      // The server stops answering but the socket stays open: only the check can tell.
      postgres.freeze();
      await expect.poll(() => lost[0], { timeout: 10_000 }).toBe('the listening connection did not answer a check within 2000 ms');
      expect(listener.listening).toBe(false);
      postgres.thaw();
      await expect.poll(() => listens, { timeout: 15_000 }).toBe(2);
      await db.query(`SELECT pg_notify('probe', 'after')`);
      await expect.poll(() => payloads, { timeout: 5_000 }).toEqual(['after']);
    } finally {
      postgres.thaw();
      await listener.close();
      await db.close();
      await postgres.destroy();
    }
  }, 60_000);
});
