// Owns how the feature routes make their responses: the request's headers,
// gathered in a plain object by middleware and the route, go to the Response as
// they are. (Setting them one by one through the Fetch `Headers` class costs
// more per lookup than the store read; @hono/node-server writes a plain object
// straight to the socket.)
import type { Context } from 'hono';

/** The response headers gathered so far for this request; routes add theirs here. */
export function responseHeaders(c: Context): Record<string, string> {
  return c.get('responseHeaders');
}

/** A JSON (or empty, e.g. 304) response carrying every gathered header. */
export function respondJson(c: Context, status: number, json: string | null): Response {
  const headers = c.get('responseHeaders');
  if (json !== null) headers['Content-Type'] = 'application/json';
  c.set('headersApplied', true);
  return new Response(json, { status, headers });
}

let turn: Promise<void> | undefined;

/**
 * Resolves once this turn of the event loop has run its I/O callbacks (one
 * promise shared by every caller of the turn). A route that awaits it before
 * answering sends its response together with the turn's other responses
 * instead of as soon as its request was read.
 */
export function endOfTurn(): Promise<void> {
  return (turn ??= new Promise((resolve) =>
    setImmediate(() => {
      turn = undefined;
      resolve();
    }),
  ));
}
