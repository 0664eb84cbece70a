// Per-key rate limits when Redis stops answering: the buckets move to this
// process for REDIS_RETRY_AFTER_MS, so a frozen Redis (whose connection still
// looks ready) costs one request the timeout, not every keyed request.
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RateLimiter } from '../../src/stores/rate-limit.js';
import { startRedis, type RedisServer } from '../support/servers.js';

describe('rate limiter with Redis frozen', () => {
  let redis: RedisServer;
  let client: Redis;

  beforeAll(async () => {
    redis = await startRedis();
    client = new Redis(redis.url, { commandTimeout: 200, maxRetriesPerRequest: 0, enableOfflineQueue: false });
    await new Promise((resolve) => client.once('ready', resolve));
  });

  afterAll(async () => {
    client?.disconnect();
    await redis?.destroy();
  });

  it('pays the timeout once, uses local buckets meanwhile, and goes back to Redis after the skip time', async () => {
    const errors: Error[] = [];
    const limiter = new RateLimiter(client, 600, (error) => errors.push(error));
    // Slow enough a refill that each token taken in Redis shows.
    const limit = { perSecond: 0.01, burst: 50 };
    const timed = async () => {
      const started = performance.now();
      const decision = await limiter.take('k', limit);
      return { ms: performance.now() - started, allowed: decision.allowed };
    };
    expect((await timed()).allowed).toBe(true);
    const tokensInRedis = () => client.hget('fs:ratelimit:k', 't');
    expect(Number(await tokensInRedis())).toBeCloseTo(49, 0);

    redis.freeze();
    try {
      const first = await timed();
      expect(first).toMatchObject({ allowed: true });
      expect(first.ms).toBeGreaterThanOrEqual(190);
      // Before the fix, each of these waited the 200 ms timeout too.
      const next = [];
      for (let i = 0; i < 5; i++) next.push(await timed());
      expect(next.every((t) => t.allowed && t.ms < 50)).toBe(true);
      // Said once, when the buckets moved into this process, not per request.
      expect(errors.map((e) => e.message)).toEqual(['Command timed out']);
    } finally {
      redis.thaw();
    }
    // Within the skip time the local bucket still answers; then one request tries Redis again, and it is used.
    // (The call that timed out still ran once Redis thawed: the read below waits behind it on the connection.)
    const before = await tokensInRedis();
    await timed();
    expect(await tokensInRedis()).toBe(before);
    await new Promise((resolve) => setTimeout(resolve, 650));
    await timed();
    expect(Number(await tokensInRedis())).toBeCloseTo(Number(before) - 1, 1);
    await timed();
    expect(Number(await tokensInRedis())).toBeCloseTo(Number(before) - 2, 1);
  });
});
