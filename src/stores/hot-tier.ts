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
  /** Removes every key of one version; returns how many were removed. */
  dropVersion(view: string, version: number): Promise<number>;
  ping(): Promise<void>;
  close(): Promise<void>;
}

export function hotKeyPrefix(view: string, version: number): string {
  return `fs:${view}:${version}:`;
}

export function hotKey(view: string, version: number, entityId: string): string {
  return `${hotKeyPrefix(view, version)}${entityId}`;
}
