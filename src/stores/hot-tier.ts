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
  /** Removes every key of one version, and its mark; returns how many keys were removed. */
  dropVersion(view: string, version: number): Promise<number>;
  ping(): Promise<void>;
  close(): Promise<void>;
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
