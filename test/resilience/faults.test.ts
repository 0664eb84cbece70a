// Serving through store faults and overload, against real Postgres and Redis
// processes that the test stops, freezes (SIGSTOP) and restarts while a
// bounded load runs on loopback: correct answers or fast, clear 503s, never a
// hang or a wrong value.
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServer, type RunningServer } from '../../src/server.js';
import { serverConfig, tempDir, writeJobs, writeParquet } from '../support/fixtures.js';
import { startPostgres, startRedis, type PostgresServer, type RedisServer } from '../support/servers.js';

const ENTITIES = 2000;
const BUDGET_MS = 800;

interface Outcome {
  status: number;
  ms: number;
  id: number;
  value: number | undefined;
  tier: string | null;
}

describe('faults and overload', () => {
  let postgres: PostgresServer;
  let redis: RedisServer;
  let server: RunningServer;
  let baseUrl: string;

  const lookup = async (id: number): Promise<Outcome> => {
    const start = performance.now();
    const response = await fetch(`${baseUrl}/features/v1/k${id}?view=faults`);
    const body = (await response.json()) as { features?: { n: number } };
    return { status: response.status, ms: performance.now() - start, id, value: body.features?.n, tier: response.headers.get('Feature-Tier') };
  };

  /** A bounded load: `total` lookups of random entities, `concurrency` at a time. */
  const load = async (total: number, concurrency: number, during?: (done: number) => void): Promise<Outcome[]> => {
    const outcomes: Outcome[] = [];
    let next = 0;
    await Promise.all(
      Array.from({ length: concurrency }, async () => {
        while (next < total) {
          next++;
          during?.(next);
          outcomes.push(await lookup(1 + Math.floor(Math.random() * ENTITIES)));
        }
      }),
    );
    return outcomes;
  };
  const p99 = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length * 0.99)]!;
  // A right answer is the entity's own value: n = id * 10.
  const wrong = (outcomes: Outcome[]) => outcomes.filter((o) => o.status === 200 && o.value !== o.id * 10);

  beforeAll(async () => {
    postgres = await startPostgres();
    redis = await startRedis();
    const dir = await tempDir('faults');
    const source = await writeParquet(path.join(dir, 'f.parquet'), `SELECT 'k' || i AS id, TIMESTAMP '2026-01-01' AS t, i * 10 AS n FROM range(1, ${ENTITIES + 1}) t(i)`);
    await writeJobs(dir, [{ view: 'faults', source, entity_key: 'id', event_time: 't', features: { n: { type: 'integer' } } }]);
    server = await startServer(
      serverConfig({ DATABASE_URL: postgres.url, REDIS_URL: redis.url, SYNC_JOBS_DIR: dir, REQUEST_TIMEOUT_MS: String(BUDGET_MS), REDIS_TIMEOUT_MS: '100', REDIS_RETRY_AFTER_MS: '500', MAX_IN_FLIGHT: '16' }),
    );
    expect((await server.runner.run('faults', 'manual')).status).toBe('succeeded');
    baseUrl = `http://127.0.0.1:${server.port}`;
  });

  afterAll(async () => {
    redis?.thaw();
    postgres?.thaw();
    await server?.close();
    await redis?.destroy();
    await postgres?.destroy();
  });

  it('Redis frozen mid-load: no wrong answer, no 5xx, fast once the breaker is open, and Redis again after it thaws', async () => {
    let frozenAt = -1;
    const outcomes = await load(600, 8, (n) => {
      if (n === 150) {
        redis.freeze();
        frozenAt = performance.now();
      }
    });
    redis.thaw();
    expect(wrong(outcomes)).toEqual([]);
    expect(outcomes.filter((o) => o.status >= 500)).toEqual([]);
    expect(outcomes.every((o) => o.status === 200)).toBe(true);
    expect(outcomes.some((o) => o.tier === 'postgres')).toBe(true);
    // After the first timeouts open the breaker, lookups skip Redis: p99 well within the budget.
    const later = outcomes.slice(300).map((o) => o.ms);
    expect(p99(later)).toBeLessThan(BUDGET_MS);
    expect(frozenAt).toBeGreaterThan(0);
    await expect.poll(async () => (await lookup(7)).tier, { timeout: 10_000 }).toBe('redis');
  });

  it('Redis stopped mid-load, then restarted: no wrong answer, no 5xx, recovery without restarting the API', async () => {
    const outcomes = await load(400, 8, (n) => {
      if (n === 100) void redis.stop();
    });
    expect(wrong(outcomes)).toEqual([]);
    expect(outcomes.filter((o) => o.status !== 200)).toEqual([]);
    await redis.start();
    // Redis came back empty; misses refill it from Postgres, then it answers again.
    await expect.poll(async () => (await lookup(9)).tier, { timeout: 10_000 }).toBe('redis');
  });

  it('Postgres stopped: what Redis holds is still served, the rest gets a fast 503, and /readyz says degraded', async () => {
    // Warm Redis (it restarted empty in the previous case) until ids 1..50 all answer from it:
    // misses fill it behind the answer, except while its breaker is still open.
    const warm = Array.from({ length: 50 }, (_, i) => i + 1);
    const allFromRedis = async () => {
      for (const id of warm) if ((await lookup(id)).tier !== 'redis') return false;
      return true;
    };
    await expect.poll(allFromRedis, { timeout: 10_000 }).toBe(true);
    await postgres.stop();
    try {
      // Eight at a time, within the in-flight limit of 16.
      const held: Outcome[] = [];
      for (let i = 0; i < warm.length; i += 8) held.push(...(await Promise.all(warm.slice(i, i + 8).map(lookup))));
      expect(held.filter((o) => o.status !== 200 || o.value !== o.id * 10)).toEqual([]);
      const missing = await lookup(1999);
      expect(missing.status).toBe(503);
      expect(missing.ms).toBeLessThan(BUDGET_MS + 200);
      const ready = await fetch(`${baseUrl}/readyz`);
      expect(ready.status).toBe(200);
      expect(await ready.json()).toMatchObject({ status: 'degraded', checks: { postgres: 'unreachable', hot_tier: { status: 'ok' } } });
    } finally {
      await postgres.start();
    }
  });

  it('both stores down: 503 problem responses with Retry-After, each within the budget', async () => {
    postgres.freeze();
    redis.freeze();
    try {
      const outcomes = await Promise.all(
        Array.from({ length: 10 }, async (_, i) => {
          const start = performance.now();
          const response = await fetch(`${baseUrl}/features/v1/k${i + 1}?view=faults`);
          return { status: response.status, ms: performance.now() - start, retryAfter: response.headers.get('Retry-After'), type: response.headers.get('Content-Type') };
        }),
      );
      for (const o of outcomes) {
        expect(o).toMatchObject({ status: 503, retryAfter: '1', type: 'application/problem+json' });
        expect(o.ms).toBeLessThan(BUDGET_MS + 300);
      }
    } finally {
      postgres.thaw();
      redis.thaw();
    }
    await expect.poll(async () => (await lookup(3)).status, { timeout: 10_000 }).toBe(200);
  });

  it('overload: batches whose bodies stall hold no in-flight slot, so lookups still get through', async () => {
    const { connect } = await import('node:net');
    const { port } = new URL(baseUrl);
    // Twice the 16 slots: each sends its headers and part of its body, then nothing.
    const stalled = await Promise.all(
      Array.from({ length: 32 }, () => new Promise<import('node:net').Socket>((resolve, reject) => {
        const socket = connect(Number(port), '127.0.0.1', () => {
          socket.write(`POST /features/v1/batch HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"view":`);
          resolve(socket);
        });
        socket.on('error', reject);
      })),
    );
    try {
      await new Promise((resolve) => setTimeout(resolve, 200));
      for (let i = 0; i < 5; i++) expect((await lookup(1)).status).toBe(200);
    } finally {
      for (const socket of stalled) socket.destroy();
    }
  });

  it('a request whose body stalls gets a 408 within about 30 s, and its connection is closed', async () => {
    const { connect } = await import('node:net');
    const started = performance.now();
    const answer = await new Promise<string>((resolve, reject) => {
      let received = '';
      const socket = connect(Number(new URL(baseUrl).port), '127.0.0.1', () => {
        socket.write(`POST /features/v1/batch HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"view":`);
      });
      socket.setEncoding('utf8');
      socket.on('data', (chunk: string) => (received += chunk));
      // Closed by the server: this end never closes its side.
      socket.on('close', () => resolve(received));
      socket.on('error', reject);
    });
    const seconds = (performance.now() - started) / 1000;
    expect(answer).toMatch(/^HTTP\/1\.1 408 /);
    expect(answer).toContain('urn:feature-serving:problem:request-timeout');
    expect(seconds).toBeGreaterThanOrEqual(29);
    expect(seconds).toBeLessThan(40);
  }, 60_000);

  it('overload: requests past the in-flight limit get an immediate 503, admitted ones stay within the budget', async () => {
    // Postgres frozen makes every miss hold its slot for the whole budget: a flood fills the 16 slots.
    await fetch(`${baseUrl}/features/v1/k1?view=faults`);
    const client = new (await import('ioredis')).Redis(redis.url);
    await client.flushall();
    client.disconnect();
    postgres.freeze();
    try {
      const flood = await Promise.all(
        Array.from({ length: 80 }, async (_, i) => {
          const start = performance.now();
          const response = await fetch(`${baseUrl}/features/v1/k${i + 1}?view=faults`);
          const body = (await response.json()) as { type?: string };
          return { status: response.status, ms: performance.now() - start, type: body.type };
        }),
      );
      const shed = flood.filter((o) => o.type === 'urn:feature-serving:problem:overloaded');
      const admitted = flood.filter((o) => o.type !== 'urn:feature-serving:problem:overloaded');
      expect(shed.length).toBeGreaterThan(40);
      expect(p99(shed.map((o) => o.ms))).toBeLessThan(200);
      expect(admitted.length).toBeGreaterThan(0);
      expect(p99(admitted.map((o) => o.ms))).toBeLessThan(BUDGET_MS + 300);
    } finally {
      postgres.thaw();
    }
    await expect.poll(async () => (await lookup(5)).status, { timeout: 10_000 }).toBe(200);
  });
});
