// Owns SLO accounting for what this process has seen: lookups counted per
// minute in a ring that spans the longest window, so compliance, error budget
// and burn rates over any window are sums of a few buckets, not a scan of
// requests. A snapshot of those sums is small and adds up over processes, so
// the serving workers of one machine report as one (src/cluster.ts).
// Prometheus (observability/prometheus/rules.yml) does the same over every
// process of every machine.

export interface SloConfig {
  /** A lookup slower than this is a latency failure. */
  readonly latencyThresholdMs: number;
  /** Share of lookups that must be under the threshold, e.g. 0.99. */
  readonly latencyTarget: number;
  /** Share of lookups that must not fail with a 5xx, e.g. 0.999. */
  readonly availabilityTarget: number;
  /** The compliance period, e.g. 28 days. */
  readonly windowDays: number;
}

const MINUTE_MS = 60_000;
/** Burn-rate windows reported besides the compliance period (the SRE workbook's alerting windows). */
export const BURN_WINDOWS = [
  { name: '5m', minutes: 5 },
  { name: '1h', minutes: 60 },
  { name: '6h', minutes: 360 },
  { name: '3d', minutes: 4320 },
] as const;

export interface ObjectiveReport {
  readonly name: 'latency' | 'availability';
  readonly description: string;
  readonly target: number;
  readonly window_days: number;
  readonly total: number;
  readonly good: number;
  /** Good share over the window; null before any lookup. */
  readonly compliance: number | null;
  /** Share of the window's error budget still unspent (negative when overspent). */
  readonly error_budget_remaining: number;
  readonly met: boolean;
  /** How fast the budget burns in each window (1 = exactly the sustainable rate). */
  readonly burn_rates: Record<string, number | null>;
}

/** Seconds over which the dashboard's live rate is taken. */
export const RECENT_SECONDS = 10;

interface Counts {
  total: number;
  slow: number;
  failed: number;
}
interface RecentCounts {
  readonly seconds: number;
  readonly total: number;
  readonly failed: number;
}

/** One minute's counts, as a cluster worker hands them to its primary: [minute since the epoch, total, slow, failed]. */
export type MinuteCounts = readonly [minute: number, total: number, slow: number, failed: number];

/** Plain data (it crosses process boundaries): lookups counted over the period (`period`) and each burn-rate window, and over the last seconds. */
export interface SloSnapshot {
  /** When tracking began (ms since the epoch). */
  readonly since: number;
  readonly windows: Readonly<Record<string, Counts>>;
  readonly recent: RecentCounts;
}

export interface SloReport {
  readonly tracked_since: string;
  readonly objectives: ObjectiveReport[];
}

export class SloTracker {
  /** Minutes the per-minute ring holds: the period or the longest burn window, whichever is longer. */
  private readonly minutes: number;
  private readonly periodMinutes: number;
  private readonly total: Float64Array;
  private readonly slow: Float64Array;
  private readonly failed: Float64Array;
  private readonly stamp: Float64Array;
  private readonly since: number;
  // Per-second counts for the last minute, for a live request rate.
  private readonly secondTotal = new Float64Array(60);
  private readonly secondFailed = new Float64Array(60);
  private readonly secondStamp = new Float64Array(60).fill(-1);

  constructor(
    readonly config: SloConfig,
    private readonly now: () => number = Date.now,
  ) {
    this.periodMinutes = Math.max(1, Math.round(config.windowDays * 1440));
    // The ring holds the longest burn window too, so a period shorter than 3 days does not cut the 3d burn rate.
    this.minutes = Math.max(this.periodMinutes, ...BURN_WINDOWS.map((w) => w.minutes));
    this.total = new Float64Array(this.minutes);
    this.slow = new Float64Array(this.minutes);
    this.failed = new Float64Array(this.minutes);
    this.stamp = new Float64Array(this.minutes).fill(-1);
    this.since = now();
  }

