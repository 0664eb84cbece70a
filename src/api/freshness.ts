// Owns what every feature response says about how fresh its data is, in the
// body and in headers, and the HTTP caching validators derived from the version.
import type { Deprecation } from '../jobs/definition.js';
import type { ServedView, ServedVersion } from '../stores/catalog.js';

export interface FreshnessMetadata {
  readonly version: number;
  readonly as_of: string | null;
  readonly published_at: string;
  readonly age_seconds: number;
  readonly freshness_objective_seconds: number;
  readonly fresh: boolean;
}

/** What a version's responses say that does not change while it is served, worked out once per version. */
interface VersionTexts {
  readonly asOfMs: number;
  readonly publishedAt: string;
  readonly lastModified: string;
  readonly version: string;
}
const versionTexts = new WeakMap<ServedVersion, VersionTexts>();

function textsOf(version: ServedVersion): VersionTexts {
  let texts = versionTexts.get(version);
  if (!texts) {
    // An empty version has no event time; its data is as old as its publication.
    const asOfMs = version.asOfMs ?? version.publishedAt.getTime();
    texts = { asOfMs, publishedAt: version.publishedAt.toISOString(), lastModified: new Date(asOfMs).toUTCString(), version: String(version.version) };
    versionTexts.set(version, texts);
  }
  return texts;
}

export function freshnessOf(view: ServedView, version: ServedVersion, now: number): FreshnessMetadata {
  const texts = textsOf(version);
  const age = Math.max(0, Math.floor((now - texts.asOfMs) / 1000));
  return {
    version: version.version,
    as_of: version.asOf,
    published_at: texts.publishedAt,
    age_seconds: age,
    freshness_objective_seconds: view.job.freshnessSeconds,
    fresh: age <= view.job.freshnessSeconds,
  };
}

/**
 * Freshness headers. The data's age goes in Feature-Age, never in Age (which
 * tells caches how long a response sat in a cache). Cache-Control lets a
 * client keep a fresh answer until the next scheduled sync could replace it
 * or it would go stale, whichever comes first.
 */
export function freshnessHeaders(headers: Record<string, string>, view: ServedView, version: ServedVersion, meta: FreshnessMetadata, nextRun: Date | null, now: number): void {
  const texts = textsOf(version);
  const untilNextRun = nextRun ? Math.max(0, Math.floor((nextRun.getTime() - now) / 1000)) : 0;
  const untilStale = Math.max(0, meta.freshness_objective_seconds - meta.age_seconds);
  const maxAge = Math.min(untilNextRun, untilStale);
  headers['Last-Modified'] = texts.lastModified;
  // With no time left to keep it, a fresh answer is revalidated like a stale one.
  headers['Cache-Control'] = meta.fresh && maxAge > 0 ? `private, max-age=${maxAge}` : 'private, no-cache';
  headers['Feature-View'] = view.job.view;
  headers['Feature-Version'] = texts.version;
  headers['Feature-As-Of'] = meta.as_of ?? meta.published_at;
  headers['Feature-Age'] = String(meta.age_seconds);
  headers['Feature-Freshness'] = meta.fresh ? 'fresh' : 'stale';
  headers['Feature-Freshness-Objective'] = String(meta.freshness_objective_seconds);
}

/** 32-bit FNV-1a, hex: enough to tell apart representations of one URL. */
function fnv1a(text: string): string {
  let hash = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    hash ^= text.charCodeAt(i);
    hash = Math.imul(hash, 0x01000193);
  }
  return (hash >>> 0).toString(16).padStart(8, '0');
}

/**
 * Weak ETag (the body's age and freshness move under it; the values do not) from view, version, when it was
 * published, entity and the feature selection; no body hashing. The publish time tells apart two versions of one
 * number (one lost in a restore to an earlier state, then reused), so a cache holding the lost one's tag gets the new
 * body, not a 304.
 */
export function entityTag(version: ServedVersion, entityId: string, features: readonly string[] | null): string {
  return `W/"${version.view}.${version.version}.${fnv1a(`${version.publishedAt.getTime()}|${entityId}|${features?.join(',') ?? '*'}`)}"`;
}

/** If-None-Match uses the weak comparison (RFC 9110 §13.1.2). */
export function matchesIfNoneMatch(header: string | undefined, etag: string): boolean {
  if (!header) return false;
  if (header.trim() === '*') return true;
  const opaque = etag.replace(/^W\//, '');
  return header.split(',').some((candidate) => candidate.trim().replace(/^W\//, '') === opaque);
}

/**
 * Headers of a deprecated view: Deprecation (RFC 9745, a structured-field
 * date), Sunset (RFC 8594, an HTTP date) and a Link to its successor.
 */
export function deprecationHeaders(headers: Record<string, string>, deprecated: Deprecation, entityId?: string): void {
  headers.Deprecation = `@${Math.floor(deprecated.since.getTime() / 1000)}`;
  headers.Sunset = deprecated.sunset.toUTCString();
  if (deprecated.successor) {
    const target = entityId ? `/features/v1/${encodeURIComponent(entityId)}?view=${deprecated.successor}` : `/features/v1/batch`;
    headers.Link = `<${target}>; rel="successor-version"`;
  }
}
