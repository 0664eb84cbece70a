// The environment is parsed once into a typed config; bad values fail with
// the variable's name and what was expected.
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/index.js';

describe('configuration', () => {
  it('defaults to the embedded mode with start-up syncs', () => {
    const config = loadConfig({}, '/srv/app');
    expect(config).toMatchObject({ embedded: true, port: 8080, syncOnStart: true, syncJobsDir: '/srv/app/sync-jobs', batchMaxIds: 1000 });
    expect(Object.isFrozen(config)).toBe(true);
  });

  it('uses servers when both URLs are given, without start-up syncs by default', () => {
    const config = loadConfig({ DATABASE_URL: 'postgres://db/x', REDIS_URL: 'redis://cache:6379' });
    expect(config).toMatchObject({ embedded: false, syncOnStart: false, databaseUrl: 'postgres://db/x' });
  });

  it('refuses half of the server pair', () => {
    expect(() => loadConfig({ DATABASE_URL: 'postgres://db/x' })).toThrow(/set both DATABASE_URL and REDIS_URL .* REDIS_URL is unset/);
  });

  it('names each bad variable', () => {
    expect(() => loadConfig({ PORT: 'eighty', LOG_LEVEL: 'loud', SCHEDULER_ENABLED: 'maybe' })).toThrow(/PORT: .*\(got "eighty"\)[\s\S]*SCHEDULER_ENABLED[\s\S]*LOG_LEVEL/);
  });

  it('treats empty variables as unset', () => {
    expect(loadConfig({ DATABASE_URL: '', REDIS_URL: '' }).embedded).toBe(true);
  });
});

