// Picks the Redis hot tier the configuration names: one node (REDIS_URL) or a
// Redis Cluster (REDIS_CLUSTER_NODES). Both keep the same keys and values, so
// everything above the HotTier interface is the same either way.
import type { Cluster, Redis } from 'ioredis';
import type { Config } from '../config/index.js';
import type { HotTier } from './hot-tier.js';
import { RedisClusterHotTier } from './redis-cluster.js';
import { RedisHotTier } from './redis.js';

export type RedisTier = RedisHotTier | RedisClusterHotTier;

export function createHotTier(config: Pick<Config, 'redisUrl' | 'redisClusterNodes' | 'redisClusterConnection' | 'redisRetryAfterMs' | 'redisFillTtlSeconds'>, commandTimeoutMs: number): RedisTier {
  if (config.redisClusterNodes) {
    const { username, password, tls } = config.redisClusterConnection;
    // TLS with the system's CAs and any in NODE_EXTRA_CA_CERTS, checked against each node's name.
    return new RedisClusterHotTier({ nodes: config.redisClusterNodes, commandTimeoutMs, masterRetryAfterMs: config.redisRetryAfterMs, fillTtlSeconds: config.redisFillTtlSeconds, username, password, tls: tls ? {} : undefined });
  }
  if (config.redisUrl) return new RedisHotTier({ url: config.redisUrl, commandTimeoutMs, fillTtlSeconds: config.redisFillTtlSeconds });
  throw new Error('no Redis configured: set REDIS_URL or REDIS_CLUSTER_NODES');
}

/** The Redis client behind a hot tier, for state that all processes share (rate-limit buckets); none in the embedded mode. */
export function redisClientOf(hot: HotTier): Redis | Cluster | undefined {
  return hot instanceof RedisHotTier || hot instanceof RedisClusterHotTier ? hot.client : undefined;
}
