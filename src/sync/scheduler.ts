// Owns the schedule: each job's cron expression (UTC) triggers a run through
// the runner. A tick that finds its job still running is recorded as skipped by
// the runner, never queued, so a slow job cannot pile up runs.
import { Cron } from 'croner';
import type { JobDefinition } from '../jobs/definition.js';
import type { Logger } from '../observability/log.js';
import type { SyncRunner } from './runner.js';

export class Scheduler {
  private readonly crons: Cron[] = [];

  constructor(
    private readonly jobs: readonly JobDefinition[],
    private readonly runner: SyncRunner,
    private readonly log: Logger,
  ) {}

  start(): void {
    for (const job of this.jobs) {
      this.crons.push(
        new Cron(job.schedule, { timezone: 'UTC', name: `sync:${job.view}` }, () => {
          void this.runner.run(job.view, 'schedule').catch((error: Error) => this.log.error('sync.schedule_failed', { job: job.view, error }));
        }),
      );
    }
  }

  stop(): void {
    for (const cron of this.crons) cron.stop();
    this.crons.length = 0;
  }
}
