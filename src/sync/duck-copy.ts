// Owns moving a DuckDB query's rows into a Postgres COPY: DuckDB's own CSV
// writer formats them (in parallel, in C++) into a named pipe, and this side
// only forwards the text, so no row is touched in JavaScript. Nothing reaches
// the table unless DuckDB finished without error and the caller finishes the
// COPY; on any failure the COPY is left for the caller to abort.
import { execFile } from 'node:child_process';
import { closeSync, constants, openSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import type { DuckDBConnection } from '@duckdb/node-api';
import type { CopyStream } from '../stores/database.js';
import { sqlString } from './plan.js';

const run = promisify(execFile);

/**
 * Runs `sql` in DuckDB and writes its rows as CSV into `copy`; returns how
 * many rows DuckDB wrote. Throws DuckDB's error or the COPY's, whichever came
 * first; either way the other side is stopped before this returns.
 */
export async function pipeCsv(conn: DuckDBConnection, sql: string, copy: CopyStream): Promise<number> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'featurestore-copy-'));
  const fifo = path.join(dir, 'rows.csv');
  let keepOpen: number | undefined;
  try {
    await run('mkfifo', ['-m', '600', fifo]);
    // Read end first, without blocking; then a write end of our own, so that the
    // reader sees no end of data before DuckDB has opened the pipe, and does see
    // it once DuckDB is done (or failed without ever opening it) and ours is closed.
    const readFd = openSync(fifo, constants.O_RDONLY | constants.O_NONBLOCK);
    keepOpen = openSync(fifo, constants.O_WRONLY | constants.O_NONBLOCK);
    // A socket, not a file stream: it drains everything the pipe holds on each
    // turn of the event loop, so a busy loop (the hot-tier load) does not
    // throttle DuckDB to one pipe-buffer (64 KiB) per turn.
    const reader = new net.Socket({ fd: readFd, readable: true, writable: false });
    reader.setEncoding('utf8');
    let copyError: unknown;
    const consuming = (async () => {
      // The utf8 decoder carries a character split across two reads over to the next one.
      for await (const text of reader) await copy.write(text as string);
    })().catch((error: unknown) => {
      // Leaving the loop closed the pipe, so DuckDB fails on its next write and stops.
      copyError = error;
    });
    let written: number | undefined;
    let duckError: unknown;
    try {
      const result = await conn.runAndReadAll(`COPY (${sql}) TO ${sqlString(fifo)} (FORMAT csv, HEADER false, USE_TMP_FILE false)`);
      written = Number(result.getRows()[0]?.[0] ?? 0);
    } catch (error) {
      duckError = error;
    }
    closeSync(keepOpen);
    keepOpen = undefined;
    await consuming;
    // A COPY that failed first is the cause; DuckDB then only failed to write into the closed pipe.
    if (copyError !== undefined) throw copyError;
    if (duckError !== undefined) throw duckError;
    return written!;
  } finally {
    if (keepOpen !== undefined) closeSync(keepOpen);
    await rm(dir, { recursive: true, force: true });
  }
}
