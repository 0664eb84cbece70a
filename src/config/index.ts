// Owns the process configuration: the environment is parsed once, here, into a
// typed and frozen object that is handed to everything else. Nothing else reads
// process.env.
import os from 'node:os';
import path from 'node:path';
import { z } from 'zod';
import type { SloConfig } from '../observability/slo.js';
import { DEFAULT_FILL_TTL_SECONDS } from '../stores/hot-tier.js';

const bool = z
  .enum(['true', 'false', '1', '0', 'yes', 'no'])
  .transform((v) => v === 'true' || v === '1' || v === 'yes');

// Numbers in plain decimal only: Number() would also take "0x1F90", "1e3" and "Infinity" (and " " as 0).
const wholeNumber = z.string().regex(/^\d+$/, 'expected a whole number in decimal digits, such as 30').transform(Number);
const decimalNumber = z.string().regex(/^\d+(\.\d+)?$/, 'expected a plain decimal number, such as 2.5').transform(Number);

const positiveInt = (max = Number.MAX_SAFE_INTEGER, beyondMax?: string) => wholeNumber.pipe(z.number().int().positive().max(max, beyondMax));

/**
 * A server URL with one of `schemes`. The syntax alone is not enough: a bare
 * host:port parses as a URL (scheme "localhost:"), and the Postgres client
 * then quietly connects to 127.0.0.1.
 */
