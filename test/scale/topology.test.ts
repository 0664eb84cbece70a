// The whole scaled-out topology at once, from the installed binaries: a Redis
// Cluster of three masters with a replica each, a Postgres primary with a
// streaming replica, and three API processes on them. For the same data they
// answer exactly as one API process on one Redis and one Postgres does, value
// for value, single lookups and batches, from Redis and from the replica.
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import path from 'node:path';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServer, type RunningServer } from '../../src/server.js';
import { serverConfig, tempDir, writeJobs, writeParquet } from '../support/fixtures.js';
import { freePort, startPostgres, startPostgresReplica, startRedis, startRedisCluster, type PostgresServer, type RedisClusterServer, type RedisServer } from '../support/servers.js';

const ROWS = 3000;
// Values that break naive encodings: quotes, newlines, Unicode, NULLs, the largest exact integers, tiny doubles, microseconds.
const ITEMS_SQL = `
  SELECT 'e' || lpad(i::VARCHAR, 5, '0') AS id,
    TIMESTAMP '2026-01-01' + INTERVAL (i) SECOND AS updated_at,
    CASE WHEN i % 7 = 0 THEN NULL ELSE i * 3 END::INTEGER AS clicks,
    CASE WHEN i % 11 = 0 THEN NULL WHEN i % 13 = 0 THEN -1e-300 ELSE i / 7.0 END::DOUBLE AS score,
    CASE WHEN i % 17 = 0 THEN NULL ELSE i % 2 = 0 END AS active,
    CASE i % 5 WHEN 0 THEN 'with "quotes", commas' WHEN 1 THEN 'multi' || chr(10) || 'line' WHEN 2 THEN 'ünïcødé ✓' WHEN 3 THEN '' ELSE NULL END AS label,
    TIMESTAMPTZ '2025-06-01 12:00:00.123456+00' + INTERVAL (i) MINUTE AS last_seen,
    CASE WHEN i = 1 THEN 9007199254740991 WHEN i = 2 THEN -9007199254740991 ELSE i END::BIGINT AS big
  FROM range(1, ${ROWS + 1}) t(i)`;
const FEATURES = { clicks: { type: 'integer' }, score: { type: 'double' }, active: { type: 'boolean' }, label: { type: 'string' }, last_seen: { type: 'timestamp' }, big: { type: 'integer' } };

interface Lookup {
  status: number;
  body: { entity_id?: string; event_time?: string; features?: Record<string, unknown>; results?: unknown[] };
}

