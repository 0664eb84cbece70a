// Owns running syncs from the server: one child process per run, at most one
// run per job in this process, a time limit, and the outcome turned into
// metrics and a catalog refresh. A child that dies or overruns is killed and
// its run closed as failed; what it wrote is never published.
import { fork } from 'node:child_process';
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import type { Config } from '../config/index.js';
import type { JobDefinition } from '../jobs/definition.js';
import type { Database } from '../stores/database.js';
import type { HotTier } from '../stores/hot-tier.js';
import { finishRun, getRun, recordSkippedRun, type RunTrigger } from '../stores/metadata.js';
import type { Logger } from '../observability/log.js';
import type { Metrics } from '../observability/metrics.js';
import type { ChildMessage, ChildRequest } from './child.js';
import type { RunOptions, RunSummary } from './engine.js';
import { StoreHost, type Call } from './remote.js';

export interface SyncRunnerDeps {
  readonly config: Config;
  readonly jobs: readonly JobDefinition[];
  readonly db: Database;
  /** The parent's hot tier, served to children in the embedded mode. */
  readonly hot: HotTier;
  readonly log: Logger;
  readonly metrics: Metrics;
  /** Called after every run that published a version. */
  readonly onPublished: (summary: RunSummary) => Promise<void> | void;
}

/** Lets lookups win the CPU over a sync; failing to renice is logged, not fatal. */
export function lowerPriority(pid: number | undefined, nice: number, log: Logger): void {
  if (pid === undefined || nice === 0) return;
  try {
    os.setPriority(pid, nice);
  } catch (error) {
    log.warn('sync.renice_failed', { pid, nice, error });
  }
}

export class UnknownJobError extends Error {
  override name = 'UnknownJobError';
}

/**
 * V8 flags of a sync process: this module's children, and `npm run sync` (package.json passes the same). A sync's
 * batches are bounded, so a small old generation is enough; and it allocates short-lived rows at a steady rate, for
 * which V8's default young generation (16 MB semi-spaces) keeps about 20 MB more resident than 8 MB ones, at no time
 * measured (1M and 5M rows: README, Benchmarks).
 */
export function syncNodeFlags(heapMb: number): string[] {
  return [`--max-old-space-size=${heapMb}`, '--max-semi-space-size=8'];
}

function childEntry(): { path: string; execArgv: string[] } {
  const url = new URL(import.meta.url.endsWith('.ts') ? './child.ts' : './child.js', import.meta.url);
  // Under the test runner the sources are TypeScript; tsx loads them in the child too.
  return { path: fileURLToPath(url), execArgv: url.pathname.endsWith('.ts') ? ['--import', 'tsx'] : [] };
}

export class SyncRunner {
  private readonly running = new Map<string, Promise<RunSummary>>();
  private readonly children = new Set<import('node:child_process').ChildProcess>();
  private abandonReason: string | undefined;
  /** Set at shutdown: no new run starts (start-up syncs still queued, a tick, a manual trigger), runs in progress go on. */
  private stopReason: string | undefined;
  private readonly jobs: Map<string, JobDefinition>;

  constructor(private readonly deps: SyncRunnerDeps) {
    this.jobs = new Map(deps.jobs.map((job) => [job.view, job]));
    // Every outcome's series exists from the start at 0: a counter born at 1 has no increase for Prometheus, so the
    // first failure after a start would never raise FeatureSyncFailing.
    for (const job of deps.jobs) for (const status of ['succeeded', 'failed', 'skipped'] as const) deps.metrics.syncRuns.inc({ sync_job: job.view, status }, 0);
  }

  isRunning(view: string): boolean {
    return this.running.has(view);
  }

  /** Runs a job now unless it is already running here (then the run is recorded as skipped). */
  async run(view: string, trigger: RunTrigger, options: RunOptions = {}): Promise<RunSummary> {
    const job = this.jobs.get(view);
    if (!job) throw new UnknownJobError(`no sync job "${view}"; jobs: ${[...this.jobs.keys()].join(', ')}`);
    const refused = this.stopReason ?? this.abandonReason;
    if (refused || this.running.has(view)) {
      const reason = refused ?? 'a run of this job was already in progress in this process';
      // At shutdown the database may be closing: the skip is still counted and logged if it cannot be recorded.
      const runId = await recordSkippedRun(this.deps.db, view, trigger, reason, options.scheduledFor).catch((error: Error) => {
        if (!refused) throw error;
        this.deps.log.warn('sync.skip_unrecorded', { job: view, trigger, reason, error });
        return -1;
      });
      this.deps.metrics.syncRuns.inc({ sync_job: view, status: 'skipped' });
      return { runId, job: view, status: 'skipped', version: null, rowsRead: 0, rowsWritten: 0, watermark: null, error: reason, durationMs: 0, details: {} };
    }
    const promise = this.runChild(job, trigger, options).finally(() => this.running.delete(view));
    this.running.set(view, promise);
    const summary = await promise;
    this.record(summary);
    if (summary.status === 'succeeded') await this.deps.onPublished(summary);
    return summary;
  }

  /** From now on no run starts (each is recorded as skipped, with `reason`); runs in progress go on. */
  stopStarting(reason: string): void {
    this.stopReason = reason;
  }

  /** Stops every run still in progress; what they wrote is never published. */
  async abandonAll(reason: string): Promise<void> {
    this.abandonReason = reason;
    for (const child of this.children) child.kill('SIGKILL');
    await this.idle();
  }

  /** Waits for every run in progress (used at shutdown). */
  async idle(): Promise<void> {
    await Promise.allSettled([...this.running.values()]);
  }

