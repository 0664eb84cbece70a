// Owns the Redis hot tier. Reads fail fast (no offline queue, a command
// timeout) so that a slow or absent Redis costs a lookup milliseconds, not a
// hang; the reader then answers from Postgres.
import { Redis } from 'ioredis';
import { ReadCoalescer } from './coalesce.js';
import type { HotTier } from './hot-tier.js';
import { DEFAULT_FILL_TTL_SECONDS, hotKeyPrefix, hotVersionMark, markAfterDropSeconds } from './hot-tier.js';

export interface RedisOptions {
  readonly url: string;
  /** Bound on any one command; reads give up and fall back after this. */
  readonly commandTimeoutMs: number;
  /** TTL of lookups' fills (REDIS_FILL_TTL_SECONDS): how long a dropped version's mark must outlive them. */
  readonly fillTtlSeconds?: number;
}

const SCAN_COUNT = 1000;

export class RedisHotTier implements HotTier {
  readonly kind = 'redis' as const;
  readonly client: Redis;
  /** Single-key lookups of the same few event-loop turns, read together. */
  private readonly single: ReadCoalescer;
  private readonly connectTimeoutMs: number;
  private readonly fillTtlSeconds: number;

  constructor(options: RedisOptions) {
    this.connectTimeoutMs = Math.max(options.commandTimeoutMs, 1000);
    this.fillTtlSeconds = options.fillTtlSeconds ?? DEFAULT_FILL_TTL_SECONDS;
    this.client = new Redis(options.url, {
      commandTimeout: options.commandTimeoutMs,
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      connectTimeout: this.connectTimeoutMs,
      // Keep trying to reconnect in the background, at most every 2 s.
      retryStrategy: (attempt) => Math.min(100 * attempt, 2000),
      lazyConnect: false,
    });
    // Connection errors surface on each command; the event itself is not fatal.
    this.client.on('error', () => undefined);
    this.single = new ReadCoalescer(
      (key) => this.client.getBuffer(key),
      (keys) => this.client.mgetBuffer(...keys),
    );
  }

  async get(keys: readonly string[]): Promise<(Buffer | null)[]> {
    if (keys.length === 1) return [await this.single.get(keys[0]!)];
    return this.client.mgetBuffer(...keys);
  }

  async set(entries: readonly (readonly [string, Buffer])[], ttlSeconds?: number): Promise<void> {
    if (entries.length === 0) return;
    try {
      await this.write(entries, ttlSeconds);
    } catch (error) {
      // Say which store failed; keep the code, so connection losses are still seen as transient.
      throw Object.assign(new Error(`Redis did not take a write of ${entries.length} entries: ${(error as Error).message}`, { cause: error }), { code: (error as { code?: string }).code });
    }
  }

  private async write(entries: readonly (readonly [string, Buffer])[], ttlSeconds: number | undefined): Promise<void> {
    if (ttlSeconds) {
      const pipeline = this.client.pipeline();
      for (const [key, value] of entries) pipeline.set(key, value, 'EX', ttlSeconds);
      const results = await pipeline.exec();
      const failed = results?.find(([error]) => error);
      if (failed) throw failed[0];
      return;
    }
    await this.client.mset(...entries.flat());
  }

  async claimVersion(view: string, version: number): Promise<boolean> {
    // A sync's first command: with no offline queue, one sent while the connection is still being made fails.
    await this.ready(this.connectTimeoutMs);
    return (await this.client.set(hotVersionMark(view, version), '1', 'NX')) === 'OK';
  }

  async dropVersion(view: string, version: number, options: { readonly release?: boolean } = {}): Promise<number> {
    let cursor = '0';
    let removed = 0;
    do {
      const [next, keys] = await this.client.scan(cursor, 'MATCH', `${hotKeyPrefix(view, version)}*`, 'COUNT', SCAN_COUNT);
      cursor = next;
      if (keys.length) removed += await this.client.unlink(...keys);
    } while (cursor !== '0');
    // The mark last: a drop cut short leaves it, so the version still reads as used.
    if (options.release) await this.client.unlink(hotVersionMark(view, version));
    else await this.client.set(hotVersionMark(view, version), 'dropped', 'EX', markAfterDropSeconds(this.fillTtlSeconds));
    return removed;
  }

  /** Waits for the connection, so start-up can say plainly that Redis is unreachable. */
  async ready(timeoutMs: number): Promise<void> {
    if (this.client.status === 'ready') return;
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.client.off('ready', onReady);
        // A timeout like a socket's, so a sync that meets Redis away retries it.
        reject(Object.assign(new Error(`Redis did not become ready within ${timeoutMs} ms`), { code: 'ETIMEDOUT' }));
      }, timeoutMs);
      const onReady = () => {
        clearTimeout(timer);
        resolve();
      };
      this.client.once('ready', onReady);
    });
  }

  async ping(): Promise<void> {
    await this.client.ping();
  }

  async close(): Promise<void> {
    this.client.disconnect();
  }
}
