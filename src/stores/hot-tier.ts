// Owns the hot tier: the key-value copy of each published version that answers
// most lookups (Redis, or an in-process map in the embedded mode). Keys carry
// the version, so a version switch is atomic for readers: they only ever ask
// for keys of the version the catalog says is current. Values are bytes in the
// format of hot-value.ts.

export interface HotTier {
  readonly kind: 'redis' | 'memory';
  /** Values in the order of `keys`; null where a key is absent. */
  get(keys: readonly string[]): Promise<(Buffer | null)[]>;
  /** Writes a batch of entries; with a TTL when filling behind a miss. The caller may reuse the values' bytes once the promise settles, so keep a copy to hold them longer. */
  set(entries: readonly (readonly [string, Buffer])[], ttlSeconds?: number): Promise<void>;
  /**
   * Marks a version as being written, before its first key: false if it was marked already. A version number is
   * never allocated twice unless Postgres lost a version the hot tier still holds (a restore to an earlier state),
   * and then the caller drops what is there before writing, so no key of the lost version survives into the new one.
   */
  claimVersion(view: string, version: number): Promise<boolean>;
  /**
   * Removes every key of one version; returns how many keys were removed. Its mark stays for the fill TTL and a
   * margin (markAfterDrop), so a lookup's fill that lands after the drop, planting a key of the dropped version, is
   * still found and dropped if the number is ever claimed again. `release` (a number being claimed again) removes
   * the mark too.
   */
  dropVersion(view: string, version: number, options?: { readonly release?: boolean }): Promise<number>;
  ping(): Promise<void>;
  close(): Promise<void>;
}

/** Default TTL of the keys a lookup fills behind a miss (REDIS_FILL_TTL_SECONDS). */
export const DEFAULT_FILL_TTL_SECONDS = 86_400;

/**
 * How long a dropped version's mark stays: past the TTL of any fill that could land after the drop (a fill is
 * bounded by the hot tier's command timeout, far less than the margin).
 */
export function markAfterDropSeconds(fillTtlSeconds: number): number {
  return fillTtlSeconds + 600;
}

export function hotKeyPrefix(view: string, version: number): string {
  return `fs:${view}:${version}:`;
}

/** The mark of a version (claimVersion): the prefix without its last colon, so no entity's key can equal it. */
export function hotVersionMark(view: string, version: number): string {
  return `fs:${view}:${version}`;
}

export function hotKey(view: string, version: number, entityId: string): string {
  return `${hotKeyPrefix(view, version)}${entityId}`;
}
