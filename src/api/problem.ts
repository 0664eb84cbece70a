// Owns error responses: one typed error, mapped in one place to RFC 9457
// application/problem+json with a stable type URI per kind. Nothing internal
// (stack, SQL, host names) ever reaches a response.
import { STATUS_CODES } from 'node:http';
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
  'headers-too-large': { status: 431, title: 'Request headers too large' },
  'request-timeout': { status: 408, title: 'The request did not arrive in time' },
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

/** The problem+json body; `instance` is the request path, absent when no request could be read. */
function problemBody(kind: ProblemKind, detail: string, instance: string | undefined, extra: Record<string, unknown> = {}): string {
  const { status, title } = PROBLEM_KINDS[kind];
  return JSON.stringify({ type: problemType(kind), title, status, detail, instance, ...extra });
}

export function problemResponse(c: Context, error: ApiError): Response {
  return c.body(problemBody(error.kind, error.detail, c.req.path, error.extra), error.status, { 'Content-Type': 'application/problem+json', 'Cache-Control': 'no-store', ...error.headers });
}

/**
 * The whole HTTP/1.1 response, as bytes for the socket, to a request Node's parser refused (the server's
 * 'clientError'): there is no request for the app to answer, but the answer is still a problem.
 */
export function clientErrorResponse(error: NodeJS.ErrnoException, maxHeaderBytes: number): string {
  const [kind, detail]: [ProblemKind, string] =
    error.code === 'HPE_HEADER_OVERFLOW'
      ? ['headers-too-large', `the request's headers are larger than the ${maxHeaderBytes}-byte limit; send fewer or shorter headers`]
      : error.code === 'ERR_HTTP_REQUEST_TIMEOUT'
        ? ['request-timeout', 'the request was not received completely in time; send it again without pausing']
        : ['invalid-request', 'the request could not be parsed as HTTP/1.1; check the request line, the headers and the body framing'];
  const body = problemBody(kind, detail, undefined);
  const { status } = PROBLEM_KINDS[kind];
  return `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nContent-Type: application/problem+json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n${body}`;
}