describe('three API processes on a Redis Cluster and a Postgres primary with a replica', () => {
  let single: { redis: RedisServer; postgres: PostgresServer; server: RunningServer };
  let cluster: RedisClusterServer;
  let primary: PostgresServer;
  let replica: PostgresServer;
  let syncer: RunningServer;
  const apis: { child: ChildProcess; base: string }[] = [];
  let dir: string;

  const ids = [...Array.from({ length: 200 }, (_, i) => `e${String(1 + ((i * 37) % ROWS)).padStart(5, '0')}`), 'e00001', 'e00002', 'absent-1', 'absent-2'];

  const getOne = async (base: string, id: string): Promise<Lookup> => {
    const response = await fetch(`${base}/features/v1/${id}?view=items`);
    const body = (await response.json()) as Lookup['body'];
    return { status: response.status, body: response.status === 200 ? { entity_id: body.entity_id, event_time: body.event_time, features: body.features } : {} };
  };
  const getBatch = async (base: string, batch: string[]) => {
    const response = await fetch(`${base}/features/v1/batch`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ view: 'items', entity_ids: batch }) });
    expect(response.status).toBe(200);
    return { tier: response.headers.get('Feature-Tier'), results: ((await response.json()) as { results: unknown[] }).results };
  };

  beforeAll(async () => {
    dir = await tempDir('topology');
    const source = await writeParquet(path.join(dir, 'items.parquet'), ITEMS_SQL);
    await writeJobs(dir, [{ view: 'items', source, entity_key: 'id', event_time: 'updated_at', features: FEATURES, freshness: '3650d' }]);

    // The reference: one process, one Redis, one Postgres.
    const [redis, postgres] = await Promise.all([startRedis(), startPostgres()]);
    single = { redis, postgres, server: await startServer(serverConfig({ DATABASE_URL: postgres.url, REDIS_URL: redis.url, SYNC_JOBS_DIR: dir })) };
    expect(await single.server.runner.run('items', 'manual')).toMatchObject({ status: 'succeeded' });

    // The topology: the sync runs once, from a process of its own; three API processes serve.
    [cluster, primary] = await Promise.all([startRedisCluster(), startPostgres({ replication: true })]);
    replica = await startPostgresReplica(primary);
    syncer = await startServer(serverConfig({ DATABASE_URL: primary.url, REDIS_CLUSTER_NODES: cluster.nodes, SYNC_JOBS_DIR: dir }));
    expect(await syncer.runner.run('items', 'manual')).toMatchObject({ status: 'succeeded', rowsWritten: ROWS });
    for (let i = 0; i < 3; i++) {
      const port = await freePort();
      const child = spawn(process.execPath, ['--import', 'tsx', path.resolve('src/server.ts')], {
        env: {
          PATH: process.env.PATH!,
          DATABASE_URL: primary.url,
          DATABASE_REPLICA_URLS: replica.url,
          REDIS_CLUSTER_NODES: cluster.nodes,
          SYNC_JOBS_DIR: dir,
          PORT: String(port),
          HOST: '127.0.0.1',
          WEB_CONCURRENCY: '1',
          SCHEDULER_ENABLED: 'false',
          AUTH_MODE: 'open',
          LOG_LEVEL: 'error',
          REQUEST_TIMEOUT_MS: '3000',
        },
        stdio: ['ignore', 'ignore', 'inherit'],
      });
      apis.push({ child, base: `http://127.0.0.1:${port}` });
    }
    for (const { base } of apis) {
      const deadline = Date.now() + 60_000;
      while ((await fetch(`${base}/readyz`).catch(() => null))?.status !== 200) {
        if (Date.now() > deadline) throw new Error(`the API process at ${base} was not ready within 60 s`);
        await new Promise((r) => setTimeout(r, 200));
      }
    }
  }, 180_000);

  afterAll(async () => {
    await Promise.all(
      apis.map(async ({ child }) => {
        if (child.exitCode === null) {
          child.kill('SIGTERM');
          await once(child, 'exit');
        }
      }),
    );
    await Promise.allSettled([single?.server.close(), syncer?.close()]);
    await Promise.allSettled([single?.redis.destroy(), single?.postgres.destroy(), cluster?.destroy(), replica?.destroy()]);
    await primary?.destroy();
  });

  it('answers every single lookup exactly as the single-node setup does, from every process', async () => {
    const expected = await Promise.all(ids.map((id) => getOne(`http://127.0.0.1:${single.server.port}`, id)));
    expect(expected.filter((e) => e.status === 200)).toHaveLength(ids.length - 2);
    for (const { base } of apis) {
      const got = await Promise.all(ids.map((id) => getOne(base, id)));
      expect(got).toEqual(expected);
    }
  });

  it('answers batches (keys on every master) exactly as the single-node setup does, from every process', async () => {
    const expected = await getBatch(`http://127.0.0.1:${single.server.port}`, ids.slice(0, 100));
    for (const { base } of apis) {
      // Whichever tier answers, the values are the same; a cluster read that times out on a loaded machine falls
      // back to Postgres, so the answer from the cluster itself is awaited, then compared too.
      expect((await getBatch(base, ids.slice(0, 100))).results).toEqual(expected.results);
      let fromCluster = await getBatch(base, ids.slice(0, 100));
      for (let attempt = 0; fromCluster.tier !== 'redis' && attempt < 50; attempt++) {
        await new Promise((r) => setTimeout(r, 200));
        fromCluster = await getBatch(base, ids.slice(0, 100));
      }
      expect(fromCluster.tier).toBe('redis');
      expect(fromCluster.results).toEqual(expected.results);
    }
  });

  it('answers the same from the Postgres replica when the cluster misses', async () => {
    const expected = await getBatch(`http://127.0.0.1:${single.server.port}`, ids.slice(100));
    // Empty the cluster's masters: every lookup now misses Redis and is read from Postgres.
    for (const port of await cluster.masters()) {
      const node = new Redis({ host: '127.0.0.1', port });
      await node.flushall();
      node.disconnect();
    }
    for (const { base } of apis) {
      const got = await getBatch(base, ids.slice(100));
      expect(got.tier).toBe('postgres');
      expect(got.results).toEqual(expected.results);
      const metrics = await (await fetch(`${base}/metrics`)).text();
      const replicaReads = [...metrics.matchAll(/^featurestore_replica_reads_total\{[^}]*\} (\d+)/gm)].reduce((sum, m) => sum + Number(m[1]), 0);
      expect(replicaReads).toBeGreaterThan(0);
    }
  });
});
