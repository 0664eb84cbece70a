// Owns the HTTP application: middleware (request id, safe headers, metrics and
// the per-request log line), the route groups, and the one place where errors
// become problem responses.
import { Hono, type Context, type Next } from 'hono';
import { randomUUID } from 'node:crypto';
import { routePath } from 'hono/route';
import type { ApiKeys, KeyGrant } from '../stores/api-keys.js';
import type { RateLimit, RateLimiter } from '../stores/rate-limit.js';
import type { Catalog } from '../stores/catalog.js';
import type { ReplicaSet } from '../stores/postgres.js';
import type { Database } from '../stores/database.js';
import type { HotTier } from '../stores/hot-tier.js';
import { StoreUnavailableError, type FeatureSource } from '../stores/reader.js';
import type { Logger } from '../observability/log.js';
import type { Metrics } from '../observability/metrics.js';
import type { SloTracker } from '../observability/slo.js';
import type { Tracing } from '../observability/tracing.js';
import { context, SpanKind, SpanStatusCode, trace } from '@opentelemetry/api';
import { featureRoutes } from './features.js';
import { operationRoutes } from './operations.js';
import { dashboardRoutes } from './dashboard.js';
import { sloRoutes } from './slo.js';
import { syncStatusRoutes } from './sync-status.js';
import { ApiError, problemResponse } from './problem.js';

export interface AppDeps {
  readonly catalog: Catalog;
  readonly reader: FeatureSource;
  /** Postgres read replicas, reported by /readyz. */
  readonly replicas?: ReplicaSet | undefined;
  readonly db: Database;
  readonly hot: HotTier | null;
  readonly metrics: Metrics;
  readonly slo: SloTracker;
  readonly tracing: Tracing;
  readonly log: Logger;
  readonly batchMaxIds: number;
  readonly openapiYaml: string;
  /** Level of the per-request log line; 5xx lines are at warn at least. */
  readonly requestLogLevel?: 'debug' | 'info' | 'warn';
  /** A feature request's whole budget; past it the answer is a 503. */
  readonly requestTimeoutMs?: number;
  /** Feature and sync requests in progress beyond this are shed with a 503 at once. */
  readonly maxInFlight?: number;
  /** API keys; absent means open access (AUTH_MODE=open). */
  readonly apiKeys?: ApiKeys | undefined;
  /** Per-key token buckets, with the default limit for keys without their own. */
  readonly rateLimiter?: RateLimiter | undefined;
  readonly defaultRateLimit?: RateLimit;
}

/** Caller-sent request ids are kept only if short and plain, so they are safe in logs and headers. */
const REQUEST_ID = /^[\w\-=]+$/;
const SAFE_HEADERS = Object.freeze({
  'X-Content-Type-Options': 'nosniff',
  'X-Frame-Options': 'DENY',
  'Referrer-Policy': 'no-referrer',
  'Cross-Origin-Resource-Policy': 'same-site',
});

