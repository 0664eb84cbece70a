// Owns the schedule: each job's cron expression (UTC) triggers a run through
// the runner. A tick that finds its job still running is recorded as skipped by
// the runner, never queued, so a slow job cannot pile up runs.
//
// Every process may run a scheduler (each server replica does): each run
// carries its tick's scheduled time, and the engine lets one run per tick
// happen across all of them (the job's advisory lock, then the tick checked
// under it); every other process records a skip. The tick is the scheduled
// time, not the time the timer fired, so a process whose timer fires late
// still names the same tick.
import { Cron } from 'croner';
import type { JobDefinition } from '../jobs/definition.js';
import type { Logger } from '../observability/log.js';
import type { SyncRunner } from './runner.js';

/** The scheduled time of the tick that fired at `firedAt`: the latest time the pattern matches, at or before it. */
export function tickOf(cron: Cron, firedAt: Date): Date {
  // croner fires at or after the scheduled second, never before it.
  const [scheduled] = cron.previousRuns(1, new Date(firedAt.getTime() + 1));
  return scheduled ?? firedAt;
}

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
        new Cron(job.schedule, { timezone: 'UTC' }, (self) => {
          const scheduledFor = tickOf(self, new Date()).toISOString();
          void this.runner.run(job.view, 'schedule', { scheduledFor }).catch((error: Error) => this.log.error('sync.schedule_failed', { job: job.view, scheduled_for: scheduledFor, error }));
        }),
      );
    }
  }

  stop(): void {
    for (const cron of this.crons) cron.stop();
    this.crons.length = 0;
  }
}
