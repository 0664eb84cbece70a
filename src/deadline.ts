// Owns bounding a wait by time: the request budget of a lookup, the replicas'
// share of it, a Redis Cluster call, a health check. The work itself is not
// cancelled (a promise cannot be); its own timeouts end it later, and its
// result is then ignored.

/** `work`, or a rejection with `timedOut()` after `ms` milliseconds, whichever comes first. */
export function withDeadline<T>(work: Promise<T>, ms: number, timedOut: () => Error): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(timedOut()), Math.max(0, ms));
  });
  return Promise.race([work, deadline]).finally(() => clearTimeout(timer));
}
