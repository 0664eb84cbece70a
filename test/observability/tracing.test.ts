// With tracing on, a lookup makes a server span that continues the caller's
// trace (W3C traceparent), with a child span per store read; a sync run makes
// a span per phase. Server-Timing says where a lookup's time went.
import path from 'node:path';
import { InMemorySpanExporter, type ReadableSpan } from '@opentelemetry/sdk-trace-base';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { parseJobDefinition } from '../../src/jobs/definition.js';
import { createLogger, silentLogger } from '../../src/observability/log.js';
import { setupTracing } from '../../src/observability/tracing.js';
import { startServer, type RunningServer } from '../../src/server.js';
import { runSync } from '../../src/sync/engine.js';
import { freshDatabase } from '../support/db.js';
import { serverConfig, tempDir, writeJobs, writeParquet } from '../support/fixtures.js';
import { startRedis, type RedisServer } from '../support/servers.js';

const TRACE_ID = '4bf92f3577b34da6a3ce929d0e0e4736';
const CALLER_SPAN = '00f067aa0ba902b7';
const parentOf = (span: ReadableSpan) => (span as unknown as { parentSpanContext?: { spanId: string } }).parentSpanContext?.spanId;

describe('tracing and Server-Timing', () => {
  const exporter = new InMemorySpanExporter();
  const lines: Record<string, unknown>[] = [];
  const log = createLogger('info', {}, (line) => lines.push(JSON.parse(line) as Record<string, unknown>));
  let redis: RedisServer;
  let database: { url: string; drop(): Promise<void> };
  let server: RunningServer;
  let dir: string;
  let source: string;

  beforeAll(async () => {
    redis = await startRedis();
    database = await freshDatabase(inject('databaseUrl'), 'tracing');
    dir = await tempDir('tracing');
    source = await writeParquet(path.join(dir, 't.parquet'), `SELECT 'k' || i AS id, TIMESTAMP '2026-01-01' AS t, i AS n FROM range(1, 11) t(i)`);
    await writeJobs(dir, [{ view: 'traced', source, entity_key: 'id', event_time: 't', features: { n: { type: 'integer' } } }]);
    server = await startServer(serverConfig({ DATABASE_URL: database.url, REDIS_URL: redis.url, SYNC_JOBS_DIR: dir, REQUEST_LOG_LEVEL: 'info' }), log, { spanExporter: exporter });
    expect((await server.runner.run('traced', 'manual')).status).toBe('succeeded');
  });

  afterAll(async () => {
    await server?.close();
    await redis?.destroy();
    await database?.drop();
  });

  it('continues the incoming trace with a server span and a child span per store read', async () => {
    exporter.reset();
    const response = await fetch(`http://127.0.0.1:${server.port}/features/v1/k3?view=traced`, { headers: { traceparent: `00-${TRACE_ID}-${CALLER_SPAN}-01` } });
    expect(response.status).toBe(200);
    expect(response.headers.get('Server-Timing')).toMatch(/^hot;dur=\d+\.\d\d, total;dur=\d+\.\d\d$/);
    const spans = exporter.getFinishedSpans();
    const serverSpan = spans.find((s) => s.name === 'GET /features/v1/:entity_id')!;
    expect(serverSpan).toBeDefined();
    expect(serverSpan.spanContext().traceId).toBe(TRACE_ID);
    expect(parentOf(serverSpan)).toBe(CALLER_SPAN);
    expect(serverSpan.attributes).toMatchObject({ 'http.request.method': 'GET', 'http.route': '/features/v1/:entity_id', 'url.path': '/features/v1/REDACTED', 'http.response.status_code': 200 });
    // The entity id is caller data: no span attribute carries it.
    for (const span of spans) expect(JSON.stringify(span.attributes)).not.toContain('k3');
    // Nor on a path no route matches (a trailing slash, an extra segment).
    for (const odd of ['/features/v1/k3/', '/features/v1/k3/extra']) {
      exporter.reset();
      await fetch(`http://127.0.0.1:${server.port}${odd}?view=traced`).then((r) => r.arrayBuffer());
      const [unmatched] = exporter.getFinishedSpans().filter((s) => s.attributes['url.path'] !== undefined);
      expect(unmatched!.attributes['url.path']).toBe(odd === '/features/v1/k3/' ? '/features/v1/REDACTED/' : '/features/v1/REDACTED/REDACTED');
      expect(JSON.stringify(unmatched!.attributes)).not.toContain('k3');
    }
    const redisSpan = spans.find((s) => s.name === 'redis get')!;
    expect(redisSpan.spanContext().traceId).toBe(TRACE_ID);
    expect(parentOf(redisSpan)).toBe(serverSpan.spanContext().spanId);
    expect(redisSpan.attributes).toMatchObject({ 'db.system': 'redis', 'db.operation.name': 'GET' });
  });

  it('adds a Postgres span when Redis misses, and times both in Server-Timing', async () => {
    const client = new Redis(redis.url);
    await client.flushall();
    client.disconnect();
    exporter.reset();
    const response = await fetch(`http://127.0.0.1:${server.port}/features/v1/k4?view=traced`, { headers: { traceparent: `00-${TRACE_ID}-${CALLER_SPAN}-01` } });
    expect(response.status).toBe(200);
    expect(response.headers.get('Server-Timing')).toMatch(/^hot;dur=[\d.]+, pg;dur=[\d.]+, total;dur=[\d.]+$/);
    const spans = exporter.getFinishedSpans();
    const serverSpan = spans.find((s) => s.name === 'GET /features/v1/:entity_id')!;
    const pgSpan = spans.find((s) => s.name === 'postgres select')!;
    expect(parentOf(pgSpan)).toBe(serverSpan.spanContext().spanId);
    expect(pgSpan.attributes).toMatchObject({ 'db.system': 'postgresql' });
  });

  it('logs one JSON line per request with its request id and trace id', async () => {
    lines.length = 0;
    const response = await fetch(`http://127.0.0.1:${server.port}/features/v1/k6?view=traced`, { headers: { traceparent: `00-${TRACE_ID}-${CALLER_SPAN}-01` } });
    const requestLines = lines.filter((l) => l.event === 'http.request');
    expect(requestLines).toHaveLength(1);
    expect(requestLines[0]).toMatchObject({
      level: 'info',
      request_id: response.headers.get('Request-Id'),
      trace_id: TRACE_ID,
      method: 'GET',
      route: '/features/v1/:entity_id',
      status: 200,
      tier: response.headers.get('Feature-Tier'),
      server_timing: response.headers.get('Server-Timing'),
    });
    expect(JSON.stringify(requestLines[0])).not.toContain('k6');
  });

  it('starts a new trace without a traceparent', async () => {
    exporter.reset();
    await fetch(`http://127.0.0.1:${server.port}/features/v1/k5?view=traced`);
    const serverSpan = exporter.getFinishedSpans().find((s) => s.name === 'GET /features/v1/:entity_id')!;
    expect(serverSpan.spanContext().traceId).not.toBe(TRACE_ID);
    expect(parentOf(serverSpan)).toBeUndefined();
  });

  it('records a span per sync phase under one run span', async () => {
    const syncExporter = new InMemorySpanExporter();
    const tracing = setupTracing({ exporter: syncExporter, serviceName: 'test' });
    const job = parseJobDefinition(path.join(dir, 'traced.yaml'), JSON.stringify({ view: 'traced', source, entity_key: 'id', event_time: 't', features: { n: { type: 'integer' } }, schedule: '0 0 * * *', freshness: '1d' }));
    lines.length = 0;
    const summary = await runSync(job, { db: server.db, hot: server.hot, log, tracer: tracing.tracer, batchRows: 1000 }, 'manual');
    expect(summary.status).toBe('succeeded');
    // One wide line for the run.
    expect(lines.filter((l) => l.event === 'sync.run')).toEqual([expect.objectContaining({ job: 'traced', run_id: summary.runId, status: 'succeeded', rows_read: 10, rows_written: 10 })]);
    const spans = syncExporter.getFinishedSpans();
    const root = spans.find((s) => s.name === 'sync traced')!;
    expect(root.attributes).toMatchObject({ 'featurestore.job': 'traced', 'featurestore.run_id': summary.runId });
    const phases = spans.filter((s) => parentOf(s) === root.spanContext().spanId).map((s) => s.name);
    expect(phases).toEqual(['sync.read_and_check', 'sync.load', 'sync.index', 'sync.publish']);
    await tracing.shutdown();
  });
});
