// Owns moving a DuckDB query's rows into a Postgres COPY: DuckDB's own CSV
// writer formats them (in parallel, in C++) into a named pipe, and this side
// only forwards the text, so no row is touched in JavaScript. Nothing reaches
// the table unless DuckDB finished without error and the caller finishes the
// COPY; on any failure the COPY is left for the caller to abort.
import { execFile } from 'node:child_process';
import { constants, createReadStream } from 'node:fs';
import { mkdtemp, open, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import type { DuckDBConnection } from '@duckdb/node-api';
import type { CopyStream } from '../stores/database.js';
import { sqlString } from './plan.js';

const run = promisify(execFile);
/** Bytes read from the pipe per write to the COPY: large enough to keep both ends busy, small enough to bound memory. */
const PIPE_CHUNK_BYTES = 1 << 20;

/**
 * Runs `sql` in DuckDB and writes its rows as CSV into `copy`; returns how
 * many rows DuckDB wrote. Throws DuckDB's error or the COPY's, whichever came
 * first; either way the other side is stopped before this returns.
 */
export async function pipeCsv(conn: DuckDBConnection, sql: string, copy: CopyStream): Promise<number> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'featurestore-copy-'));
  const fifo = path.join(dir, 'rows.csv');
  try {
    await run('mkfifo', ['-m', '600', fifo]);
    // Opening the read end blocks (off the event loop) until DuckDB opens the write end.
    const reader = createReadStream(fifo, { encoding: 'utf8', highWaterMark: PIPE_CHUNK_BYTES });
    let readerDone = false;
    reader.once('close', () => (readerDone = true));
    let copyError: unknown;
    const consuming = (async () => {
      // The utf8 decoder carries a character split across two reads over to the next one.
      for await (const text of reader) await copy.write(text as string);
    })().catch((error: unknown) => {
      // Leaving the loop closed the pipe, so DuckDB fails on its next write and stops.
      copyError = error;
    });
    let written: number;
    try {
      const result = await conn.runAndReadAll(`COPY (${sql}) TO ${sqlString(fifo)} (FORMAT csv, HEADER false, USE_TMP_FILE false)`);
      written = Number(result.getRows()[0]?.[0] ?? 0);
    } catch (error) {
      // DuckDB may have failed before opening the pipe: open and close its write end so the reader sees the end.
      await releaseReader(fifo, () => readerDone);
      reader.destroy();
      await consuming;
      // A COPY that failed first is the cause; DuckDB then only failed to write into the closed pipe.
      throw copyError ?? error;
    }
    await consuming;
    if (copyError) throw copyError;
    return written;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** Unblocks a reader waiting in open() for a writer that will never come. */
async function releaseReader(fifo: string, done: () => boolean): Promise<void> {
  for (let attempt = 0; attempt < 200 && !done(); attempt++) {
    try {
      const handle = await open(fifo, constants.O_WRONLY | constants.O_NONBLOCK);
      await handle.close();
      return;
    } catch (error) {
      // ENXIO: no reader has the pipe open yet; its open() may still be queued.
      if ((error as NodeJS.ErrnoException).code !== 'ENXIO') return;
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
  }
}
