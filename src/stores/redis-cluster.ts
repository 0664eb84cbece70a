// Owns the Redis Cluster hot tier: the same contract as one Redis node, spread
// over the masters of a cluster by key slot.
//
// Key layout: keys stay `fs:<view>:<version>:<entity>` with no hash tag, so a
// version's keys spread over every master. A version switch is still atomic
// for readers on a cluster: the switch happens in the Postgres catalog, in one
// step, and readers only ever ask for keys of the version the catalog names;
// a version's keys are written in full before it is published and never
// change afterwards. So whichever master answers, a value is either the right
// one or absent (a miss, answered from Postgres), never another version's.
//
// Multi-key commands (MGET, MSET, UNLINK of many keys) fail with CROSSSLOT
// unless all keys share a slot, so every read and write here is per key and
// ioredis' auto-pipelining groups them into one pipeline per master each turn
// of the event loop: a batch costs one round trip per master involved.
//
// Failover: reads fail fast (no offline queue, no retry on a lost connection
// or CLUSTERDOWN, and a deadline over the whole call), so a master that dies
// mid-load surfaces as errors the reader turns into Postgres answers (and
// opens its breaker); the slot map is refreshed on a timer and on MOVED, so
// the promoted replica answers again without a restart. Reads go to masters
// only: a replica may lag, which could cost only misses, but masters keep one
// story.
import { Cluster, type Redis } from 'ioredis';
import type { HotTier } from './hot-tier.js';
import { hotKeyPrefix } from './hot-tier.js';

export interface RedisClusterOptions {
  /** Seed nodes; the client learns the rest of the topology from any one of them. */
  readonly nodes: readonly { readonly host: string; readonly port: number }[];
  /** Bound on any one call (a read, a batch write); it fails after this and the reader falls back. */
  readonly commandTimeoutMs: number;
  /** How often the slot map is refreshed, so a failover is noticed without waiting for a MOVED. */
  readonly slotsRefreshMs?: number;
}

const SCAN_COUNT = 1000;

export class RedisClusterHotTier implements HotTier {
  readonly kind = 'redis' as const;
  readonly client: Cluster;
  private readonly timeoutMs: number;

  constructor(options: RedisClusterOptions) {
    if (options.nodes.length === 0) throw new Error('a Redis Cluster needs at least one seed node (REDIS_CLUSTER_NODES)');
    this.timeoutMs = options.commandTimeoutMs;
    this.client = new Cluster(
      options.nodes.map((n) => ({ host: n.host, port: n.port })),
      {
        enableOfflineQueue: false,
        enableAutoPipelining: true,
        scaleReads: 'master',
        // A lost connection or CLUSTERDOWN fails the command at once (the reader has Postgres);
        // MOVED is still followed, since it names the node that now owns the slot.
        retryDelayOnFailover: 0,
        retryDelayOnClusterDown: 0,
        retryDelayOnTryAgain: 50,
        maxRedirections: 4,
        slotsRefreshInterval: options.slotsRefreshMs ?? 1000,
        slotsRefreshTimeout: Math.max(options.commandTimeoutMs, 1000),
        // Keep trying to reach the cluster in the background, at most every 2 s.
        clusterRetryStrategy: (attempt) => Math.min(100 * attempt, 2000),
        redisOptions: {
          commandTimeout: options.commandTimeoutMs,
          connectTimeout: Math.max(options.commandTimeoutMs, 1000),
          maxRetriesPerRequest: 0,
        },
      },
    );
    // Node and connection errors surface on each command; the events themselves are not fatal.
    this.client.on('error', () => undefined);
    this.client.on('node error', () => undefined);
  }

  async get(keys: readonly string[]): Promise<(string | null)[]> {
    return this.within('read', Promise.all(keys.map((key) => this.client.get(key))));
  }

  async set(entries: readonly (readonly [string, string])[], ttlSeconds?: number): Promise<void> {
    if (entries.length === 0) return;
    await this.within(
      `write of ${entries.length} keys`,
      Promise.all(entries.map(([key, value]) => (ttlSeconds ? this.client.set(key, value, 'EX', ttlSeconds) : this.client.set(key, value)))),
    );
  }

  /**
   * Scans every master and unlinks the version's keys there. Refuses to run on
   * an unhealthy cluster or a stale map of masters, since keys on a master it
   * missed would stay behind unnoticed.
   */
  async dropVersion(view: string, version: number): Promise<number> {
    const masters = await this.healthyMasters();
    let removed = 0;
    for (const node of masters) {
      let cursor = '0';
      do {
        const [next, keys] = await node.scan(cursor, 'MATCH', `${hotKeyPrefix(view, version)}*`, 'COUNT', SCAN_COUNT);
        cursor = next;
        if (keys.length === 0) continue;
        // One key per UNLINK (keys of one node still span many slots), pipelined on that node.
        const pipeline = node.pipeline();
        for (const key of keys) pipeline.unlink(key);
        for (const [error, count] of (await pipeline.exec()) ?? []) {
          if (error) throw new Error(`Redis Cluster: dropping version ${version} of ${view} on ${nodeName(node)} failed: ${error.message}`);
          removed += Number(count);
        }
      } while (cursor !== '0');
    }
    return removed;
  }

  /** Every master must answer and see the cluster as healthy, so /readyz reports a failover in progress. */
  async ping(): Promise<void> {
    await this.within('health check', this.healthyMasters());
  }

  /** Waits for the cluster's slot map, so start-up can say plainly that the cluster is unreachable. */
  async ready(timeoutMs: number): Promise<void> {
    if (this.client.status === 'ready') return;
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.client.off('ready', onReady);
        reject(new Error(`the Redis Cluster did not become ready within ${timeoutMs} ms (are the REDIS_CLUSTER_NODES seeds right and cluster_state ok?)`));
      }, timeoutMs);
      const onReady = () => {
        clearTimeout(timer);
        resolve();
      };
      this.client.once('ready', onReady);
    });
  }

  async close(): Promise<void> {
    this.client.disconnect();
  }

  /** The masters ioredis routes to, checked against the cluster's own view: all answer, all say cluster_state:ok, and none is missing. */
  private async healthyMasters(): Promise<Redis[]> {
    if (this.client.status !== 'ready') throw new Error(`the Redis Cluster client is ${this.client.status}, not ready`);
    const masters = this.client.nodes('master');
    if (masters.length === 0) throw new Error('the Redis Cluster client knows no master yet');
    const infos = await Promise.all(masters.map(async (node) => [node, String(await node.cluster('INFO'))] as const));
    for (const [node, info] of infos) {
      const state = /cluster_state:(\w+)/.exec(info)?.[1];
      if (state !== 'ok') throw new Error(`Redis Cluster node ${nodeName(node)} reports cluster_state:${state ?? 'unknown'}; a failover may be in progress`);
      const size = Number(/cluster_size:(\d+)/.exec(info)?.[1]);
      if (size !== masters.length) throw new Error(`Redis Cluster has ${size} masters serving slots but the client knows ${masters.length}; its slot map is being refreshed, retry shortly`);
    }
    return masters;
  }

  /** Bounds a call, whatever ioredis does underneath (redirections, reconnection), so a failover costs at most this. */
  private within<T>(what: string, work: Promise<T>): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`Redis Cluster ${what} did not finish within ${this.timeoutMs} ms`)), this.timeoutMs);
    });
    return Promise.race([work, deadline]).finally(() => clearTimeout(timer));
  }
}

function nodeName(node: Redis): string {
  return `${node.options.host}:${node.options.port}`;
}
