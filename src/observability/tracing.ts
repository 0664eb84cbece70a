// Owns tracing: OpenTelemetry spans for requests (honouring an incoming W3C
// traceparent), for the cache, Redis and Postgres reads under them, and for
// each sync phase. Off unless OTEL_EXPORTER_OTLP_ENDPOINT is set (or a test
// hands in an exporter); when off, callers skip tracing entirely, so it costs
// a lookup nothing.
import { context, ROOT_CONTEXT, SpanKind, SpanStatusCode, trace, type Attributes, type Context, type Span, type Tracer } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { W3CTraceContextPropagator } from '@opentelemetry/core';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { BasicTracerProvider, BatchSpanProcessor, SimpleSpanProcessor, type SpanExporter } from '@opentelemetry/sdk-trace-base';

export interface TracingOptions {
  /** OTLP/HTTP collector base URL (spans go to <endpoint>/v1/traces). */
  readonly otlpEndpoint?: string | undefined;
  /** A ready exporter instead (tests use an in-memory one); spans are exported one by one. */
  readonly exporter?: SpanExporter;
  readonly serviceName: string;
}

export interface Tracing {
  /** Undefined when tracing is off: callers test this and skip all span work. */
  readonly tracer: Tracer | undefined;
  /** Context of an incoming request's traceparent header, or the root. */
  extract(headers: Record<string, string | undefined>): Context;
  shutdown(): Promise<void>;
}

const propagator = new W3CTraceContextPropagator();
let contextManagerInstalled = false;

export const tracingOff: Tracing = { tracer: undefined, extract: () => ROOT_CONTEXT, shutdown: async () => undefined };

export function setupTracing(options: TracingOptions): Tracing {
  if (!options.exporter && !options.otlpEndpoint) return tracingOff;
  // Active spans follow async work through AsyncLocalStorage; one manager serves the process.
  if (!contextManagerInstalled) {
    context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
    contextManagerInstalled = true;
  }
  const processor = options.exporter
    ? new SimpleSpanProcessor(options.exporter)
    : new BatchSpanProcessor(new OTLPTraceExporter({ url: `${options.otlpEndpoint!.replace(/\/$/, '')}/v1/traces` }));
  const provider = new BasicTracerProvider({ resource: resourceFromAttributes({ 'service.name': options.serviceName }), spanProcessors: [processor] });
  return {
    tracer: provider.getTracer('feature-serving-api'),
    extract: (headers) => propagator.extract(ROOT_CONTEXT, headers, { get: (carrier, key) => carrier[key], keys: (carrier) => Object.keys(carrier) }),
    shutdown: () => provider.shutdown(),
  };
}

/** Runs fn in a child span of the active one when tracing is on; otherwise just runs it. */
export async function inSpan<T>(tracer: Tracer | undefined, name: string, attributes: Attributes, fn: (span: Span | undefined) => Promise<T>): Promise<T> {
  if (!tracer) return fn(undefined);
  return tracer.startActiveSpan(name, { kind: SpanKind.CLIENT, attributes }, async (span) => {
    try {
      return await fn(span);
    } catch (error) {
      span.recordException(error as Error);
      span.setStatus({ code: SpanStatusCode.ERROR, message: (error as Error).message });
      throw error;
    } finally {
      span.end();
    }
  });
}

/** Records already-timed phases (a sync run's) as a span tree after the fact. */
export function recordPhases(tracer: Tracer | undefined, name: string, attributes: Attributes, start: number, phases: readonly { name: string; start: number; end: number }[], failed?: string): void {
  if (!tracer) return;
  const root = tracer.startSpan(name, { kind: SpanKind.INTERNAL, attributes, startTime: start });
  const parent = trace.setSpan(ROOT_CONTEXT, root);
  for (const phase of phases) tracer.startSpan(`sync.${phase.name}`, { startTime: phase.start }, parent).end(phase.end);
  if (failed) root.setStatus({ code: SpanStatusCode.ERROR, message: failed });
  root.end(phases.at(-1)?.end ?? Date.now());
}
