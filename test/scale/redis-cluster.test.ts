// The Redis Cluster hot tier, against a real cluster of three masters with one
// replica each (six redis-server processes on loopback, joined by
// `redis-cli --cluster create`): the same answers as one Redis node for the
// same data, no CROSSSLOT on batches, and a master killed under load costs no
// wrong answer and no 5xx, with answers from Redis again after the failover;
// a slot migrated mid-read (resharding) costs no wrong or failed read or write.
import path from 'node:path';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { ConfigError, loadConfig } from '../../src/config/index.js';
import { startServer, type RunningServer } from '../../src/server.js';
import { createHotTier, redisClientOf } from '../../src/stores/create-hot-tier.js';
import { hotKey, hotVersionMark } from '../../src/stores/hot-tier.js';
import { RateLimiter } from '../../src/stores/rate-limit.js';
import { keySlot, RedisClusterHotTier } from '../../src/stores/redis-cluster.js';
import { RedisHotTier } from '../../src/stores/redis.js';
import { isTransient } from '../../src/sync/engine.js';
import { freshDatabase } from '../support/db.js';
import { serverConfig, tempDir, writeJobs, writeParquet, type JobYaml } from '../support/fixtures.js';
import { startRedis, startRedisCluster, type RedisClusterServer, type RedisServer } from '../support/servers.js';

const ENTITIES = 3000;

describe('REDIS_CLUSTER_NODES configuration', () => {
  it('takes comma-separated host:port seeds as the servers-mode hot tier, with DATABASE_URL', () => {
    const config = loadConfig({ DATABASE_URL: 'postgres://db/x', REDIS_CLUSTER_NODES: 'redis-a:7000, redis-b:7001,10.0.0.3:7002' });
    expect(config.embedded).toBe(false);
    expect(config.redisUrl).toBeUndefined();
    expect(config.redisClusterNodes).toEqual([
      { host: 'redis-a', port: 7000 },
      { host: 'redis-b', port: 7001 },
      { host: '10.0.0.3', port: 7002 },
    ]);
    expect(Object.isFrozen(config.redisClusterNodes)).toBe(true);
    expect(loadConfig({ DATABASE_URL: 'postgres://db/x', REDIS_URL: 'redis://cache:6379' }).redisClusterNodes).toBeUndefined();
  });

  it('refuses malformed seeds, both Redis settings at once, and a cluster without Postgres', () => {
    expect(() => loadConfig({ DATABASE_URL: 'postgres://db/x', REDIS_CLUSTER_NODES: 'redis-a' })).toThrow(/REDIS_CLUSTER_NODES.*host:port/);
    expect(() => loadConfig({ DATABASE_URL: 'postgres://db/x', REDIS_CLUSTER_NODES: 'redis-a:70000' })).toThrow(/REDIS_CLUSTER_NODES.*1 to 65535/);
    expect(() => loadConfig({ DATABASE_URL: 'postgres://db/x', REDIS_CLUSTER_NODES: 'redis://a:7000' })).toThrow(ConfigError);
    expect(() => loadConfig({ DATABASE_URL: 'postgres://db/x', REDIS_URL: 'redis://cache:6379', REDIS_CLUSTER_NODES: 'a:7000' })).toThrow(/not both/);
    expect(() => loadConfig({ REDIS_CLUSTER_NODES: 'a:7000' })).toThrow(/DATABASE_URL is unset.*REDIS_CLUSTER_NODES is set/);
  });
});

