// A sync process that cannot be started fails its run, naming the cause, and
// leaves the server serving; the next run works. The failure is real: this
// test process's own file-descriptor limit (RLIMIT_NOFILE) is lowered to its
// next free descriptor, so the fork's IPC socket pair cannot be made (EMFILE),
// as on a machine out of descriptors; a helper started beforehand lifts it.
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { closeSync, openSync, readFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServer, type RunningServer } from '../../src/server.js';
import { serverConfig, tempDir, writeJobs, writeParquet } from '../support/fixtures.js';

describe('a sync process that cannot be started', () => {
  let server: RunningServer;

  beforeAll(async () => {
    const dir = await tempDir('fork-failure');
    const source = await writeParquet(path.join(dir, 'forked.parquet'), `SELECT 'k' || i AS id, TIMESTAMP '2026-01-01' AS t, i * 1.0 AS score FROM range(1, 11) t(i)`);
    await writeJobs(dir, [{ view: 'forked', source, entity_key: 'id', event_time: 't', features: { score: { type: 'double' } } }]);
    // The embedded mode: PGlite and the memory tier live in this process, so the run needs no new descriptor
    // before its fork.
    server = await startServer(serverConfig({ SYNC_JOBS_DIR: dir }));
    expect(await server.runner.run('forked', 'manual')).toMatchObject({ status: 'succeeded', version: 1 });
  }, 120_000);

  afterAll(async () => {
    await server?.close();
  });

  it('fails the run naming the cause (EMFILE), keeps serving the last version, and the next run publishes', async () => {
    const limits = /^Max open files\s+(\d+)\s+(\d+)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
    expect(limits).not.toBeNull();
    const [soft, hard] = [limits![1]!, limits![2]!];
    // Started first: once the limit is down, this process cannot start anything, the helper included.
    const restorer = spawn('sh', ['-c', `read go; exec prlimit --pid ${process.pid} --nofile=${soft}:${hard}`], { stdio: ['pipe', 'ignore', 'ignore'] });
    const restored = once(restorer, 'exit');
    let summary: Awaited<ReturnType<RunningServer['runner']['run']>>;
    try {
      // The next descriptor this process would get; prlimit's own pipes are closed again by the time it returns.
      const next = openSync('/dev/null', 'r');
      closeSync(next);
      execFileSync('prlimit', ['--pid', String(process.pid), `--nofile=${next}:${hard}`]);
      summary = await server.runner.run('forked', 'manual');
    } finally {
      restorer.stdin!.end('go\n');
      await restored;
    }
    expect(summary).toMatchObject({ status: 'failed', version: null });
    expect(summary.error).toMatch(/^the sync process could not be started \(EMFILE\); is the machine out of processes, file descriptors or memory\? Nothing was published$/);
    // The limit is back; the server answers from the version it had, and the job runs again.
    closeSync(openSync('/dev/null', 'r'));
    const response = await fetch(`http://127.0.0.1:${server.port}/features/v1/k3?view=forked`);
    expect(response.status).toBe(200);
    expect(response.headers.get('Feature-Version')).toBe('1');
    expect(await server.runner.run('forked', 'manual')).toMatchObject({ status: 'succeeded', version: 2 });
    expect(server.runner.isRunning('forked')).toBe(false);
  });
});
