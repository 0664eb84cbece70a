// Lookups routed to streaming replicas of the primary, against a real primary
// and two hot standbys cloned with pg_basebackup -R: the same answers as the
// primary alone; a replica that has not replayed the served version is never
// read for it (its replay paused while a new version is published); a replica
// stopped under load costs no error.
import path from 'node:path';
import { Redis } from 'ioredis';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/index.js';
import { startServer, type RunningServer } from '../../src/server.js';
import { serverConfig, tempDir, writeJobs, writeParquet } from '../support/fixtures.js';
import { assertMatchesSpec } from '../support/openapi.js';
import { startPostgres, startPostgresReplica, startRedis, type PostgresServer, type RedisServer } from '../support/servers.js';

const ENTITIES = 1500;

/** Round r of the source: every entity's values say which round they come from. */
const roundSql = (round: number) =>
  `SELECT 'k' || i AS id, TIMESTAMP '2026-01-01' + INTERVAL (${round}) HOUR AS t, i * 1000 + ${round} AS n, i / 4.0 + ${round} AS x,
          'r${round}-' || i AS s, (i + ${round}) % 2 = 0 AS b,
          CASE WHEN i % 7 = 0 THEN NULL ELSE TIMESTAMP '2025-06-01 12:00:00.123456' + INTERVAL (i) MINUTE END AS seen
     FROM range(1, ${ENTITIES + 1}) t(i)`;

interface BatchBody {
  metadata: { version: number; as_of: string; published_at: string; age_seconds?: number };
  results: { entity_id: string; status: string; features?: { n: number; s: string } }[];
}

async function sql<R extends pg.QueryResultRow>(url: string, text: string): Promise<R[]> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return (await client.query<R>(text)).rows;
  } finally {
    await client.end();
  }
}

