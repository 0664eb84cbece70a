// Owns per-key rate limits: a token bucket per API key (rate per second, burst),
// kept in Redis when there is one so that every server process draws on the
// same bucket, and in this process otherwise (or while Redis is unreachable,
// so a Redis outage never lifts the limit entirely).
import type { Cluster, Redis } from 'ioredis';

export interface RateDecision {
  readonly allowed: boolean;
  /** Whole tokens left after this request. */
  readonly remaining: number;
  /** Seconds until a token is available again (0 when allowed). */
  readonly retryAfterSeconds: number;
  readonly burst: number;
  /** Seconds a full bucket takes to refill. */
  readonly windowSeconds: number;
}

export interface RateLimit {
  readonly perSecond: number;
  readonly burst: number;
}

// Refill by elapsed time (Redis' own clock, shared by all callers), then take one token if there is one.
const TAKE = `
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 't', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil then tokens = burst; ts = ms end
tokens = math.min(burst, tokens + (ms - ts) * rate / 1000)
local allowed = 0
if tokens >= 1 then tokens = tokens - 1; allowed = 1 end
redis.call('HSET', KEYS[1], 't', tostring(tokens), 'ts', ms)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return { allowed, tostring(tokens) }`;

function decide(allowed: boolean, tokens: number, limit: RateLimit): RateDecision {
  return {
    allowed,
    remaining: Math.floor(tokens),
    retryAfterSeconds: allowed ? 0 : Math.max(1, Math.ceil((1 - tokens) / limit.perSecond)),
    burst: limit.burst,
    windowSeconds: Math.max(1, Math.ceil(limit.burst / limit.perSecond)),
  };
}

export class RateLimiter {
  private readonly local = new Map<string, { tokens: number; at: number }>();
  /** After a failed Redis call, this process's buckets are used until then; one request then tries Redis again. */
  private skipRedisUntil = 0;

  // On a Redis Cluster the script touches one key, so it runs on that key's master.
  constructor(
    private readonly redis: Redis | Cluster | undefined,
    /** How long a Redis failure (a timeout, a lost connection) sends every request to the local buckets (REDIS_RETRY_AFTER_MS). */
    private readonly retryAfterMs = 1000,
    /** Told each time a Redis failure moves the buckets into this process (at most once per `retryAfterMs`). */
    private readonly onRedisError: (error: Error) => void = () => undefined,
  ) {}

  async take(keyId: string, limit: RateLimit): Promise<RateDecision> {
    // A frozen Redis keeps its connection 'ready': without the skip, every keyed request would wait out the timeout.
    if (this.redis && this.redis.status === 'ready' && Date.now() >= this.skipRedisUntil) {
      const trial = this.skipRedisUntil > 0;
      // While one request tries Redis again, the others keep to the local buckets.
      if (trial) this.skipRedisUntil = Date.now() + this.retryAfterMs;
      try {
        const [allowed, tokens] = (await this.redis.eval(TAKE, 1, `fs:ratelimit:${keyId}`, limit.perSecond, limit.burst)) as [number, string];
        if (trial) this.skipRedisUntil = 0;
        return decide(allowed === 1, Number(tokens), limit);
      } catch (error) {
        // Fall through to this process's own bucket, and say so: limits then hold per process, not across them.
        this.skipRedisUntil = Date.now() + this.retryAfterMs;
        this.onRedisError(error as Error);
      }
    }
    return this.takeLocal(keyId, limit);
  }

  private takeLocal(keyId: string, limit: RateLimit): RateDecision {
    const now = Date.now();
    const bucket = this.local.get(keyId) ?? { tokens: limit.burst, at: now };
    bucket.tokens = Math.min(limit.burst, bucket.tokens + ((now - bucket.at) * limit.perSecond) / 1000);
    bucket.at = now;
    const allowed = bucket.tokens >= 1;
    if (allowed) bucket.tokens -= 1;
    this.local.set(keyId, bucket);
    return decide(allowed, bucket.tokens, limit);
  }
}