const serverUrl = (schemes: readonly string[], example: string) =>
  z.string().superRefine((value, ctx) => {
    let url: URL;
    try {
      url = new URL(value);
    } catch {
      ctx.addIssue({
        code: 'custom',
        message: `not a valid URL; expected the form ${example}, with reserved characters (@ : / ? # %) in a user name or password percent-encoded, e.g. %40 for @ and %2F for /`,
      });
      return;
    }
    if (!schemes.includes(url.protocol.slice(0, -1)) || !/^[a-z][a-z0-9+.-]*:\/\//i.test(value)) {
      ctx.addIssue({ code: 'custom', message: `expected a URL starting with ${schemes.map((s) => `${s}://`).join(' or ')}, such as ${example}` });
    }
  });
const postgresUrl = serverUrl(['postgres', 'postgresql'], 'postgres://user:password@host:5432/database');

/**
 * A setting's value as an error may show it: a secret setting not at all;
 * otherwise with any user-info masked (`//user:password@` as `//***@`) and
 * any `password=…` (a libpq key=value string, a URL parameter) masked, so an
 * error never echoes a password.
 */
function redact(key: string, value: string): string {
  if (/PASSWORD|SECRET|TOKEN/.test(key)) return '***';
  // Up to the last @: a password that breaks the URL may itself hold / or @.
  return value.replace(/^([a-z][a-z0-9+.-]*:\/\/)?.*@/is, '$1***@').replace(/(pass(?:word)?\s*=\s*)('[^']*'|[^&\s]*)/gi, '$1***');
}

const envSchema = z.object({
  PORT: wholeNumber.pipe(z.number().int().min(0).max(65535)).default(8080),
  HOST: z.string().min(1).default('0.0.0.0'),
  DATABASE_URL: postgresUrl.optional(),
  REDIS_URL: serverUrl(['redis', 'rediss'], 'redis://cache:6379').optional(),
  DATABASE_REPLICA_URLS: z
    .string()
    .transform((v) => v.split(',').map((u) => u.trim()).filter(Boolean))
    .pipe(z.array(postgresUrl))
    .optional(),
  DATABASE_REPLICA_POLL_MS: positiveInt().default(250),
  DATABASE_POOL_SIZE: positiveInt(1000).default(20),
  REDIS_CLUSTER_NODES: z
    .string()
    .transform((text) => text.split(',').map((seed) => seed.trim()).filter(Boolean))
    .pipe(
      z
        .array(
          z
            .string()
            .regex(/^[^\s:,]+:\d{1,5}$/, 'expected comma-separated host:port seeds such as redis-a:6379,redis-b:6379')
            .refine((seed) => Number(seed.split(':')[1]) >= 1 && Number(seed.split(':')[1]) <= 65535, 'a seed port must be from 1 to 65535'),
        )
        .min(1, 'expected at least one host:port seed'),
    )
    .optional(),
  // One node takes these in REDIS_URL (redis://user:password@host:port, rediss:// for TLS); a cluster's seeds are host:port.
  REDIS_CLUSTER_USERNAME: z.string().min(1).optional(),
  REDIS_CLUSTER_PASSWORD: z.string().min(1).optional(),
  REDIS_CLUSTER_TLS: bool.default(false),
  SYNC_JOBS_DIR: z.string().min(1).default('sync-jobs'),
  PGLITE_DATA_DIR: z.string().min(1).optional(),
  SYNC_ON_START: bool.optional(),
  SCHEDULER_ENABLED: bool.default(true),
  SYNC_TIMEOUT_SECONDS: positiveInt().default(3600),
  SYNC_BATCH_ROWS: positiveInt(1_000_000).default(8192),
  SYNC_NICE: wholeNumber.pipe(z.number().int().min(0).max(19)).default(10),
  SYNC_HEAP_MB: wholeNumber.pipe(z.number().int().min(64).max(65536)).default(192),
  SYNC_DUCKDB_MEMORY_MB: wholeNumber.pipe(z.number().int().min(16).max(1_048_576)).default(128),
  SYNC_RETRY_ATTEMPTS: positiveInt(20).default(3),
  SYNC_RETRY_BASE_MS: positiveInt().default(1000),
  CATALOG_REFRESH_MS: positiveInt().default(1000),
  // openapi.yaml promises clients (and the generated SDK checks) at most 1000 ids; a larger limit would break that contract.
  BATCH_MAX_IDS: positiveInt(1000, 'at most 1000, the batch size openapi.yaml allows clients').default(1000),
  REDIS_TIMEOUT_MS: positiveInt().default(250),
  REQUEST_TIMEOUT_MS: positiveInt().default(1000),
  MAX_IN_FLIGHT: positiveInt().default(512),
  SHUTDOWN_GRACE_SECONDS: decimalNumber.pipe(z.number().min(0).max(600)).default(25),
  RATE_LIMIT_PER_SECOND: decimalNumber.pipe(z.number().positive()).default(1000),
  RATE_LIMIT_BURST: positiveInt().default(2000),
  AUTH_MODE: z.enum(['keys', 'open'], { error: () => 'expected keys or open' }).optional(),
  REDIS_FILL_TTL_SECONDS: positiveInt().default(DEFAULT_FILL_TTL_SECONDS),
  PROCESS_CACHE_ENTRIES: wholeNumber.pipe(z.number().int().min(0).max(50_000_000)).default(0),
  REDIS_RETRY_AFTER_MS: positiveInt().default(1000),
  SLO_LATENCY_THRESHOLD_MS: decimalNumber.pipe(z.number().positive()).default(10),
  SLO_LATENCY_TARGET: decimalNumber.pipe(z.number().gt(0).lt(1)).default(0.99),
  SLO_AVAILABILITY_TARGET: decimalNumber.pipe(z.number().gt(0).lt(1)).default(0.999),
  SLO_WINDOW_DAYS: decimalNumber.pipe(z.number().positive().max(90)).default(28),
  OTEL_EXPORTER_OTLP_ENDPOINT: serverUrl(['http', 'https'], 'http://otel-collector:4318').optional(),
  OTEL_SERVICE_NAME: z.string().min(1).default('feature-serving-api'),
  LOG_LEVEL: z.enum(['debug', 'info', 'warn', 'error', 'silent']).default('info'),
  REQUEST_LOG_LEVEL: z.enum(['debug', 'info', 'warn']).default('debug'),
  WEB_CONCURRENCY: positiveInt(256).optional(),
});

/** Every environment variable the service reads (deployment descriptions are checked against it). */
export const ENV_KEYS: readonly string[] = Object.freeze(Object.keys(envSchema.shape));

export type LogLevel = z.infer<typeof envSchema>['LOG_LEVEL'];

export interface Config {
  readonly port: number;
  readonly host: string;
  /** Postgres server; absent means the embedded in-process Postgres (PGlite). */
  readonly databaseUrl: string | undefined;
  /** Redis server; absent means the in-process hot tier. */
  readonly redisUrl: string | undefined;
  /** Streaming replicas of DATABASE_URL that lookups may read from (empty: the primary only). */
  readonly databaseReplicaUrls: readonly string[];
  /** How often each replica's replay progress and health are checked. */
  readonly replicaPollMs: number;
  /** Connections each serving process may open to the primary, and to each replica, for lookups and requests. */
  readonly databasePoolSize: number;
  /** Redis Cluster seed nodes (instead of redisUrl); the client learns the rest of the topology from them. */
  readonly redisClusterNodes: readonly { readonly host: string; readonly port: number }[] | undefined;
  /** How to connect to every node of the Redis Cluster: an ACL user and password (AUTH), and TLS. */
  readonly redisClusterConnection: { readonly username: string | undefined; readonly password: string | undefined; readonly tls: boolean };
  readonly embedded: boolean;
  readonly syncJobsDir: string;
  readonly pgliteDataDir: string | undefined;
  /** Run every job once at start-up (default: on in embedded mode). */
  readonly syncOnStart: boolean;
  readonly schedulerEnabled: boolean;
  readonly syncTimeoutMs: number;
  readonly syncBatchRows: number;
  /** Scheduling priority (nice) of sync processes, so lookups win the CPU. */
  readonly syncNice: number;
  /** V8 heap limit of a sync child process; its batches are bounded, so a small heap keeps RSS flat. */
  readonly syncHeapMb: number;
  /** Memory DuckDB may use in a sync (past it, sorts and hash tables spill to disk; what cannot spill fails the run). */
  readonly syncDuckdbMemoryMb: number;
  /** Attempts for a run that fails on a connection or timeout; the wait doubles each time, with jitter. */
  readonly syncRetry: { readonly attempts: number; readonly baseDelayMs: number };
  readonly catalogRefreshMs: number;
  readonly batchMaxIds: number;
  readonly redisTimeoutMs: number;
  /** A lookup's whole budget: past it the answer is a 503, never a hang. */
  readonly requestTimeoutMs: number;
  /** Feature and sync requests in progress beyond this are refused at once with 503 (load shedding). */
  readonly maxInFlight: number;
  /** At SIGTERM, how long a running sync may take to finish before it is stopped unpublished. */
  readonly shutdownGraceMs: number;
  /** keys: feature and sync routes need an API key; open: anyone may read (default only in the embedded demo). */
  readonly authMode: 'keys' | 'open';
  /** Default per-key token bucket (a key may carry its own). */
  readonly rateLimit: { readonly perSecond: number; readonly burst: number };
  readonly redisFillTtlSeconds: number;
  /** Rows per served view kept in this process in front of Redis (0: off; the embedded mode's hot tier is in-process already). */
  readonly processCacheEntries: number;
  /** After a Redis failure, how long lookups skip it before trying again. */
  readonly redisRetryAfterMs: number;
  readonly slo: SloConfig;
  /** OTLP/HTTP collector; tracing is off without it. */
  readonly otlpEndpoint: string | undefined;
  readonly serviceName: string;
  readonly logLevel: LogLevel;
  /** The level of the one line logged per request (server errors are always at warn or above). */
  readonly requestLogLevel: 'debug' | 'info' | 'warn';
  /**
   * Serving processes on the one port (Node's cluster). Always 1 in the embedded
   * mode: PGlite is a database inside one process, which other processes cannot reach.
   */
  readonly webConcurrency: number;
}

export class ConfigError extends Error {
  override name = 'ConfigError';
}

export function loadConfig(env: Record<string, string | undefined>, cwd = process.cwd()): Config {
  // Blank values count as unset, so `FOO=` (or `FOO= `) in an env file behaves like no FOO.
  const cleaned = Object.fromEntries(
    Object.entries(env)
      .filter(([key, value]) => key in envSchema.shape && value !== undefined)
      .map(([key, value]) => [key, value!.trim()])
      .filter(([, value]) => value !== ''),
  );
  const parsed = envSchema.safeParse(cleaned);
  if (!parsed.success) {
    const lines = parsed.error.issues.map(
      (issue) => `  ${issue.path.join('.')}: ${issue.message} (got ${JSON.stringify(redact(String(issue.path[0]), String(cleaned[String(issue.path[0])])))})`,
    );
    throw new ConfigError(`invalid environment:\n${lines.join('\n')}`);
  }
  const e = parsed.data;
  if ((e.REDIS_URL || e.REDIS_CLUSTER_NODES) && e.REDIS_TIMEOUT_MS >= e.REQUEST_TIMEOUT_MS) {
    throw new ConfigError(
      `REDIS_TIMEOUT_MS (${e.REDIS_TIMEOUT_MS}) must be below REQUEST_TIMEOUT_MS (${e.REQUEST_TIMEOUT_MS}): a lookup that Redis does not answer is answered from Postgres within the same budget, which must leave time for it. Lower REDIS_TIMEOUT_MS or raise REQUEST_TIMEOUT_MS`,
    );
  }
  if (e.REDIS_URL && e.REDIS_CLUSTER_NODES) {
    throw new ConfigError('set REDIS_URL for one Redis node or REDIS_CLUSTER_NODES for a Redis Cluster, not both');
  }
  if (Boolean(e.DATABASE_URL) !== Boolean(e.REDIS_URL || e.REDIS_CLUSTER_NODES)) {
    // Half-embedded setups hide which store is the source of truth; refuse them.
    throw new ConfigError(
      'set both DATABASE_URL and REDIS_URL (or REDIS_CLUSTER_NODES) to use servers, or neither for the embedded mode ' +
        `(DATABASE_URL is ${e.DATABASE_URL ? 'set' : 'unset'}, REDIS_URL is ${e.REDIS_URL ? 'set' : 'unset'}, REDIS_CLUSTER_NODES is ${e.REDIS_CLUSTER_NODES ? 'set' : 'unset'})`,
    );
  }
  // REDIS_CLUSTER_TLS=false is the default, so only a true one counts as set.
  const clusterOnly = (['REDIS_CLUSTER_USERNAME', 'REDIS_CLUSTER_PASSWORD', 'REDIS_CLUSTER_TLS'] as const).filter((key) => Boolean(e[key]));
  if (clusterOnly.length > 0 && !e.REDIS_CLUSTER_NODES) {
    throw new ConfigError(
      `${clusterOnly.join(', ')} ${clusterOnly.length > 1 ? 'are' : 'is'} set without REDIS_CLUSTER_NODES: ${clusterOnly.length > 1 ? 'they apply' : 'it applies'} only to a Redis Cluster; ` +
        'for one Redis node put the user and password in REDIS_URL (redis://user:password@host:6379, rediss:// for TLS)',
    );
  }
  if (e.REDIS_CLUSTER_USERNAME && !e.REDIS_CLUSTER_PASSWORD) {
    throw new ConfigError('REDIS_CLUSTER_USERNAME is set without REDIS_CLUSTER_PASSWORD: a Redis ACL user signs in with a password; set REDIS_CLUSTER_PASSWORD too');
  }
  const embedded = !e.DATABASE_URL;
  if (embedded && e.DATABASE_REPLICA_URLS?.length) {
    throw new ConfigError('DATABASE_REPLICA_URLS is set without DATABASE_URL: replicas need a primary server (the embedded mode has none); set DATABASE_URL or unset DATABASE_REPLICA_URLS');
  }
  return Object.freeze({
    port: e.PORT,
    host: e.HOST,
    databaseUrl: e.DATABASE_URL,
    redisUrl: e.REDIS_URL,
    databaseReplicaUrls: Object.freeze([...(e.DATABASE_REPLICA_URLS ?? [])]),
    replicaPollMs: e.DATABASE_REPLICA_POLL_MS,
    databasePoolSize: e.DATABASE_POOL_SIZE,
    redisClusterNodes: e.REDIS_CLUSTER_NODES
      ? Object.freeze(e.REDIS_CLUSTER_NODES.map((seed) => Object.freeze({ host: seed.split(':')[0]!, port: Number(seed.split(':')[1]) })))
      : undefined,
    redisClusterConnection: Object.freeze({ username: e.REDIS_CLUSTER_USERNAME, password: e.REDIS_CLUSTER_PASSWORD, tls: e.REDIS_CLUSTER_TLS }),
    embedded,
    syncJobsDir: path.resolve(cwd, e.SYNC_JOBS_DIR),
    pgliteDataDir: e.PGLITE_DATA_DIR ? path.resolve(cwd, e.PGLITE_DATA_DIR) : undefined,
    syncOnStart: e.SYNC_ON_START ?? embedded,
    schedulerEnabled: e.SCHEDULER_ENABLED,
    syncTimeoutMs: e.SYNC_TIMEOUT_SECONDS * 1000,
    syncBatchRows: e.SYNC_BATCH_ROWS,
    syncNice: e.SYNC_NICE,
    syncHeapMb: e.SYNC_HEAP_MB,
    syncDuckdbMemoryMb: e.SYNC_DUCKDB_MEMORY_MB,
    syncRetry: Object.freeze({ attempts: e.SYNC_RETRY_ATTEMPTS, baseDelayMs: e.SYNC_RETRY_BASE_MS }),
    catalogRefreshMs: e.CATALOG_REFRESH_MS,
    batchMaxIds: e.BATCH_MAX_IDS,
    redisTimeoutMs: e.REDIS_TIMEOUT_MS,
    requestTimeoutMs: e.REQUEST_TIMEOUT_MS,
    maxInFlight: e.MAX_IN_FLIGHT,
    shutdownGraceMs: e.SHUTDOWN_GRACE_SECONDS * 1000,
    authMode: e.AUTH_MODE ?? (embedded ? 'open' : 'keys'),
    rateLimit: Object.freeze({ perSecond: e.RATE_LIMIT_PER_SECOND, burst: e.RATE_LIMIT_BURST }),
    redisFillTtlSeconds: e.REDIS_FILL_TTL_SECONDS,
    processCacheEntries: embedded ? 0 : e.PROCESS_CACHE_ENTRIES,
    redisRetryAfterMs: e.REDIS_RETRY_AFTER_MS,
    slo: Object.freeze({
      latencyThresholdMs: e.SLO_LATENCY_THRESHOLD_MS,
      latencyTarget: e.SLO_LATENCY_TARGET,
      availabilityTarget: e.SLO_AVAILABILITY_TARGET,
      windowDays: e.SLO_WINDOW_DAYS,
    }),
    otlpEndpoint: e.OTEL_EXPORTER_OTLP_ENDPOINT,
    serviceName: e.OTEL_SERVICE_NAME,
    logLevel: e.LOG_LEVEL,
    requestLogLevel: e.REQUEST_LOG_LEVEL,
    webConcurrency: embedded ? 1 : (e.WEB_CONCURRENCY ?? os.availableParallelism()),
  });
}
