// Owns what the serving side knows about each view: its definition and the
// version readers are switched to. Everything a request needs but the data
// itself (feature positions, the prepared statement, the next scheduled run) is
// resolved here once per version, never per request. The catalog follows
// the primary Postgres: it polls the views table, is told directly when this
// process's scheduler publishes, and is told by a LISTEN connection when any
// process publishes or rolls back (see server.ts). It only ever moves a view
// forward in generation, so a process never serves a version older than one
// it has already served, whatever order reads and notifications arrive in.
import { createHash } from 'node:crypto';
import { Cron } from 'croner';
import type { FeatureType, JobDefinition } from '../jobs/definition.js';
import type { Queryable } from './database.js';
import { quoteIdent } from './database.js';
import { isoTimeSql, readPublishedVersions, versionTable, type PublishedVersion } from './metadata.js';

export interface ServedVersion extends PublishedVersion {
  /** Position of each feature in a stored row's values. */
  readonly featureIndex: ReadonlyMap<string, number>;
  readonly featureTypes: ReadonlyMap<string, FeatureType>;
  /** Point/batch read of this version's table; rows come back as arrays. */
  readonly select: { readonly name: string; readonly text: string };
}

export interface ServedView {
  readonly job: JobDefinition;
  /** Null until the view's first successful sync. */
  readonly current: ServedVersion | null;
}


export function toServedVersion(published: PublishedVersion): ServedVersion {
  const columns = published.features.map((f) => (f.type === 'timestamp' ? isoTimeSql(quoteIdent(f.name)) : quoteIdent(f.name)));
  const text = `SELECT entity_id, ${isoTimeSql('event_time')}, ${columns.join(', ')} FROM ${versionTable(published.view, published.version)} WHERE entity_id = ANY($1::text[])`;
  return {
    ...published,
    featureIndex: new Map(published.features.map((f, i) => [f.name, i])),
    featureTypes: new Map(published.features.map((f) => [f.name, f.type])),
    // A version number published again after a restore may have other features: the statement's name carries its
    // text's hash, since a connection refuses one name for two texts.
    select: { name: `fs_read_${published.view}_${published.version}_${createHash('sha1').update(text).digest('hex').slice(0, 8)}`, text },
  };
}

export class Catalog {
  private readonly views = new Map<string, ServedView>();
  private readonly crons = new Map<string, Cron>();
  /** Next scheduled run per view, recomputed only once it has passed (croner is costly per request). */
  private readonly nextRuns = new Map<string, Date | null>();
  private timer: NodeJS.Timeout | undefined;
  private lastError: Error | undefined;
  private refreshing: Promise<void> | undefined;
  private queued: Promise<void> | undefined;

  /** Views already reported as showing an older switch than the one served (reported once each). */
  private readonly reportedBehind = new Set<string>();

  constructor(
    private readonly db: Queryable,
    jobs: readonly JobDefinition[],
    /**
     * Called when the primary shows a view at an older switch than this process serves, or at the same switch with
     * another version. Refreshes are serialized, so this is not a race: the database went back (restored from a
     * backup?). The process keeps serving what it served, and says so.
     */
    private readonly onBehind?: (view: string, servedGeneration: number, foundGeneration: number, versions: { served: number; found: number }) => void,
  ) {
    for (const job of jobs) {
      this.views.set(job.view, { job, current: null });
      this.crons.set(job.view, new Cron(job.schedule, { paused: true, timezone: 'UTC' }));
    }
  }

  get(view: string): ServedView | undefined {
    return this.views.get(view);
  }

  list(): ServedView[] {
    return [...this.views.values()];
  }

  /** When the view's next scheduled sync is due, or null if the schedule never fires again. */
  nextRun(view: string, now = Date.now()): Date | null {
    const cached = this.nextRuns.get(view);
    if (cached !== undefined && (cached === null || cached.getTime() > now)) return cached;
    const next = this.crons.get(view)?.nextRun(new Date(now)) ?? null;
    this.nextRuns.set(view, next);
    return next;
  }

  /** The last refresh's error, if the last refresh failed (Postgres unreachable). */
  get refreshError(): Error | undefined {
    return this.lastError;
  }

  /**
   * Re-reads the current versions. A call while a read is in flight gets the
   * read after it (shared by every such call): the one in flight may have
   * started before the switch the caller was told about.
   */
  refresh(): Promise<void> {
    if (!this.refreshing) {
      this.refreshing = this.load().finally(() => {
        this.refreshing = undefined;
      });
      return this.refreshing;
    }
    this.queued ??= this.refreshing
      .catch(() => undefined)
      .then(() => {
        this.queued = undefined;
        return this.refresh();
      });
    return this.queued;
  }

  private async load(): Promise<void> {
    try {
      const published = await readPublishedVersions(this.db);
      for (const version of published) {
        const view = this.views.get(version.view);
        // Versions of views no longer defined are not served.
        if (!view) continue;
        // Only a later switch replaces what is served (an older generation is a
        // read that raced a newer one); the same version keeps its resolved
        // object and prepared statement name.
        if (view.current && version.generation <= view.current.generation) {
          // Behind, or at the served generation with another version or another publish of it: one switch cannot
          // name two, so the database went back and was switched again since (a restore, then publishes).
          const diverged =
            version.generation < view.current.generation || version.version !== view.current.version || version.publishedAt.getTime() !== view.current.publishedAt.getTime();
          const key = `${version.view}:${version.generation}:${version.version}:${version.publishedAt.getTime()}`;
          if (diverged && !this.reportedBehind.has(key)) {
            this.reportedBehind.add(key);
            this.onBehind?.(version.view, view.current.generation, version.generation, { served: view.current.version, found: version.version });
          }
          continue;
        }
        // The same publish (a rollback back to it, say) keeps its object; a version number published again (after a
        // restore) is another version: its own as-of, publish time and ETags.
        const same = view.current?.version === version.version && view.current.publishedAt.getTime() === version.publishedAt.getTime();
        const current = same ? { ...view.current!, generation: version.generation } : toServedVersion(version);
        this.views.set(version.view, { job: view.job, current });
      }
      this.lastError = undefined;
    } catch (error) {
      this.lastError = error as Error;
      throw error;
    }
  }

  /** Polls every `intervalMs`; failures keep the versions already known. */
  start(intervalMs: number): void {
    this.timer = setInterval(() => void this.refresh().catch(() => undefined), intervalMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
  }
}