describe('Postgres read replicas', () => {
  let primary: PostgresServer;
  let replicaA: PostgresServer;
  let replicaB: PostgresServer;
  let redis: RedisServer;
  let redisClient: Redis;
  let routed: RunningServer;
  let single: RunningServer;
  let dir: string;
  let source: string;

  const batch = async (server: RunningServer, ids: string[]): Promise<{ status: number; body: BatchBody }> => {
    const response = await fetch(`http://127.0.0.1:${server.port}/features/v1/batch`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ view: 'rep', entity_ids: ids }),
    });
    return { status: response.status, body: (await response.json()) as BatchBody };
  };
  /** A batch answered by Postgres (a replica or the primary): the hot tier is emptied first. */
  const coldBatch = async (server: RunningServer, ids: string[]) => {
    await redisClient.flushall();
    return batch(server, ids);
  };
  /** A counter's value on the routed server, from /metrics. */
  const counter = async (name: string, labels: Record<string, string>): Promise<number> => {
    const text = await (await fetch(`http://127.0.0.1:${routed.port}/metrics`)).text();
    const want = Object.entries(labels).map(([k, v]) => `${k}="${v}"`);
    const line = text.split('\n').find((l) => l.startsWith(`${name}{`) && want.every((w) => l.includes(w)));
    return line ? Number(line.slice(line.lastIndexOf(' ') + 1)) : 0;
  };
  const nameOf = (server: PostgresServer) => `127.0.0.1:${server.port}`;
  const reads = (server: PostgresServer) => counter('featurestore_replica_reads_total', { replica: nameOf(server) });
  const skips = (server: PostgresServer, reason: string) => counter('featurestore_replica_skips_total', { replica: nameOf(server), reason });
  const ids = (from: number, count: number) => Array.from({ length: count }, (_, i) => `k${from + i}`);
  /** The values of round r, as served. */
  const expected = (id: string, round: number) => {
    const i = Number(id.slice(1));
    return { n: i * 1000 + round, s: `r${round}-${i}` };
  };
  const publish = async (round: number) => {
    await writeParquet(source, roundSql(round));
    const run = await routed.runner.run('rep', 'manual');
    expect(run.status, run.error ?? '').toBe('succeeded');
    return run.version!;
  };

  beforeAll(async () => {
    primary = await startPostgres({ replication: true });
    [replicaA, replicaB] = [await startPostgresReplica(primary), await startPostgresReplica(primary)];
    redis = await startRedis();
    redisClient = new Redis(redis.url);
    dir = await tempDir('replicas');
    source = path.join(dir, 'rep.parquet');
    await writeParquet(source, roundSql(1));
    await writeJobs(dir, [
      {
        view: 'rep',
        source,
        entity_key: 'id',
        event_time: 't',
        features: { n: { type: 'integer' }, x: { type: 'double' }, s: { type: 'string' }, b: { type: 'boolean' }, seen: { type: 'timestamp' } },
      },
    ]);
    const env = { DATABASE_URL: primary.url, REDIS_URL: redis.url, SYNC_JOBS_DIR: dir, REQUEST_TIMEOUT_MS: '2000' };
    routed = await startServer(serverConfig({ ...env, DATABASE_REPLICA_URLS: `${replicaA.url}, ${replicaB.url}`, DATABASE_REPLICA_POLL_MS: '100' }));
    single = await startServer(serverConfig(env));
    await publish(1);
  });

  afterAll(async () => {
    await routed?.close();
    await single?.close();
    redisClient?.disconnect();
    await redis?.destroy();
    await replicaA?.destroy();
    await replicaB?.destroy();
    await primary?.destroy();
  });

  it('reads from the replicas once they have replayed the version, with the same answers as the primary alone', async () => {
    const wanted = [...ids(1, 400), 'nobody', 'k999999', ...ids(1400, 101)];
    // Both replicas are used once they have replayed the publish.
    const [a0, b0] = [await reads(replicaA), await reads(replicaB)];
    await expect.poll(async () => (await coldBatch(routed, ['k1']), (await reads(replicaA)) > a0 && (await reads(replicaB)) > b0), { timeout: 20_000, interval: 50 }).toBe(true);

    const before = (await reads(replicaA)) + (await reads(replicaB));
    const fromReplica = await coldBatch(routed, wanted);
    expect((await reads(replicaA)) + (await reads(replicaB))).toBe(before + 1);
    const fromPrimary = await coldBatch(single, wanted);
    expect(fromReplica.status).toBe(200);
    expect(fromPrimary.status).toBe(200);
    // The same answer, but for the data's age, which may tick between the two requests.
    const withoutAge = ({ metadata: { age_seconds: _, ...metadata }, ...rest }: BatchBody) => ({ ...rest, metadata });
    expect(withoutAge(fromReplica.body)).toEqual(withoutAge(fromPrimary.body));
    expect(fromReplica.body.metadata.version).toBe(1);
    expect(fromReplica.body.results.filter((r) => r.status === 'NOT_FOUND').map((r) => r.entity_id)).toEqual(['nobody', 'k999999']);
    for (const r of fromReplica.body.results.filter((r) => r.status === 'PRESENT')) expect(r.features).toMatchObject(expected(r.entity_id, 1));

    // Single lookups and a missing entity agree too.
    for (const id of ['k7', 'k1234', 'ghost']) {
      await redisClient.flushall();
      // Without the data's age, which may tick between the two answers.
      const answer = async (server: RunningServer) => {
        const response = await fetch(`http://127.0.0.1:${server.port}/features/v1/${id}?view=rep`);
        const body = (await response.json()) as { metadata?: { age_seconds?: number } };
        delete body.metadata?.age_seconds;
        return [response.status, body];
      };
      const [x, y] = await Promise.all([answer(routed), answer(single)]);
      expect(x).toEqual(y);
    }

    const readyz = await fetch(`http://127.0.0.1:${routed.port}/readyz`);
    await assertMatchesSpec('GET', '/readyz', readyz.clone());
    const ready = (await readyz.json()) as { status: string; checks: { replicas: { name: string; status: string }[] } };
    expect(ready.status).toBe('ready');
    expect(ready.checks.replicas.map((r) => [r.name, r.status])).toEqual([
      [nameOf(replicaA), 'ok'],
      [nameOf(replicaB), 'ok'],
    ]);
  });

  it('a replica whose replay is paused is never read for the new version; every answer is the new one; it is used again once it caught up', async () => {
    // A has replayed the current version before its replay is paused.
    const generation = async (url: string) => (await sql<{ g: string }>(url, `SELECT generation::text AS g FROM featurestore.views WHERE view = 'rep'`))[0]?.g;
    const primaryGeneration = await generation(primary.url);
    await expect.poll(() => generation(replicaA.url), { timeout: 20_000 }).toBe(primaryGeneration);
    await sql(replicaA.url, 'SELECT pg_wal_replay_pause()');
    await expect.poll(async () => (await sql<{ s: string }>(replicaA.url, 'SELECT pg_get_wal_replay_pause_state() AS s'))[0]!.s, { timeout: 10_000 }).toBe('paused');
    const version = await publish(2);
    expect(version).toBe(2);

    const [aReads, aFailed, aBehind] = [await reads(replicaA), await skips(replicaA, 'failed'), await skips(replicaA, 'behind')];
    const bReads = await reads(replicaB);
    const answers: BatchBody[] = [];
    let i = 0;
    // Until the other replica has replayed the publish and answered some (meanwhile the primary does), and at least 30 batches.
    await expect
      .poll(
        async () => {
          const { status, body } = await coldBatch(routed, ids(1 + ((i++ * 97) % 1400), 50));
          expect(status).toBe(200);
          answers.push(body);
          return answers.length >= 30 && (await reads(replicaB)) > bReads;
        },
        { timeout: 30_000, interval: 20 },
      )
      .toBe(true);
    // Every answer is the new version, with the new values, whoever gave it.
    for (const body of answers) {
      expect(body.metadata.version).toBe(2);
      for (const r of body.results) {
        expect(r.status).toBe('PRESENT');
        expect(r.features).toMatchObject(expected(r.entity_id, 2));
      }
    }
    // The paused replica was passed over for being behind (whenever it was considered), without even being asked.
    expect(await reads(replicaA)).toBe(aReads);
    expect(await skips(replicaA, 'failed')).toBe(aFailed);
    expect(await skips(replicaA, 'behind')).toBeGreaterThan(aBehind);
    // Still paused: it still shows the old version as current.
    expect((await sql<{ v: string }>(replicaA.url, `SELECT current_version::text AS v FROM featurestore.views WHERE view = 'rep'`))[0]!.v).toBe('1');

    await sql(replicaA.url, 'SELECT pg_wal_replay_resume()');
    await expect
      .poll(
        async () => {
          const { body } = await coldBatch(routed, ids(300, 20));
          expect(body.metadata.version).toBe(2);
          for (const r of body.results) expect(r.features).toMatchObject(expected(r.entity_id, 2));
          return (await reads(replicaA)) > aReads;
        },
        { timeout: 20_000, interval: 50 },
      )
      .toBe(true);
  });

  it('a replica stopped under load costs no error and no wrong answer, and is used again after it restarts', async () => {
    await redisClient.flushall();
    // Each entity once, so (almost) every lookup misses the hot tier and reads Postgres.
    const order = Array.from({ length: ENTITIES }, (_, i) => i + 1).sort(() => Math.random() - 0.5).slice(0, 900);
    const outcomes: { id: number; status: number; n: number | undefined }[] = [];
    let next = 0;
    let stopping: Promise<void> | undefined;
    await Promise.all(
      Array.from({ length: 8 }, async () => {
        while (next < order.length) {
          const id = order[next++]!;
          if (next === 250) stopping = replicaB.stop();
          const response = await fetch(`http://127.0.0.1:${routed.port}/features/v1/k${id}?view=rep`);
          const body = (await response.json()) as { features?: { n: number } };
          outcomes.push({ id, status: response.status, n: body.features?.n });
        }
      }),
    );
    await stopping;
    expect(outcomes).toHaveLength(900);
    expect(outcomes.filter((o) => o.status !== 200)).toEqual([]);
    expect(outcomes.filter((o) => o.n !== o.id * 1000 + 2)).toEqual([]);
    const readyz = await fetch(`http://127.0.0.1:${routed.port}/readyz`);
    await assertMatchesSpec('GET', '/readyz', readyz.clone());
    const ready = (await readyz.json()) as { status: string; checks: { replicas: { name: string; status: string; error?: string }[] } };
    expect(ready.status).toBe('ready');
    expect(ready.checks.replicas.find((r) => r.name === nameOf(replicaB))?.status).toBe('down');

    const bReads = await reads(replicaB);
    await replicaB.start();
    await expect.poll(async () => (await coldBatch(routed, ids(10, 5)), (await reads(replicaB)) > bReads), { timeout: 20_000, interval: 50 }).toBe(true);
  });

  it('a frozen replica costs the requests that meet it part of their budget, never an error, and is used again once it thaws', async () => {
    // B (restarted above) is used again; now A stops answering without closing anything.
    await redisClient.flushall();
    const avoided = async () => (await skips(replicaA, 'failed')) + (await skips(replicaA, 'down'));
    const avoidedBefore = await avoided();
    replicaA.freeze();
    let outcomes: { id: number; status: number; n: number | undefined }[];
    try {
      outcomes = await Promise.all(
        Array.from({ length: 4 }, async (_, worker) => {
          const mine: { id: number; status: number; n: number | undefined }[] = [];
          for (let id = 1 + worker; id <= 200; id += 4) {
            const response = await fetch(`http://127.0.0.1:${routed.port}/features/v1/k${id}?view=rep`);
            const body = (await response.json()) as { features?: { n: number } };
            mine.push({ id, status: response.status, n: body.features?.n });
          }
          return mine;
        }),
      ).then((parts) => parts.flat());
    } finally {
      replicaA.thaw();
    }
    expect(outcomes).toHaveLength(200);
    expect(outcomes.filter((o) => o.status !== 200 || o.n !== o.id * 1000 + 2)).toEqual([]);
    // It was met (a read timed out on it) and then passed over as down.
    expect(await avoided()).toBeGreaterThan(avoidedBefore);
    const aReads = await reads(replicaA);
    await expect.poll(async () => (await coldBatch(routed, ids(20, 5)), (await reads(replicaA)) > aReads), { timeout: 20_000, interval: 50 }).toBe(true);
  });

  it('replicas that all hang share one replica timeout: the primary still answers, well inside the budget', async () => {
    const replicaStates = async () => {
      const ready = (await (await fetch(`http://127.0.0.1:${routed.port}/readyz`)).json()) as { checks: { replicas: { status: string }[] } };
      return ready.checks.replicas.map((r) => r.status);
    };
    await expect.poll(replicaStates, { timeout: 20_000, interval: 50 }).toEqual(['ok', 'ok']);
    await redisClient.flushall();
    // Both are still taken for healthy when the lookup meets them: a poll only marks one down after its timeout.
    replicaA.freeze();
    replicaB.freeze();
    try {
      const started = performance.now();
      const response = await fetch(`http://127.0.0.1:${routed.port}/features/v1/k42?view=rep`);
      const elapsed = performance.now() - started;
      expect(response.status).toBe(200);
      expect(((await response.json()) as { features: { n: number } }).features.n).toBe(42 * 1000 + 2);
      // One replica timeout (REQUEST_TIMEOUT_MS / 3 = 666 ms) and the primary's answer. Each frozen replica used
      // to take a timeout of its own (1333 ms here; with three, the whole budget and a 503).
      expect(elapsed).toBeLessThan(1100);
    } finally {
      replicaA.thaw();
      replicaB.thaw();
    }
    await expect.poll(replicaStates, { timeout: 20_000, interval: 50 }).toEqual(['ok', 'ok']);
  });

  it('with the primary stopped, the replicas still answer what the hot tier misses, for the version already served', async () => {
    await redisClient.flushall();
    await primary.stop();
    try {
      for (let i = 0; i < 10; i++) {
        const { status, body } = await coldBatch(routed, ids(1 + i * 100, 40));
        expect(status).toBe(200);
        expect(body.metadata.version).toBe(2);
        for (const r of body.results) expect(r.features).toMatchObject(expected(r.entity_id, 2));
      }
      const ready = (await (await fetch(`http://127.0.0.1:${routed.port}/readyz`)).json()) as { status: string; checks: { postgres: string } };
      expect(ready).toMatchObject({ status: 'degraded', checks: { postgres: 'unreachable' } });
    } finally {
      await primary.start();
    }
    // And publishing works again once it is back, with the replicas following.
    expect(await publish(3)).toBe(3);
    const { body } = await coldBatch(routed, ids(1, 30));
    expect(body.metadata.version).toBe(3);
    for (const r of body.results) expect(r.features).toMatchObject(expected(r.entity_id, 3));
  });

  it('refuses replicas without a primary, and malformed replica URLs', () => {
    expect(() => loadConfig({ DATABASE_REPLICA_URLS: 'postgres://r1/db' })).toThrow(/DATABASE_REPLICA_URLS is set without DATABASE_URL/);
    expect(() => loadConfig({ DATABASE_URL: 'postgres://p/db', REDIS_URL: 'redis://r', DATABASE_REPLICA_URLS: 'postgres://r1/db,not a url' })).toThrow(/DATABASE_REPLICA_URLS/);
    const config = loadConfig({ DATABASE_URL: 'postgres://p/db', REDIS_URL: 'redis://r', DATABASE_REPLICA_URLS: ' postgres://r1/db , postgres://r2/db ' });
    expect(config.databaseReplicaUrls).toEqual(['postgres://r1/db', 'postgres://r2/db']);
    expect(loadConfig({}).databaseReplicaUrls).toEqual([]);
  });
});
