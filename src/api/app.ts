// Owns the HTTP application: middleware (request id, safe headers, metrics and
// the per-request log line), the route groups, and the one place where errors
// become problem responses.
import { Hono, type Context, type Next } from 'hono';
import { requestId } from 'hono/request-id';
import { routePath } from 'hono/route';
import { secureHeaders } from 'hono/secure-headers';
import type { ApiKeys, KeyGrant } from '../stores/api-keys.js';
import type { RateLimit, RateLimiter } from '../stores/rate-limit.js';
import type { Catalog } from '../stores/catalog.js';
import type { Database } from '../stores/database.js';
import type { HotTier } from '../stores/hot-tier.js';
import { StoreUnavailableError, type FeatureReader } from '../stores/reader.js';
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
  readonly reader: FeatureReader;
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

export function createApp(deps: AppDeps): Hono {
  const app = new Hono();
  const { metrics, log } = deps;

  app.use(async (c, next) => {
    c.set('startedAt', performance.now());
    await next();
  });
  app.use(requestId({ headerName: 'Request-Id', limitLength: 64 }));
  const tracer = deps.tracing.tracer;
  if (tracer) {
    // A server span per request, continuing the caller's trace when it sends a traceparent.
    app.use(async (c, next) => {
      const parent = deps.tracing.extract(c.req.header());
      const span = tracer.startSpan(c.req.method, { kind: SpanKind.SERVER, attributes: { 'http.request.method': c.req.method, 'url.path': c.req.path } }, parent);
      try {
        await context.with(trace.setSpan(parent, span), next);
      } finally {
        const last = routePath(c, -1);
        const route = last === '/*' || last === '*' ? undefined : last;
        span.updateName(route ? `${c.req.method} ${route}` : c.req.method);
        if (route) span.setAttribute('http.route', route);
        span.setAttribute('http.response.status_code', c.res.status);
        if (c.res.status >= 500) span.setStatus({ code: SpanStatusCode.ERROR });
        span.end();
      }
    });
  }
  // The headers that matter for a JSON API; the browser-page ones only cost time per response.
  app.use(
    secureHeaders({
      xContentTypeOptions: true,
      xFrameOptions: 'DENY',
      referrerPolicy: 'no-referrer',
      crossOriginResourcePolicy: 'same-site',
      strictTransportSecurity: false,
      crossOriginOpenerPolicy: false,
      originAgentCluster: false,
      xDnsPrefetchControl: false,
      xDownloadOptions: false,
      xPermittedCrossDomainPolicies: false,
      xXssProtection: false,
    }),
  );
  app.use(async (c, next) => {
    const start = performance.now();
    await next();
    const seconds = (performance.now() - start) / 1000;
    // The last matched route is the handler's template; only middleware matched means no route did.
    const last = routePath(c, -1);
    const route = last === '/*' || last === '*' ? 'unmatched' : last;
    if (route.startsWith('/features/v1/')) deps.slo.record(seconds * 1000, c.res.status >= 500);
    metrics.requestDuration.observe({ http_request_method: c.req.method, http_route: route, http_response_status_code: String(c.res.status) }, seconds);
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
      tier: c.res.headers.get('Feature-Tier') ?? undefined,
      server_timing: c.res.headers.get('Server-Timing') ?? undefined,
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
        const headers = {
          'RateLimit-Policy': `"per-key";q=${decision.burst};w=${decision.windowSeconds}`,
          RateLimit: `"per-key";r=${decision.remaining};t=${decision.retryAfterSeconds}`,
        };
        if (!decision.allowed) {
          throw new ApiError('rate-limited', `API key "${grant.name}" is over its limit of ${limit.perSecond} requests per second (burst ${limit.burst}); retry after ${decision.retryAfterSeconds} s`, {}, { ...headers, 'Retry-After': String(decision.retryAfterSeconds) });
        }
        await next();
        for (const [name, value] of Object.entries(headers)) c.res.headers.set(name, value);
        return;
      }
      await next();
    };
    app.use('/features/v1/*', authenticate);
    app.use('/sync/v1/*', authenticate);
  }

  // Load shedding: past the limit, refuse at once so admitted requests keep their latency.
  let inFlight = 0;
  const maxInFlight = deps.maxInFlight ?? 512;
  const shed = async (c: Context, next: Next) => {
    if (inFlight >= maxInFlight) {
      throw new ApiError('overloaded', `the server is at its limit of ${maxInFlight} requests in progress; retry shortly`, {}, { 'Retry-After': '1' });
    }
    inFlight++;
    try {
      await next();
    } finally {
      inFlight--;
    }
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
    log.error('http.unhandled', { request_id: c.get('requestId'), path: c.req.path, error });
    return problemResponse(c, new ApiError('internal', 'an unexpected error occurred; it has been logged with this request id', { request_id: c.get('requestId') }));
  });
  return app;
}

declare module 'hono' {
  interface ContextVariableMap {
    /** performance.now() when the request arrived, for Server-Timing. */
    startedAt: number;
    /** The caller's API key grant; unset when access is open. */
    grant: KeyGrant | undefined;
  }
}
