// Owns error responses: one typed error, mapped in one place to RFC 9457
// application/problem+json with a stable type URI per kind. Nothing internal
// (stack, SQL, host names) ever reaches a response.
import type { Context } from 'hono';
import type { ContentfulStatusCode } from 'hono/utils/http-status';

export const PROBLEM_KINDS = {
  'invalid-request': { status: 400, title: 'The request is not valid' },
  'invalid-entity-id': { status: 400, title: 'The entity id is not valid' },
  'unknown-view': { status: 400, title: 'No such feature view' },
  'unknown-feature': { status: 400, title: 'No such feature in this view' },
  'ambiguous-entity': { status: 400, title: 'Several views hold this entity' },
  unauthorized: { status: 401, title: 'A valid API key is required' },
  forbidden: { status: 403, title: 'This API key may not read this view' },
  'entity-not-found': { status: 404, title: 'No such entity in this view' },
  'not-found': { status: 404, title: 'No such resource' },
  'method-not-allowed': { status: 405, title: 'Method not allowed' },
  'rate-limited': { status: 429, title: 'Too many requests for this API key' },
  'payload-too-large': { status: 413, title: 'Request body too large' },
  'unsupported-media-type': { status: 415, title: 'Unsupported media type' },
  'view-not-ready': { status: 503, title: 'The view has no published version yet' },
  'store-unavailable': { status: 503, title: 'The feature stores are unavailable' },
  overloaded: { status: 503, title: 'The server is overloaded' },
  internal: { status: 500, title: 'Internal error' },
} as const satisfies Record<string, { status: ContentfulStatusCode; title: string }>;

export type ProblemKind = keyof typeof PROBLEM_KINDS;

export const problemType = (kind: ProblemKind) => `urn:feature-serving:problem:${kind}`;

export class ApiError extends Error {
  override name = 'ApiError';
  constructor(
    readonly kind: ProblemKind,
    readonly detail: string,
    readonly extra: Record<string, unknown> = {},
    readonly headers: Record<string, string> = {},
  ) {
    super(detail);
  }

  get status(): ContentfulStatusCode {
    return PROBLEM_KINDS[this.kind].status;
  }
}

export function problemResponse(c: Context, error: ApiError): Response {
  const { status, title } = PROBLEM_KINDS[error.kind];
  const body = { type: problemType(error.kind), title, status, detail: error.detail, instance: c.req.path, ...error.extra };
  return c.body(JSON.stringify(body), status, { 'Content-Type': 'application/problem+json', 'Cache-Control': 'no-store', ...error.headers });
}