  /** Records one lookup: its duration and whether it failed on our side (5xx). */
  record(durationMs: number, serverError: boolean): void {
    const minute = Math.floor(this.now() / MINUTE_MS);
    const slot = minute % this.minutes;
    if (this.stamp[slot] !== minute) {
      this.stamp[slot] = minute;
      this.total[slot] = 0;
      this.slow[slot] = 0;
      this.failed[slot] = 0;
    }
    this.total[slot]! += 1;
    if (durationMs > this.config.latencyThresholdMs) this.slow[slot]! += 1;
    if (serverError) this.failed[slot]! += 1;
    const second = Math.floor(this.now() / 1000);
    const s = second % 60;
    if (this.secondStamp[s] !== second) {
      this.secondStamp[s] = second;
      this.secondTotal[s] = 0;
      this.secondFailed[s] = 0;
    }
    this.secondTotal[s]! += 1;
    if (serverError) this.secondFailed[s]! += 1;
  }

  /** The minutes from `fromMinute` (minutes since the epoch) on that hold counts, oldest first. */
  minutesFrom(fromMinute: number): MinuteCounts[] {
    const current = Math.floor(this.now() / MINUTE_MS);
    const out: MinuteCounts[] = [];
    for (let m = Math.max(fromMinute, current - this.minutes + 1); m <= current; m++) {
      const slot = m % this.minutes;
      if (this.stamp[slot] === m && this.total[slot]! > 0) out.push([m, this.total[slot]!, this.slow[slot]!, this.failed[slot]!]);
    }
    return out;
  }

  /** The minute the last hand-off began at (see handOff). */
  private handedFrom = -Infinity;

  /**
   * A cluster worker's hand-off to its primary: the minutes counted since the last hand-off, that minute again (now
   * complete) included, for the primary to `absorb` with `replace`.
   */
  handOff(): MinuteCounts[] {
    const minutes = this.minutesFrom(this.handedFrom);
    this.handedFrom = Math.floor(this.now() / MINUTE_MS);
    return minutes;
  }

  /**
   * Takes in another process's minutes: `replace` sets them (a worker's latest counts of minutes it handed over
   * before), `add` adds them (a dead worker's counts joining the ones kept). Minutes older than the ring are dropped.
   */
  absorb(minutes: readonly MinuteCounts[], mode: 'replace' | 'add'): void {
    const current = Math.floor(this.now() / MINUTE_MS);
    for (const [minute, total, slow, failed] of minutes) {
      if (!Number.isInteger(minute) || minute <= current - this.minutes || minute > current + 1) continue;
      const slot = minute % this.minutes;
      if (this.stamp[slot]! > minute) continue;
      if (this.stamp[slot] !== minute || mode === 'replace') {
        this.stamp[slot] = minute;
        this.total[slot] = 0;
        this.slow[slot] = 0;
        this.failed[slot] = 0;
      }
      this.total[slot]! += total;
      this.slow[slot]! += slow;
      this.failed[slot]! += failed;
    }
  }

  /**
   * The sums every report needs, over the compliance period, each burn-rate
   * window and the last RECENT_SECONDS seconds: small, and additive over
   * processes (see combineSlo), so a cluster of workers reports as one.
   */
  snapshot(): SloSnapshot {
    const windows: Record<string, Counts> = { period: this.sum(this.periodMinutes) };
    for (const { name, minutes } of BURN_WINDOWS) windows[name] = this.sum(minutes);
    return { since: this.since, windows, recent: this.recentCounts(RECENT_SECONDS) };
  }

  /**
   * What this process saw, or in a cluster worker every serving process of
   * the machine (src/cluster.ts replaces it): what /slo/v1 and the dashboard
   * show.
   */
  gather: () => Promise<SloSnapshot> = async () => this.snapshot();