export function createApp(deps: AppDeps): Hono {
  const app = new Hono();
  const { metrics, log } = deps;

  // Every response's own headers: a request id (the caller's, when it sends a sane one) and the safe headers that
  // matter for a JSON API. They go in a plain object that the feature routes hand to their Response as it is
  // (see respond.ts); other responses get them merged in here, where a header the response set itself wins.
  app.use(async (c, next) => {
    c.set('startedAt', performance.now());
    const incoming = c.req.header('Request-Id');
    const id = incoming && incoming.length <= 64 && REQUEST_ID.test(incoming) ? incoming : randomUUID();
    c.set('requestId', id);
    const headers: Record<string, string> = { 'Request-Id': id, ...SAFE_HEADERS };
    c.set('responseHeaders', headers);
    await next();
    if (c.get('headersApplied')) return;
    const own = c.res.headers;
    for (const name in headers) if (!own.has(name)) own.set(name, headers[name]!);
  });
  const tracer = deps.tracing.tracer;
  if (tracer) {
    // A server span per request, continuing the caller's trace when it sends a traceparent.
    app.use(async (c, next) => {
      const parent = deps.tracing.extract(c.req.header());
      const span = tracer.startSpan(c.req.method, { kind: SpanKind.SERVER, attributes: { 'http.request.method': c.req.method } }, parent);
      try {
        await context.with(trace.setSpan(parent, span), next);
      } finally {
        const last = routePath(c, -1);
        // Only middleware (a wildcard) matched: no route did.
        const route = last.endsWith('*') ? undefined : last;
        span.updateName(route ? `${c.req.method} ${route}` : c.req.method);
        if (route) span.setAttribute('http.route', route);
        span.setAttribute('url.path', scrubbedPath(c.req.path, route));
        span.setAttribute('http.response.status_code', c.res.status);
        if (c.res.status >= 500) span.setStatus({ code: SpanStatusCode.ERROR });
        span.end();
      }
    });
  }
  const durationByLabels = new Map<string, { observe(value: number): void }>();
  app.use(async (c, next) => {
    const start = performance.now();
    await next();
    const seconds = (performance.now() - start) / 1000;
    // The last matched route is the handler's template; only middleware matched means no route did.
    const last = routePath(c, -1);
    const route = last === '/*' || last === '*' ? 'unmatched' : last;
    if (route.startsWith('/features/v1/')) deps.slo.record(seconds * 1000, c.res.status >= 500);
    // One histogram child per (method, route, status): looking it up by its label values costs more than the observation.
    const key = `${c.req.method} ${route} ${c.res.status}`;
    let observer = durationByLabels.get(key);
    if (!observer) {
      observer = metrics.requestDuration.labels({ http_request_method: c.req.method, http_route: route, http_response_status_code: String(c.res.status) });
      durationByLabels.set(key, observer);
    }
    observer.observe(seconds);
    const level = c.res.status >= 500 ? 'warn' : (deps.requestLogLevel ?? 'debug');
    if (!log.enabled(level)) return;
    const traceId = tracer ? trace.getActiveSpan()?.spanContext().traceId : undefined;
    const fields = {
      request_id: c.get('requestId'),
      trace_id: traceId,
      method: c.req.method,
      route,
      status: c.res.status,
      duration_ms: Math.round(seconds * 1e5) / 100,
      tier: c.get('responseHeaders')['Feature-Tier'],
      server_timing: c.get('responseHeaders')['Server-Timing'],
    };
    log[level]('http.request', fields);
  });

  // API keys: feature and sync routes need one. Which views it may read is checked per route, before any read.
  const apiKeys = deps.apiKeys;
  if (apiKeys) {
    const authenticate = async (c: Context, next: Next) => {
      const header = c.req.header('Authorization') ?? '';
      const token = /^Bearer\s+(\S+)$/i.exec(header)?.[1];
      if (!token) throw new ApiError('unauthorized', 'send an API key: Authorization: Bearer <key>', {}, { 'WWW-Authenticate': 'Bearer realm="feature-api"' });
      const grant = apiKeys.verify(token);
      if (!grant) throw new ApiError('unauthorized', 'the API key is not valid, or has been revoked', {}, { 'WWW-Authenticate': 'Bearer realm="feature-api", error="invalid_token"' });
      c.set('grant', grant);
      if (deps.rateLimiter) {
        const limit = grant.rate ?? deps.defaultRateLimit ?? { perSecond: 1000, burst: 2000 };
        const decision = await deps.rateLimiter.take(grant.keyId, limit);
        // IETF RateLimit fields: the policy (quota per window) and what is left of it now.
        const headers = c.get('responseHeaders');
        headers['RateLimit-Policy'] = `"per-key";q=${decision.burst};w=${decision.windowSeconds}`;
        headers.RateLimit = `"per-key";r=${decision.remaining};t=${decision.retryAfterSeconds}`;
        if (!decision.allowed) {
          throw new ApiError('rate-limited', `API key "${grant.name}" is over its limit of ${limit.perSecond} requests per second (burst ${limit.burst}); retry after ${decision.retryAfterSeconds} s`, {}, { 'Retry-After': String(decision.retryAfterSeconds) });
        }
      }
      await next();
    };
    app.use('/features/v1/*', authenticate);
    app.use('/sync/v1/*', authenticate);
  }

  // Load shedding: past the limit, refuse at once so admitted requests keep their latency. A request that may carry a
  // body (a batch) is admitted only once its body has arrived (the route calls `admit`): a client that sends its
  // headers and then stalls the body holds a connection, never a slot that lookups need.
  let inFlight = 0;
  const maxInFlight = deps.maxInFlight ?? 512;
  const admitted = async <T>(work: () => Promise<T>): Promise<T> => {
    if (inFlight >= maxInFlight) {
      throw new ApiError('overloaded', `the server is at its limit of ${maxInFlight} requests in progress; retry shortly`, {}, { 'Retry-After': '1' });
    }
    inFlight++;
    try {
      return await work();
    } finally {
      inFlight--;
    }
  };
  const shed = async (c: Context, next: Next) => {
    // By method, not by looking at the body: reading `c.req.raw.body` makes the Node adapter build a whole Request
    // per lookup (the full benchmark run showed single lookups at about half their rate).
    const method = c.req.method;
    if (method === 'GET' || method === 'HEAD') return admitted(next);
    c.set('admit', admitted);
    await next();
  };
  app.use('/features/v1/*', shed);
  app.use('/sync/v1/*', shed);

  app.route('/features/v1', featureRoutes(deps));
  app.route('/sync/v1', syncStatusRoutes(deps));
  app.route('/slo/v1', sloRoutes(deps));
  app.route('/', dashboardRoutes(deps));
  app.route('/', operationRoutes(deps));

  app.notFound((c) => problemResponse(c, new ApiError('not-found', `no route for ${c.req.method} ${c.req.path}; see /openapi.yaml`)));
  app.onError((error, c) => {
    if (error instanceof ApiError) return problemResponse(c, error);
    if (error instanceof StoreUnavailableError) {
      log.error('http.store_unavailable', { request_id: c.get('requestId'), error });
      return problemResponse(c, new ApiError('store-unavailable', 'the feature stores did not answer; retry shortly', {}, { 'Retry-After': '1' }));
    }
    // The route template, not the path: a path carries the entity id, which logs never do.
    log.error('http.unhandled', { request_id: c.get('requestId'), method: c.req.method, route: routePath(c, -1), error });
    return problemResponse(c, new ApiError('internal', 'an unexpected error occurred; it has been logged with this request id', { request_id: c.get('requestId') }));
  });
  return app;
}