  private record(summary: RunSummary): void {
    const { metrics } = this.deps;
    metrics.syncRuns.inc({ sync_job: summary.job, status: summary.status });
    if (summary.status === 'skipped') return;
    metrics.syncDuration.observe({ sync_job: summary.job, status: summary.status }, summary.durationMs / 1000);
    if (summary.status === 'succeeded') metrics.syncRows.inc({ sync_job: summary.job }, summary.rowsWritten);
    const rejected = Number(summary.details.rows_rejected ?? 0);
    if (rejected > 0) metrics.syncRejects.inc({ sync_job: summary.job }, rejected);
  }

  private runChild(job: JobDefinition, trigger: RunTrigger, options: RunOptions): Promise<RunSummary> {
    const { config, db, hot, log } = this.deps;
    const started = Date.now();
    const entry = childEntry();
    const cannotStart = (error: NodeJS.ErrnoException): RunSummary => {
      const message = `the sync process could not be started (${error.code ?? error.message}); is the machine out of processes, file descriptors or memory? Nothing was published`;
      log.error('sync.run', { job: job.view, status: 'failed', error: message });
      return { runId: -1, job: job.view, status: 'failed', version: null, rowsRead: 0, rowsWritten: 0, watermark: null, error: message, durationMs: Date.now() - started, details: {} };
    };
    let child: import('node:child_process').ChildProcess;
    try {
      child = fork(entry.path, [], {
        execArgv: [...entry.execArgv, ...syncNodeFlags(config.syncHeapMb)],
        serialization: 'advanced',
        stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      });
    } catch (error) {
      // Some failures (ENOMEM) throw here rather than arrive as 'error'.
      return Promise.resolve(cannotStart(error as NodeJS.ErrnoException));
    }
    lowerPriority(child.pid, config.syncNice, log);
    this.children.add(child);
    child.once('exit', () => this.children.delete(child));
    const host = config.embedded ? new StoreHost(db, hot) : undefined;
    let runId: number | undefined;
    let summary: RunSummary | undefined;

    let failedToStart = false;
    return new Promise<RunSummary>((resolve) => {
      // A fork that fails (EAGAIN, EMFILE, ENOMEM: the machine out of processes, files or memory) emits 'error' and
      // may never emit 'exit': the run fails, naming why, rather than crash the server or hold the job for good.
      // 'on', not 'once': a failed spawn may report more than one error (its IPC channel too).
      child.on('error', (error: NodeJS.ErrnoException) => {
        if (child.pid !== undefined || failedToStart) return; // a running child's IPC trouble: its 'exit' settles the run
        failedToStart = true;
        clearTimeout(timer);
        this.children.delete(child);
        void (host?.release() ?? Promise.resolve()).finally(() => resolve(cannotStart(error)));
      });
      const timer = setTimeout(() => {
        log.error('sync.timeout', { job: job.view, run_id: runId, limit_ms: config.syncTimeoutMs });
        child.kill('SIGKILL');
      }, config.syncTimeoutMs);
      child.on('message', (message: ChildMessage | Call) => {
        if (message.t === 'call') {
          if (host) void host.handle(message).then((reply) => child.connected && child.send(reply));
        } else if (message.t === 'started') runId = message.runId;
        else if (message.t === 'done') summary = message.summary;
      });
      child.once('exit', (code, signal) => {
        if (failedToStart) return;
        clearTimeout(timer);
        void (async () => {
          await host?.release();
          if (summary) return resolve(summary);
          const timedOut = Date.now() - started >= config.syncTimeoutMs;
          const died =
            this.abandonReason ?? (timedOut ? `the run exceeded SYNC_TIMEOUT_SECONDS (${config.syncTimeoutMs / 1000} s) and was stopped` : `the sync process exited (${signal ?? `code ${code}`}) before finishing`);
          let error = `${died}; nothing of it was published`;
          // The child's lock died with it (or with its connection); close its run record here.
          const closedHere =
            runId === undefined ||
            (await finishRun(db, runId, { status: 'failed', error }).catch((recordError: Error) => {
              // Often why the child died: Postgres is away. The record stays 'running' until the job's next run closes it as abandoned.
              log.error('sync.record_failed', { job: job.view, run_id: runId, error: recordError, message: `run ${runId} could not be recorded as failed; the next run of ${job.view} closes it as abandoned` });
              return true;
            }));
          // Already closed: the child published (then died reclaiming older versions, say) or recorded its failure
          // before it died. Its record says what happened, not this guess.
          const record = closedHere ? undefined : await getRun(db, runId!).catch(() => undefined);
          if (record?.status === 'succeeded') {
            log.warn('sync.run', { job: job.view, run_id: runId, status: 'succeeded', version: record.version, error: `${died} after publishing` });
            return resolve({
              runId: runId!, job: job.view, status: 'succeeded', version: record.version, rowsRead: record.rowsRead ?? 0, rowsWritten: record.rowsWritten ?? 0,
              watermark: record.watermark?.toISOString() ?? null, error: null, durationMs: Date.now() - started, details: { ...record.details, process_exited_after_publish: died },
            });
          }
          if (record?.error) error = `${died}; the run was already closed as ${record.status}: ${record.error}`;
          log.error('sync.run', { job: job.view, run_id: runId, status: 'failed', error });
          resolve({ runId: runId ?? -1, job: job.view, status: 'failed', version: null, rowsRead: 0, rowsWritten: 0, watermark: null, error, durationMs: Date.now() - started, details: {} });
        })();
      });
      // A child that failed to start has no channel; its 'error' settles the run.
      if (child.pid !== undefined && child.connected) child.send({ t: 'run', job, trigger, options, config, remote: config.embedded ? { db: db.kind, hot: hot.kind } : undefined } satisfies ChildRequest);
    });
  }
}
