// Concurrent single-key lookups of one event-loop turn become one multi-key
// read, against a real Redis: the values land with the right callers (absent
// keys, duplicates), the server sees one MGET instead of many GETs, a lone
// lookup is still a GET, a busy turn is split, and a failed read fails every
// lookup that rode on it.
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ReadCoalescer } from '../../src/stores/coalesce.js';
import { RedisHotTier } from '../../src/stores/redis.js';
import { startRedis, type RedisServer } from '../support/servers.js';

describe('coalesced single-key reads', () => {
  let redis: RedisServer;
  let tier: RedisHotTier;
  let probe: Redis;

  beforeAll(async () => {
    redis = await startRedis();
    tier = new RedisHotTier({ url: redis.url, commandTimeoutMs: 2000 });
    await tier.ready(5000);
    probe = new Redis(redis.url);
    await tier.set(Array.from({ length: 500 }, (_, i) => [`co:${i}`, Buffer.from(`v${i}`)] as const));
  });
  afterAll(async () => {
    probe?.disconnect();
    await tier?.close();
    await redis?.destroy();
  });

  /** Calls of each command the server has run so far. */
  const calls = async (): Promise<Record<string, number>> => {
    const info = await probe.info('commandstats');
    return Object.fromEntries([...info.matchAll(/cmdstat_(\w+):calls=(\d+)/g)].map((m) => [m[1]!, Number(m[2])]));
  };

  it('reads the lookups of one turn with one MGET, each value to its caller', async () => {
    const before = await calls();
    // Present, absent and repeated keys, all asked in the same turn.
    const ids = Array.from({ length: 60 }, (_, i) => (i % 7 === 0 ? `co:absent${i}` : `co:${(i * 13) % 500}`)).concat(['co:5', 'co:5']);
    const values = await Promise.all(ids.map((key) => tier.get([key])));
    expect(values.map(([v]) => v?.toString() ?? null)).toEqual(ids.map((key) => (key.includes('absent') ? null : `v${key.slice(3)}`)));
    const after = await calls();
    expect((after.mget ?? 0) - (before.mget ?? 0)).toBe(1);
    expect((after.get ?? 0) - (before.get ?? 0)).toBe(0);
  });

  it('sends a lone lookup as a GET, and lookups of different turns separately', async () => {
    const before = await calls();
    expect((await tier.get(['co:1']))[0]?.toString()).toBe('v1');
    expect((await tier.get(['co:2']))[0]?.toString()).toBe('v2');
    const after = await calls();
    expect([(after.get ?? 0) - (before.get ?? 0), (after.mget ?? 0) - (before.mget ?? 0)]).toEqual([2, 0]);
  });

  it('splits a turn with more lookups than its bound into several reads', async () => {
    const seen: number[] = [];
    const coalescer = new ReadCoalescer(
      async (key) => (seen.push(1), Buffer.from(key)),
      async (keys) => (seen.push(keys.length), keys.map((key) => Buffer.from(key))),
      { maxKeys: 128 },
    );
    const keys = Array.from({ length: 300 }, (_, i) => `k${i}`);
    const values = await Promise.all(keys.map((key) => coalescer.get(key)));
    expect(values.map(String)).toEqual(keys);
    expect(seen).toEqual([128, 128, 44]);
  });

  /** A coalescer whose reads record their sizes, and a way to ask for keys one turn of the event loop apart. */
  const recording = (options: ConstructorParameters<typeof ReadCoalescer>[2]) => {
    const sizes: number[] = [];
    const coalescer = new ReadCoalescer(
      async (key) => (sizes.push(1), Buffer.from(key)),
      async (keys) => (sizes.push(keys.length), keys.map((key) => Buffer.from(key))),
      options,
    );
    const askOverTurns = async (perTurn: number[]): Promise<string[]> => {
      const pending: Promise<Buffer | null>[] = [];
      let n = 0;
      for (const count of perTurn) {
        for (let i = 0; i < count; i++) pending.push(coalescer.get(`k${n++}`));
        await new Promise((resolve) => setImmediate(resolve));
      }
      return (await Promise.all(pending)).map(String);
    };
    return { sizes, askOverTurns };
  };

  it('holds a small read for a few turns, so the lookups of the next turns ride on it', async () => {
    const { sizes, askOverTurns } = recording({ fill: 32, holdTurns: 4 });
    // Three turns of three lookups each: one read of nine keys, each value to its caller.
    expect(await askOverTurns([3, 3, 3])).toEqual(Array.from({ length: 9 }, (_, i) => `k${i}`));
    expect(sizes).toEqual([9]);
  });

  it('holds a read for no more than its turns, however steadily lookups keep coming', async () => {
    const { sizes, askOverTurns } = recording({ fill: 32, holdTurns: 4 });
    // One lookup per turn for twelve turns: reads go out every few turns, never one held to the end.
    expect(await askOverTurns(Array.from({ length: 12 }, () => 1))).toEqual(Array.from({ length: 12 }, (_, i) => `k${i}`));
    expect(sizes.length).toBeGreaterThanOrEqual(2);
    expect(Math.max(...sizes)).toBeLessThanOrEqual(5);
    expect(sizes.reduce((a, b) => a + b)).toBe(12);
  });

  it('sends a read that reached its fill at the end of that turn, without holding it', async () => {
    const { sizes, askOverTurns } = recording({ fill: 8, holdTurns: 4 });
    // Ten lookups fill the first read; the two of the next turn go in a read of their own.
    await askOverTurns([10, 2]);
    expect(sizes).toEqual([10, 2]);
  });

  it('answers a lone lookup within its few held turns, not on a timer', async () => {
    const sizes: number[] = [];
    const coalescer = new ReadCoalescer(
      async (key) => (sizes.push(1), Buffer.from(key)),
      async (keys) => (sizes.push(keys.length), keys.map((key) => Buffer.from(key))),
      { fill: 32, holdTurns: 4 },
    );
    // Count turns of the event loop until the answer: at most the held turns and the send's own, however slow the
    // machine (a timer, even of 1 ms, would take many idle turns).
    let answered = false;
    const value = coalescer.get('k0').then((v) => ((answered = true), v));
    let turns = 0;
    while (!answered && turns < 1000) {
      await new Promise((resolve) => setImmediate(resolve));
      turns++;
    }
    expect(String(await value)).toBe('k0');
    expect(sizes).toEqual([1]);
    expect(turns).toBeLessThanOrEqual(6);
  });

  it('fails every lookup of a read that failed, and the next turn reads again', async () => {
    let fail = true;
    const coalescer = new ReadCoalescer(
      async () => Buffer.from('one'),
      async (keys) => {
        if (fail) throw new Error('connection lost');
        return keys.map(() => Buffer.from('ok'));
      },
    );
    const results = await Promise.allSettled(['a', 'b', 'c'].map((key) => coalescer.get(key)));
    expect(results.map((r) => (r.status === 'rejected' ? (r.reason as Error).message : 'fulfilled'))).toEqual(['connection lost', 'connection lost', 'connection lost']);
    fail = false;
    expect((await Promise.all(['a', 'b'].map((key) => coalescer.get(key)))).map(String)).toEqual(['ok', 'ok']);
    // A read that throws instead of rejecting still settles every lookup, in a full turn too.
    const throwing = new ReadCoalescer(
      () => {
        throw new Error('thrown');
      },
      () => {
        throw new Error('thrown');
      },
      { maxKeys: 4 },
    );
    const settled = await Promise.allSettled(['a', 'b', 'c', 'd', 'e'].map((key) => throwing.get(key)));
    expect(settled.map((r) => r.status)).toEqual(['rejected', 'rejected', 'rejected', 'rejected', 'rejected']);
  });

  it('fails every lookup of a read that answered fewer values than keys, rather than read them as misses', async () => {
    const short = new ReadCoalescer(
      async () => Buffer.from('one'),
      async (keys) => keys.slice(1).map(() => Buffer.from('v')),
    );
    const results = await Promise.allSettled(['a', 'b', 'c'].map((key) => short.get(key)));
    expect(results.map((r) => (r.status === 'rejected' ? (r.reason as Error).message : 'fulfilled'))).toEqual(Array(3).fill('a read of 3 keys answered 2 values'));
  });

  it('fails the lookups of one turn when Redis is gone, within the command bound', async () => {
    const gone = new RedisHotTier({ url: 'redis://127.0.0.1:1', commandTimeoutMs: 200 });
    try {
      const results = await Promise.allSettled(['x', 'y'].map((key) => gone.get([key])));
      expect(results.every((r) => r.status === 'rejected')).toBe(true);
    } finally {
      await gone.close();
    }
  });
});