describe('configuration: URL settings', () => {
  const servers = { DATABASE_URL: 'postgres://db/x', REDIS_URL: 'redis://cache:6379' };

  it('checks each URL setting’s scheme, naming the expected form', () => {
    // A bare host:port parses as a URL with scheme "localhost:"; the Postgres client then connects to 127.0.0.1.
    expect(() => loadConfig({ ...servers, DATABASE_URL: 'localhost:5432' })).toThrow(/DATABASE_URL: expected a URL starting with postgres:\/\/ or postgresql:\/\/, such as postgres:\/\/user:password@host:5432\/database \(got "localhost:5432"\)/);
    expect(() => loadConfig({ ...servers, DATABASE_URL: 'db.internal:5432/features' })).toThrow(/DATABASE_URL: expected a URL starting with postgres:\/\//);
    expect(() => loadConfig({ ...servers, DATABASE_URL: 'mysql://db/x' })).toThrow(/DATABASE_URL: expected a URL starting with postgres:\/\//);
    expect(() => loadConfig({ ...servers, DATABASE_URL: 'postgres:db' })).toThrow(/DATABASE_URL: expected a URL starting with postgres:\/\//);
    expect(() => loadConfig({ ...servers, REDIS_URL: 'http://cache:6379' })).toThrow(/REDIS_URL: expected a URL starting with redis:\/\/ or rediss:\/\/, such as redis:\/\/cache:6379/);
    expect(() => loadConfig({ OTEL_EXPORTER_OTLP_ENDPOINT: 'collector:4318' })).toThrow(/OTEL_EXPORTER_OTLP_ENDPOINT: expected a URL starting with http:\/\/ or https:\/\/, such as http:\/\/otel-collector:4318/);
    expect(() => loadConfig({ ...servers, DATABASE_REPLICA_URLS: 'postgres://db2/x, db3:5432' })).toThrow(/DATABASE_REPLICA_URLS\.1: expected a URL starting with postgres:\/\//);
  });

  it('accepts the schemes each setting takes', () => {
    const config = loadConfig({
      DATABASE_URL: 'postgresql://app:s%2Fcret@db:5432/x',
      REDIS_URL: 'rediss://cache:6380',
      DATABASE_REPLICA_URLS: 'postgres://db2/x,postgresql://db3/x',
      OTEL_EXPORTER_OTLP_ENDPOINT: 'https://collector:4318',
    });
    expect(config).toMatchObject({ databaseUrl: 'postgresql://app:s%2Fcret@db:5432/x', redisUrl: 'rediss://cache:6380', databaseReplicaUrls: ['postgres://db2/x', 'postgresql://db3/x'], otlpEndpoint: 'https://collector:4318' });
  });

  it('never echoes a password, and says reserved characters in one must be percent-encoded', () => {
    const failure = (env: Record<string, string>) => {
      try {
        loadConfig(env);
      } catch (error) {
        return (error as Error).message;
      }
      throw new Error('expected loadConfig to throw');
    };
    const unparsable = failure({ ...servers, DATABASE_URL: 'postgres://app:s3cr3t/pw@db.internal:5432/features' });
    expect(unparsable).toMatch(/DATABASE_URL: not a valid URL; .*percent-encoded.* \(got "postgres:\/\/\*\*\*@db.internal:5432\/features"\)/);
    expect(unparsable).not.toContain('s3cr3t');
    const wrongScheme = failure({ ...servers, DATABASE_URL: 'mysql://app:s3cr3t@db/x', REDIS_URL: 'redis://:hunter2@x:63 79' });
    expect(wrongScheme).toContain('(got "mysql://***@db/x")');
    expect(wrongScheme).toContain('(got "redis://***@x:63 79")');
    const schemeless = failure({ ...servers, DATABASE_URL: 'app:s3cr3t@db:5432/x' });
    expect(schemeless).toContain('(got "***@db:5432/x")');
    const replicas = failure({ ...servers, DATABASE_REPLICA_URLS: 'postgres://app:s3cr3t@db2/x,db3:5432' });
    expect(replicas).toContain('(got "postgres://***@db2/x,db3:5432")');
    // A libpq key=value string, a password as a URL parameter: masked too.
    const libpq = failure({ ...servers, DATABASE_URL: 'host=db user=app password=s3cr3t dbname=fs' });
    expect(libpq).toContain('(got "host=db user=app password=*** dbname=fs")');
    const parameter = failure({ ...servers, DATABASE_REPLICA_URLS: 'db2:5432/x?sslmode=require&password=s3cr3t' });
    expect(parameter).toContain('password=***');
    for (const message of [wrongScheme, schemeless, replicas, libpq, parameter]) expect(message).not.toMatch(/s3cr3t|hunter2/);
  });
});

describe('configuration: timeouts', () => {
  it('refuses a Redis timeout that leaves a lookup no time to fall back to Postgres', () => {
    const redis = { DATABASE_URL: 'postgres://db/x', REDIS_URL: 'redis://r:6379' };
    // Without Redis (the embedded mode) the Redis timeout bounds nothing.
    expect(loadConfig({ REQUEST_TIMEOUT_MS: '200' }).requestTimeoutMs).toBe(200);
    expect(() => loadConfig({ ...redis, REDIS_TIMEOUT_MS: '5000', REQUEST_TIMEOUT_MS: '100' })).toThrow(
      /REDIS_TIMEOUT_MS \(5000\) must be below REQUEST_TIMEOUT_MS \(100\): .*Lower REDIS_TIMEOUT_MS or raise REQUEST_TIMEOUT_MS/,
    );
    expect(() => loadConfig({ ...redis, REDIS_TIMEOUT_MS: '1000' })).toThrow(/must be below REQUEST_TIMEOUT_MS \(1000\)/);
    expect(loadConfig({ ...redis, REDIS_TIMEOUT_MS: '900' }).redisTimeoutMs).toBe(900);
  });
});

describe('configuration: numbers', () => {
  it('treats blank values as unset', () => {
    expect(loadConfig({ PORT: ' ', SHUTDOWN_GRACE_SECONDS: '\t', SYNC_NICE: ' \n' })).toMatchObject({ port: 8080, shutdownGraceMs: 25_000, syncNice: 10 });
    expect(loadConfig({ PORT: ' 9090 ' }).port).toBe(9090);
  });

  it('bounds the memory DuckDB may use in a sync, naming the variable', () => {
    expect(loadConfig({}).syncDuckdbMemoryMb).toBe(128);
    expect(loadConfig({ SYNC_DUCKDB_MEMORY_MB: '512' }).syncDuckdbMemoryMb).toBe(512);
    expect(() => loadConfig({ SYNC_DUCKDB_MEMORY_MB: '8' })).toThrow(/SYNC_DUCKDB_MEMORY_MB: .*16/);
    expect(() => loadConfig({ SYNC_DUCKDB_MEMORY_MB: '1GB' })).toThrow(/SYNC_DUCKDB_MEMORY_MB: expected a whole number in decimal digits/);
  });

  it('sizes the Postgres pools of a serving process, naming the variable', () => {
    expect(loadConfig({}).databasePoolSize).toBe(20);
    expect(loadConfig({ DATABASE_POOL_SIZE: '8' }).databasePoolSize).toBe(8);
    expect(() => loadConfig({ DATABASE_POOL_SIZE: '0' })).toThrow(/DATABASE_POOL_SIZE: /);
    expect(() => loadConfig({ DATABASE_POOL_SIZE: '5000' })).toThrow(/DATABASE_POOL_SIZE: .*1000/);
  });

  it('takes only plain decimal numbers, naming the variable and the form', () => {
    expect(() => loadConfig({ PORT: '0x1F90' })).toThrow(/PORT: expected a whole number in decimal digits, such as 30 \(got "0x1F90"\)/);
    expect(() => loadConfig({ PORT: '1e3' })).toThrow(/PORT: expected a whole number in decimal digits/);
    expect(() => loadConfig({ PORT: '80.5' })).toThrow(/PORT: expected a whole number in decimal digits/);
    expect(() => loadConfig({ SYNC_BATCH_ROWS: '-5' })).toThrow(/SYNC_BATCH_ROWS: expected a whole number in decimal digits/);
    expect(() => loadConfig({ SHUTDOWN_GRACE_SECONDS: '1e2' })).toThrow(/SHUTDOWN_GRACE_SECONDS: expected a plain decimal number, such as 2.5 \(got "1e2"\)/);
    expect(() => loadConfig({ SLO_LATENCY_TARGET: '.99' })).toThrow(/SLO_LATENCY_TARGET: expected a plain decimal number/);
    expect(() => loadConfig({ RATE_LIMIT_PER_SECOND: 'Infinity' })).toThrow(/RATE_LIMIT_PER_SECOND: expected a plain decimal number/);
    expect(loadConfig({ PORT: '0', SHUTDOWN_GRACE_SECONDS: '2.5', SLO_LATENCY_TARGET: '0.95', SYNC_BATCH_ROWS: '1000000' })).toMatchObject({
      port: 0,
      shutdownGraceMs: 2500,
      slo: { latencyTarget: 0.95 },
      syncBatchRows: 1_000_000,
    });
  });

  it('keeps the ranges', () => {
    expect(() => loadConfig({ PORT: '65536' })).toThrow(/PORT: .*65535/);
    expect(() => loadConfig({ SYNC_BATCH_ROWS: '0' })).toThrow(/SYNC_BATCH_ROWS: /);
    expect(() => loadConfig({ SLO_LATENCY_TARGET: '1' })).toThrow(/SLO_LATENCY_TARGET: /);
    // The API contract's maxItems: a larger batch limit would answer batches the spec and the SDK refuse.
    expect(() => loadConfig({ BATCH_MAX_IDS: '1001' })).toThrow(/BATCH_MAX_IDS: at most 1000, the batch size openapi.yaml allows/);
    expect(loadConfig({ BATCH_MAX_IDS: '1000' }).batchMaxIds).toBe(1000);
  });
});
