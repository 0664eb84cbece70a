// Owns the embedded hot tier: a map in this process standing in for Redis when
// no REDIS_URL is given. Same contract as Redis, minus the network.
import type { HotTier } from './hot-tier.js';
import { DEFAULT_FILL_TTL_SECONDS, hotKeyPrefix, hotVersionMark, markAfterDropSeconds } from './hot-tier.js';

export class MemoryHotTier implements HotTier {
  readonly kind = 'memory' as const;
  private readonly entries = new Map<string, { value: Buffer; expiresAt: number }>();
  /** Version marks, with when each expires (a dropped version's mark: see HotTier.dropVersion). */
  private readonly marks = new Map<string, number>();

  constructor(private readonly fillTtlSeconds = DEFAULT_FILL_TTL_SECONDS) {}

  async get(keys: readonly string[]): Promise<(Buffer | null)[]> {
    const now = Date.now();
    return keys.map((key) => {
      const entry = this.entries.get(key);
      if (!entry) return null;
      if (entry.expiresAt <= now) {
        this.entries.delete(key);
        return null;
      }
      return entry.value;
    });
  }

  async set(entries: readonly (readonly [string, Buffer])[], ttlSeconds?: number): Promise<void> {
    const expiresAt = ttlSeconds ? Date.now() + ttlSeconds * 1000 : Number.POSITIVE_INFINITY;
    // A copy: the caller may reuse the bytes once this returns.
    for (const [key, value] of entries) this.entries.set(key, { value: Buffer.from(value), expiresAt });
  }

  async claimVersion(view: string, version: number): Promise<boolean> {
    const mark = hotVersionMark(view, version);
    if ((this.marks.get(mark) ?? 0) > Date.now()) return false;
    this.marks.set(mark, Number.POSITIVE_INFINITY);
    return true;
  }

  async dropVersion(view: string, version: number, options: { readonly release?: boolean } = {}): Promise<number> {
    const mark = hotVersionMark(view, version);
    const now = Date.now();
    // Dropped versions' marks that have expired go here, so they do not pile up over a long run.
    for (const [key, expiresAt] of this.marks) if (expiresAt <= now) this.marks.delete(key);
    if (options.release) this.marks.delete(mark);
    else this.marks.set(mark, now + markAfterDropSeconds(this.fillTtlSeconds) * 1000);
    const prefix = hotKeyPrefix(view, version);
    let removed = 0;
    for (const key of this.entries.keys()) {
      if (key.startsWith(prefix)) {
        this.entries.delete(key);
        removed++;
      }
    }
    return removed;
  }

  get size(): number {
    return this.entries.size;
  }

  async ping(): Promise<void> {}

  async close(): Promise<void> {
    this.entries.clear();
    this.marks.clear();
  }
}