describe('Redis Cluster', () => {
  let cluster: RedisClusterServer;
  const seeds = () => loadConfig({ DATABASE_URL: 'postgres://unused/x', REDIS_CLUSTER_NODES: cluster.nodes });

  beforeAll(async () => {
    cluster = await startRedisCluster();
  });
  afterAll(async () => {
    await cluster?.destroy();
  });

  describe('the hot tier', () => {
    let tier: RedisClusterHotTier;
    beforeAll(async () => {
      const created = createHotTier(seeds(), 2000);
      expect(created).toBeInstanceOf(RedisClusterHotTier);
      tier = created as RedisClusterHotTier;
      await tier.ready(20_000);
    });
    afterAll(async () => {
      await tier?.close();
    });

    /** How many keys of a version each master holds, asked of the masters directly. */
    const keysPerMaster = async (pattern: string): Promise<number[]> =>
      Promise.all(
        (await cluster.masters()).map(async (port) => {
          const node = new Redis({ host: '127.0.0.1', port });
          try {
            let cursor = '0';
            let count = 0;
            do {
              const [next, keys] = await node.scan(cursor, 'MATCH', pattern, 'COUNT', 1000);
              cursor = next;
              count += keys.length;
            } while (cursor !== '0');
            return count;
          } finally {
            node.disconnect();
          }
        }),
      );

    it('writes and reads a batch spread over every master, in order, nulls for absent keys, with no CROSSSLOT', async () => {
      const entries = Array.from({ length: 2000 }, (_, i) => [hotKey('spread', 1, `e${i}`), Buffer.from(JSON.stringify(['2026-01-01T00:00:00.000Z', i]))] as const);
      await tier.set(entries);
      const perMaster = await keysPerMaster('fs:spread:1:*');
      expect(perMaster).toHaveLength(3);
      expect(perMaster.reduce((a, b) => a + b, 0)).toBe(2000);
      for (const n of perMaster) expect(n).toBeGreaterThan(400);

      // Present and absent keys interleaved, across slots and masters: every value in its place.
      const ids = Array.from({ length: 1000 }, (_, i) => (i % 3 === 0 ? `absent${i}` : `e${(i * 7) % 2000}`));
      const values = (await tier.get(ids.map((id) => hotKey('spread', 1, id)))).map((v) => v?.toString() ?? null);
      expect(values).toHaveLength(ids.length);
      ids.forEach((id, i) => {
        expect(values[i]).toBe(id.startsWith('absent') ? null : JSON.stringify(['2026-01-01T00:00:00.000Z', Number(id.slice(1))]));
      });
      expect(await tier.get([hotKey('spread', 1, 'e42')])).toEqual([Buffer.from(JSON.stringify(['2026-01-01T00:00:00.000Z', 42]))]);
      expect(await tier.get([hotKey('spread', 1, 'nope')])).toEqual([null]);
    });

    it('reads a batch after the masters forgot the read script (a restart, SCRIPT FLUSH), and fails loudly on a key it cannot read', async () => {
      const keys = Array.from({ length: 60 }, (_, i) => hotKey('script', 1, `e${i}`));
      await tier.set(keys.map((k, i) => [k, Buffer.from(`v${i}`)] as const));
      await Promise.all(tier.client.nodes('master').map((node) => node.script('FLUSH')));
      expect(await tier.get(keys)).toEqual(keys.map((_, i) => Buffer.from(`v${i}`)));
      // Not a value this tier wrote (another client's hash under the key): an error, never a silent null.
      await tier.client.del(keys[5]!);
      await tier.client.hset(keys[5]!, 'f', 'x');
      await expect(tier.get(keys)).rejects.toThrow(/WRONGTYPE/);
    });

    it('reads concurrent single lookups together, each value to its caller, across masters', async () => {
      const keys = Array.from({ length: 300 }, (_, i) => (i % 5 === 0 ? hotKey('spread', 1, `absent${i}`) : hotKey('spread', 1, `e${(i * 11) % 2000}`)));
      const values = await Promise.all(keys.map((key) => tier.get([key])));
      expect(values.map(([v]) => v?.toString() ?? null)).toEqual(keys.map((key) => (key.includes('absent') ? null : JSON.stringify(['2026-01-01T00:00:00.000Z', Number(key.split(':e')[1])]))));
    });

    it('computes key slots as the cluster does (hash tags, UTF-8)', async () => {
      const keys = ['', 'a', 'fs:view:1:e0000001', hotKey('v', 12, 'ü-entity-ß'), 'user:{1000}:name', '{user1000}.following', 'foo{}{bar}', 'foo{{bar}}zap', 'foo{bar}{zap}', '{', 'x}{y', '日本語{タグ}', ...Array.from({ length: 200 }, (_, i) => `fs:spread:${i % 7}:k${i * 7919}`)];
      for (const key of keys) expect([key, keySlot(key)]).toEqual([key, await tier.client.cluster('KEYSLOT', key)]);
    });

    it('follows MOVED when its slot map is stale (a read sent to a master that no longer owns the slot)', async () => {
      const key = hotKey('moved', 1, 'e1');
      await tier.set([[key, Buffer.from('right')]]);
      const slot = keySlot(key);
      const owner = tier.client.slots[slot]![0]!;
      const other = tier.client.nodes('master').map((n) => `${n.options.host}:${n.options.port}`).find((name) => name !== owner)!;
      tier.client.slots[slot] = [other];
      expect(await tier.get([key])).toEqual([Buffer.from('right')]);
      expect(tier.client.slots[slot]![0]).toBe(owner);
      // A batch with one key sent to the wrong master: every value still in its place.
      const batch = Array.from({ length: 50 }, (_, i) => hotKey('moved', 1, `b${i}`));
      await tier.set(batch.map((k, i) => [k, Buffer.from(`v${i}`)] as const));
      const stale = keySlot(batch[7]!);
      const right = tier.client.slots[stale]![0]!;
      tier.client.slots[stale] = [tier.client.nodes('master').map((n) => `${n.options.host}:${n.options.port}`).find((name) => name !== right)!];
      expect(await tier.get([...batch, hotKey('moved', 1, 'absent')])).toEqual([...batch.map((_, i) => Buffer.from(`v${i}`)), null]);
    });

    it('reads and writes right while a slot is being migrated (resharding), and from its new owner after', async () => {
      // Keys of one slot (a hash tag) and of many others, in the same batches; half of the slot moves mid-test.
      const moving = Array.from({ length: 40 }, (_, i) => hotKey('reshard', 1, `{m}e${i}`));
      const staying = Array.from({ length: 60 }, (_, i) => hotKey('reshard', 1, `e${i}`));
      const absent = hotKey('reshard', 1, '{m}absent');
      const value = (key: string) => Buffer.from(`v:${key}`);
      /** What a read of these keys must answer: each key's own value, nothing for the absent one. */
      const answers = (keys: string[]): (Buffer | null)[] => keys.map((key) => (key === absent ? null : value(key)));
      await tier.set([...moving, ...staying].map((key) => [key, value(key)] as const));
      const slot = keySlot(moving[0]!);
      const source = Number(tier.client.slots[slot]![0]!.split(':')[1]);
      const masters = await cluster.masters();
      const target = masters.find((port) => port !== source)!;
      const conns = new Map(masters.map((port) => [port, new Redis({ host: '127.0.0.1', port })]));
      const on = (port: number) => conns.get(port)!;
      const idOf = async (port: number) => String(await on(port).cluster('MYID'));
      const migrate = (keys: string[]) => on(source).call('MIGRATE', '127.0.0.1', String(target), '', '0', '5000', 'KEYS', ...keys);
      /** Every key read as a batch and as concurrent single lookups. */
      const both = async (keys: string[]) => [await tier.get(keys), await Promise.all(keys.map(async (key) => (await tier.get([key]))[0]))];
      let moved = false;
      try {
        await on(target).cluster('SETSLOT', slot, 'IMPORTING', await idOf(source));
        await on(source).cluster('SETSLOT', slot, 'MIGRATING', await idOf(target));
        await migrate(moving.slice(0, 20));

        // Mid-migration: moved keys answer ASK, the rest are still on the source; no read fails or comes back empty.
        const keys = [...moving, ...staying, absent];
        expect(await both(keys)).toEqual([answers(keys), answers(keys)]);
        // Writes into the migrating slot (new keys: the source sends them on with ASK) and elsewhere, then read back.
        const fresh = [...Array.from({ length: 10 }, (_, i) => hotKey('reshard', 2, `{m}e${i}`)), ...Array.from({ length: 10 }, (_, i) => hotKey('reshard', 2, `e${i}`))];
        await tier.set(fresh.map((key) => [key, value(key)] as const));
        expect(await both(fresh)).toEqual([answers(fresh), answers(fresh)]);
        // Dropping a version mid-migration finds and removes its keys on both masters, moved or not.
        expect(await tier.dropVersion('reshard', 2)).toBe(fresh.length);
        expect(await both(fresh)).toEqual([fresh.map(() => null), fresh.map(() => null)]);

        // A lone lookup (a plain GET to the slot map's owner) follows ASK for a moved key, and reads one that stayed.
        for (const key of [moving[0]!, moving[30]!, absent]) expect(await tier.get([key])).toEqual(answers([key]));
        // The rest of the slot moves, then every master is told the new owner, the importing one first.
        const rest = (await on(source).cluster('GETKEYSINSLOT', slot, 1000)) as string[];
        expect(rest.sort()).toEqual(moving.slice(20).sort());
        await migrate(rest);
        for (const port of [target, source, ...masters.filter((p) => p !== target && p !== source)]) await on(port).cluster('SETSLOT', slot, 'NODE', await idOf(target));
        moved = true;
        expect(await both(keys)).toEqual([answers(keys), answers(keys)]);
        // The MOVED of those reads refreshed the client's slot map: the slot's keys now go to the new owner directly.
        for (let i = 0; i < 100 && tier.client.slots[slot]![0] !== `127.0.0.1:${target}`; i++) await new Promise((r) => setTimeout(r, 50));
        expect(tier.client.slots[slot]![0]).toBe(`127.0.0.1:${target}`);
      } finally {
        // A failed assertion mid-migration must not leave the slot half moved for the tests after this one.
        if (!moved) for (const port of [source, target]) await on(port).cluster('SETSLOT', slot, 'STABLE').catch(() => undefined);
        for (const conn of conns.values()) conn.disconnect();
      }
    });

    it('gives fills their TTL', async () => {
      await tier.set([[hotKey('ttl', 3, 'a'), Buffer.from('x')], [hotKey('ttl', 3, 'b'), Buffer.from('y')]], 120);
      for (const id of ['a', 'b']) {
        const ttl = await tier.client.ttl(hotKey('ttl', 3, id));
        expect(ttl).toBeGreaterThan(100);
        expect(ttl).toBeLessThanOrEqual(120);
      }
    });

    it('drops one version on every master and nothing else; its mark stays past the fill TTL, so a late fill is dropped when the number is claimed again', async () => {
      // The mark a sync sets before writing a version: once only, until the version is dropped.
      expect(await tier.claimVersion('drop', 1)).toBe(true);
      expect(await tier.claimVersion('drop', 1)).toBe(false);
      expect(await tier.claimVersion('drop', 2)).toBe(true);
      await tier.set(Array.from({ length: 1500 }, (_, i) => [hotKey('drop', 1, `e${i}`), Buffer.from('old')] as const));
      await tier.set(Array.from({ length: 300 }, (_, i) => [hotKey('drop', 2, `e${i}`), Buffer.from('new')] as const));
      expect(await tier.dropVersion('drop', 1)).toBe(1500);
      expect(await keysPerMaster('fs:drop:1:*')).toEqual([0, 0, 0]);
      expect((await keysPerMaster('fs:drop:2:*')).reduce((a, b) => a + b, 0)).toBe(300);
      const markTtl = await tier.client.ttl(hotVersionMark('drop', 1));
      expect(markTtl).toBeGreaterThan(86_400);
      expect(markTtl).toBeLessThanOrEqual(86_400 + 600);
      // A lookup's fill that was in flight lands after the drop; the number is claimed again (a restore): it goes.
      await tier.set([[hotKey('drop', 1, 'late'), Buffer.from('old')]], 120);
      expect(await tier.claimVersion('drop', 1)).toBe(false);
      expect(await tier.dropVersion('drop', 1, { release: true })).toBe(1);
      expect(await tier.client.exists(hotVersionMark('drop', 1))).toBe(0);
      expect(await tier.claimVersion('drop', 1)).toBe(true);
      expect(await tier.claimVersion('drop', 2)).toBe(false);
    });

    it('a master that stops answering without a reset costs one read timeout, not one per read: reads that need it fail at once for a while, the others go on', async () => {
      const nodes = cluster.nodes.split(',').map((seed) => ({ host: '127.0.0.1', port: Number(seed.split(':')[1]) }));
      const quick = new RedisClusterHotTier({ nodes, commandTimeoutMs: 300, masterRetryAfterMs: 800 });
      try {
        await quick.ready(20_000);
        const entries = Array.from({ length: 60 }, (_, i) => [hotKey('cut', 1, `e${i}`), Buffer.from(`v${i}`)] as const);
        await quick.set(entries);
        const ownerPort = (key: string) => Number(quick.client.slots[keySlot(key)]![0]!.split(':')[1]);
        const frozenPort = ownerPort(entries[0]![0]);
        const onFrozen = entries[0]!;
        const elsewhere = entries.find(([key]) => ownerPort(key) !== frozenPort)!;
        // Shorter than the cluster's node timeout (2 s), so no failover starts.
        cluster.freeze(frozenPort);
        try {
          let started = performance.now();
          await expect(quick.get([onFrozen[0]])).rejects.toThrow('Command timed out');
          expect(performance.now() - started).toBeGreaterThanOrEqual(250);
          started = performance.now();
          await expect(quick.get([onFrozen[0]])).rejects.toThrow(`Redis Cluster master 127.0.0.1:${frozenPort} did not answer a read within 300 ms; reads that need it fail at once for 800 ms`);
          await expect(quick.get([elsewhere[0], onFrozen[0]])).rejects.toThrow(/did not answer a read/);
          expect(performance.now() - started).toBeLessThan(250);
          expect(await quick.get([elsewhere[0]])).toEqual([elsewhere[1]]);
        } finally {
          cluster.thaw(frozenPort);
        }
        // Past the retry time the master is asked again.
        await new Promise((resolve) => setTimeout(resolve, 850));
        expect(await quick.get([onFrozen[0], elsewhere[0]])).toEqual([onFrozen[1], elsewhere[1]]);
      } finally {
        await quick.close();
      }
    });

    it('answers a health check from every master', async () => {
      await expect(tier.ping()).resolves.toBeUndefined();
    });

    it('keeps rate-limit buckets in the cluster, one key per script call', async () => {
      const client = redisClientOf(tier);
      expect(client).toBe(tier.client);
      const limiter = new RateLimiter(client);
      const decisions = [];
      for (let i = 0; i < 3; i++) decisions.push(await limiter.take('cluster-key', { perSecond: 0.01, burst: 2 }));
      expect(decisions.map((d) => d.allowed)).toEqual([true, true, false]);
      expect(await tier.client.hget('fs:ratelimit:cluster-key', 't')).not.toBeNull();
    });
  });

  describe('serving', () => {
    let redis: RedisServer;
    let single: RunningServer;
    let clustered: RunningServer;
    const drops: (() => Promise<void>)[] = [];
    const url = (server: RunningServer, suffix: string) => `http://127.0.0.1:${server.port}/features/v1/${suffix}`;
    // Expected values are a function of the id, so every answer can be checked.
    const expected = (i: number) => ({ n: i * 10, d: i / 8, s: `name-${i}`, b: i % 2 === 0, maybe: i % 5 === 0 ? null : i, at: new Date(Date.UTC(2025, 0, 1) + i * 60_000).toISOString().replace('.000Z', '.000000Z') });

    beforeAll(async () => {
      redis = await startRedis();
      const dir = await tempDir('cluster');
      const source = await writeParquet(
        path.join(dir, 'c.parquet'),
        `SELECT 'k' || i AS id, TIMESTAMP '2026-01-01' + INTERVAL (i) SECOND AS t, i * 10 AS n, i / 8 AS d, 'name-' || i AS s, i % 2 = 0 AS b,
                CASE WHEN i % 5 = 0 THEN NULL ELSE i END AS maybe, TIMESTAMP '2025-01-01' + INTERVAL (i) MINUTE AS at
           FROM range(1, ${ENTITIES + 1}) t(i)`,
      );
      const features = { n: { type: 'integer' }, d: { type: 'double' }, s: { type: 'string' }, b: { type: 'boolean' }, maybe: { type: 'integer', nullable: true }, at: { type: 'timestamp' } } as JobYaml['features'];
      await writeJobs(dir, [{ view: 'scaled', source, entity_key: 'id', event_time: 't', features }]);
      const servers: RunningServer[] = [];
      for (const hot of [{ REDIS_URL: redis.url }, { REDIS_CLUSTER_NODES: cluster.nodes }]) {
        const database = await freshDatabase(inject('databaseUrl'), 'cluster');
        drops.push(database.drop);
        const server = await startServer(
          serverConfig({ DATABASE_URL: database.url, ...hot, SYNC_JOBS_DIR: dir, REQUEST_TIMEOUT_MS: '3000', REDIS_TIMEOUT_MS: '250', REDIS_RETRY_AFTER_MS: '500' }),
        );
        servers.push(server);
        expect((await server.runner.run('scaled', 'manual')).status).toBe('succeeded');
        await server.catalog.refresh();
        expect(server.catalog.get('scaled')?.current?.version).toBe(1);
      }
      [single, clustered] = servers as [RunningServer, RunningServer];
      expect(single.hot).toBeInstanceOf(RedisHotTier);
      expect(clustered.hot).toBeInstanceOf(RedisClusterHotTier);
    });

    afterAll(async () => {
      await single?.close();
      await clustered?.close();
      for (const drop of drops) await drop();
      await redis?.destroy();
    });

    /** A body without what depends on the moment of asking (age, freshness) or on the database (publication time). */
    const stable = (body: { metadata?: Record<string, unknown> }) => {
      const { metadata, ...rest } = body;
      return { ...rest, metadata: { version: metadata?.version, as_of: metadata?.as_of } };
    };
    const getOne = async (server: RunningServer, id: string) => {
      const response = await fetch(url(server, `${id}?view=scaled`));
      return { status: response.status, tier: response.headers.get('Feature-Tier'), body: stable((await response.json()) as { metadata?: Record<string, unknown> }) };
    };
    const getBatch = async (server: RunningServer, ids: string[]) => {
      const response = await fetch(url(server, 'batch'), { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ view: 'scaled', entity_ids: ids }) });
      return { status: response.status, tier: response.headers.get('Feature-Tier'), body: stable((await response.json()) as { metadata?: Record<string, unknown> }) };
    };

    it('answers exactly as one Redis node does, value for value, single and batch, from Redis', async () => {
      // Singles: a spread of ids (every slot range), plus one that does not exist.
      const ids = [...Array.from({ length: 300 }, (_, i) => `k${1 + ((i * 37) % ENTITIES)}`), 'k999999'];
      for (let i = 0; i < ids.length; i += 10) {
        const chunk = ids.slice(i, i + 10);
        const [a, b] = await Promise.all([Promise.all(chunk.map((id) => getOne(single, id))), Promise.all(chunk.map((id) => getOne(clustered, id)))]);
        expect(b).toEqual(a);
        for (const [j, answer] of b.entries()) {
          if (chunk[j] === 'k999999') {
            expect(answer.status).toBe(404);
            continue;
          }
          expect(answer.status).toBe(200);
          expect(answer.tier).toBe('redis');
          expect((answer.body as unknown as { features: unknown }).features).toEqual(expected(Number(chunk[j]!.slice(1))));
        }
      }
      // Batches: every entity, 1000 at a time (keys of all slots in one request), with a repeated id.
      for (let start = 1; start <= ENTITIES; start += 1000) {
        const batch = [...Array.from({ length: 999 }, (_, i) => `k${start + i}`), `k${start}`];
        const [a, b] = await Promise.all([getBatch(single, batch), getBatch(clustered, batch)]);
        expect(b).toEqual(a);
        expect(b.status).toBe(200);
        expect(b.tier).toBe('redis');
        const results = (b.body as unknown as { results: { entity_id: string; status: string; features?: unknown }[] }).results;
        expect(results).toHaveLength(batch.length);
        for (const r of results) {
          const i = Number(r.entity_id.slice(1));
          if (i >= 1 && i <= ENTITIES) expect(r).toMatchObject({ status: 'PRESENT', features: expected(i) });
          else expect(r.status).toBe('NOT_FOUND');
        }
      }
      // Absent ids among present ones: the misses go to Postgres on both, with the same answer.
      const mixed = ['k1', 'k0', 'nope', `k${ENTITIES}`, 'k1'];
      const [a, b] = await Promise.all([getBatch(single, mixed), getBatch(clustered, mixed)]);
      expect(b).toEqual(a);
      expect((b.body as unknown as { results: { status: string }[] }).results.map((r) => r.status)).toEqual(['PRESENT', 'NOT_FOUND', 'NOT_FOUND', 'PRESENT', 'PRESENT']);
    });

    it('a master killed under load: no wrong answer, no 5xx, and answers from Redis again after the failover', async () => {
      const before = await cluster.masters();
      expect(before).toHaveLength(3);
      const victim = before[0]!;
      const outcomes: { status: number; tier: string | null; wrong: string[] }[] = [];
      const random = () => 1 + Math.floor(Math.random() * ENTITIES);
      const one = async () => {
        const i = random();
        const response = await fetch(url(clustered, `k${i}?view=scaled`));
        const body = (await response.json()) as { features?: unknown };
        const wrong = response.status === 200 && JSON.stringify(body.features) !== JSON.stringify(expected(i)) ? [`k${i}`] : [];
        outcomes.push({ status: response.status, tier: response.headers.get('Feature-Tier'), wrong });
      };
      const batch = async () => {
        const ids = Array.from({ length: 25 }, random);
        const response = await fetch(url(clustered, 'batch'), { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ view: 'scaled', entity_ids: ids.map((i) => `k${i}`) }) });
        const body = (await response.json()) as { results?: { entity_id: string; status: string; features?: unknown }[] };
        const wrong =
          response.status === 200
            ? ids.filter((i, j) => body.results?.[j]?.entity_id !== `k${i}` || body.results?.[j]?.status !== 'PRESENT' || JSON.stringify(body.results?.[j]?.features) !== JSON.stringify(expected(i))).map((i) => `k${i}`)
            : [];
        outcomes.push({ status: response.status, tier: response.headers.get('Feature-Tier'), wrong });
      };

      // Bounded load: 8 workers, one batch in five requests, until the failover is over and a little after.
      let stopAt = Number.POSITIVE_INFINITY;
      const started = Date.now();
      const workers = Array.from({ length: 8 }, async () => {
        for (let n = 0; Date.now() < stopAt && Date.now() - started < 90_000; n++) await (n % 5 === 4 ? batch() : one());
      });
      // And writes as a sync makes them, from just after the kill on (a write the victim acknowledged before it died
      // may be lost with it, as documented): each is acknowledged whole, or fails with an error the sync engine retries
      // (a transient one), never another kind. A failed write may have landed in part; a sync publishes nothing then.
      const writer = createHotTier(seeds(), 2000) as RedisClusterHotTier;
      await writer.ready(20_000);
      const writes: { keys: string[]; error?: unknown }[] = [];
      let killed: () => void = () => undefined;
      const afterKill = new Promise<void>((resolve) => (killed = resolve));
      const writing = (async () => {
        await afterKill;
        await new Promise((r) => setTimeout(r, 200));
        for (let n = 0; Date.now() < stopAt && Date.now() - started < 90_000; n++) {
          const keys = Array.from({ length: 30 }, (_, i) => hotKey('failover-writes', 1, `w${n}-${i}`));
          try {
            await writer.set(keys.map((key) => [key, Buffer.from(key)] as const));
            writes.push({ keys });
          } catch (error) {
            writes.push({ keys, error });
          }
          await new Promise((r) => setTimeout(r, 100));
        }
      })();
      await new Promise((r) => setTimeout(r, 1500));
      const beforeKill = outcomes.length;
      cluster.kill(victim);
      killed();
      await cluster.waitHealthy(60_000, 3);
      stopAt = Date.now() + 3000;
      await Promise.all([...workers, writing]);
      try {
        const failed = writes.filter((w) => w.error !== undefined);
        expect(failed.map((w) => [String(w.error), isTransient(w.error)]).filter(([, transient]) => !transient)).toEqual([]);
        expect(failed.length).toBeGreaterThan(0);
        // Every write that was acknowledged after the kill is there, value for value, from the surviving masters.
        const landed = writes.filter((w) => w.error === undefined).flatMap((w) => w.keys);
        expect(landed.length).toBeGreaterThan(0);
        const read = (await writer.get(landed)).map((v) => v?.toString() ?? null);
        expect(landed.filter((key, i) => read[i] !== key)).toEqual([]);
      } finally {
        await writer.close();
      }

      const after = await cluster.masters();
      expect(after).not.toContain(victim);
      expect(after).toHaveLength(3);
      expect(beforeKill).toBeGreaterThan(0);
      expect(outcomes.length).toBeGreaterThan(beforeKill);
      expect(outcomes.flatMap((o) => o.wrong)).toEqual([]);
      expect(outcomes.filter((o) => o.status !== 200)).toEqual([]);
      // The kill was felt: some answers came from Postgres while the cluster was failing over.
      expect(outcomes.some((o) => o.tier === 'postgres')).toBe(true);

      // Without restarting the API: every id answered from Redis again (the promoted replica, or a refill).
      const sample = Array.from({ length: 60 }, (_, i) => 1 + ((i * 53) % ENTITIES));
      const allFromRedis = async () => {
        for (const i of sample) {
          const answer = await getOne(clustered, `k${i}`);
          if (answer.status !== 200 || (answer.body as unknown as { features: unknown }).features === undefined) return `k${i}: ${answer.status}`;
          expect((answer.body as unknown as { features: unknown }).features).toEqual(expected(i));
          if (answer.tier !== 'redis') return `k${i} from ${answer.tier}`;
        }
        return 'all from redis';
      };
      await expect.poll(allFromRedis, { timeout: 30_000, interval: 500 }).toBe('all from redis');
      const ready = await fetch(`http://127.0.0.1:${clustered.port}/readyz`);
      expect(await ready.json()).toMatchObject({ status: 'ready', checks: { hot_tier: { kind: 'redis', status: 'ok' } } });
      // A failover plus the recovery poll can outlast the default minute on a loaded 2-core CI machine.
    }, 180_000);
  });
});