/**
 * The request path with the entity id replaced by REDACTED: an entity id may
 * name a person, and traces leave this process (OpenTelemetry asks that
 * sensitive parts of url.path be scrubbed). Other parameters (job names) are
 * the operator's own and stay. Logs carry only the route template.
 */
export function scrubbedPath(path: string, route: string | undefined): string {
  // A path no route matched (a trailing slash, an extra segment) may still carry an entity id: below /features/v1/
  // every segment but the batch route's own is redacted.
  if (route === undefined) return path.replace(/^(\/features\/v1)\/(.*)$/, (_, base: string, rest: string) => `${base}/${rest.split('/').map((s) => (s === 'batch' || s === '' ? s : 'REDACTED')).join('/')}`);
  const template = route.split('/');
  if (!template.includes(':entity_id')) return path;
  return path
    .split('/')
    .map((segment, i) => (template[i] === ':entity_id' ? 'REDACTED' : segment))
    .join('/');
}

declare module 'hono' {
  interface ContextVariableMap {
    /** performance.now() when the request arrived, for Server-Timing. */
    startedAt: number;
    /** The caller's API key grant; unset when access is open. */
    grant: KeyGrant | undefined;
    requestId: string;
    /** Headers of this request's response, filled by middleware and routes as they learn them. */
    responseHeaders: Record<string, string>;
    /** The response was made with responseHeaders already (respond.ts); nothing to merge. */
    headersApplied: boolean;
    /** Set for a request with a body: runs the work within the in-flight limit (load shedding), once the body is read. */
    admit: (<T>(work: () => Promise<T>) => Promise<T>) | undefined;
  }
}