  /** Lookups and failures over the last `seconds` (at most 60), this one included. */
  private recentCounts(seconds: number): RecentCounts {
    const span = Math.min(60, Math.max(1, seconds));
    const current = Math.floor(this.now() / 1000);
    let total = 0;
    let failed = 0;
    for (let sec = current - span + 1; sec <= current; sec++) {
      const slot = ((sec % 60) + 60) % 60;
      if (this.secondStamp[slot] !== sec) continue;
      total += this.secondTotal[slot]!;
      failed += this.secondFailed[slot]!;
    }
    return { seconds: span, total, failed };
  }

  private sum(minutes: number): Counts {
    const current = Math.floor(this.now() / MINUTE_MS);
    const span = Math.min(minutes, this.minutes);
    let total = 0;
    let slow = 0;
    let failed = 0;
    for (let m = current - span + 1; m <= current; m++) {
      const slot = ((m % this.minutes) + this.minutes) % this.minutes;
      if (this.stamp[slot] !== m) continue;
      total += this.total[slot]!;
      slow += this.slow[slot]!;
      failed += this.failed[slot]!;
    }
    return { total, slow, failed };
  }

  report(snapshot: SloSnapshot = this.snapshot()): SloReport {
    return sloReport(this.config, snapshot);
  }
}

/** Compliance, error budget and burn rates of each objective, from a snapshot of one process or of several combined. */
export function sloReport(config: SloConfig, snapshot: SloSnapshot): SloReport {
  const window = snapshot.windows.period!;
  const objective = (name: 'latency' | 'availability', target: number, bad: (s: Counts) => number, description: string): ObjectiveReport => {
    const budget = 1 - target;
    const badCount = bad(window);
    const burn = Object.fromEntries(
      BURN_WINDOWS.map(({ name: w }) => {
        const s = snapshot.windows[w]!;
        return [w, s.total === 0 ? null : bad(s) / s.total / budget];
      }),
    );
    return {
      name,
      description,
      target,
      window_days: config.windowDays,
      total: window.total,
      good: window.total - badCount,
      compliance: window.total === 0 ? null : (window.total - badCount) / window.total,
      error_budget_remaining: window.total === 0 ? 1 : 1 - badCount / (budget * window.total),
      met: window.total === 0 || (window.total - badCount) / window.total >= target,
      burn_rates: burn,
    };
  };
  return {
    tracked_since: new Date(snapshot.since).toISOString(),
    objectives: [
      objective('latency', config.latencyTarget, (s) => s.slow, `${config.latencyTarget * 100}% of lookups answered within ${config.latencyThresholdMs} ms`),
      objective('availability', config.availabilityTarget, (s) => s.failed, `${config.availabilityTarget * 100}% of lookups answered without a server error (5xx)`),
    ],
  };
}

/** Several processes' snapshots as one: counts add up, tracking began with the earliest. */
export function combineSlo(snapshots: readonly SloSnapshot[]): SloSnapshot {
  const windows: Record<string, Counts> = {};
  for (const name of ['period', ...BURN_WINDOWS.map((w) => w.name)]) {
    windows[name] = { total: 0, slow: 0, failed: 0 };
    for (const snapshot of snapshots) {
      const counts = snapshot.windows[name];
      if (!counts) continue;
      windows[name].total += counts.total;
      windows[name].slow += counts.slow;
      windows[name].failed += counts.failed;
    }
  }
  return {
    since: snapshots.length ? Math.min(...snapshots.map((s) => s.since)) : Date.now(),
    windows,
    recent: {
      seconds: RECENT_SECONDS,
      total: snapshots.reduce((sum, s) => sum + s.recent.total, 0),
      failed: snapshots.reduce((sum, s) => sum + s.recent.failed, 0),
    },
  };
}

/** Lookups per second and the share of them that failed, from a snapshot's last seconds. */
export function recentOf(recent: RecentCounts): { rate: number; errorRate: number } {
  return { rate: recent.total / recent.seconds, errorRate: recent.total === 0 ? 0 : recent.failed / recent.total };
}
