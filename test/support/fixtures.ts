// Test data and configuration: Parquet files written by DuckDB, job
// definitions in a temporary directory, and a server config for real stores.
import { mkdtemp, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { DuckDBInstance } from '@duckdb/node-api';
import { loadConfig, type Config } from '../../src/config/index.js';

export async function tempDir(prefix: string): Promise<string> {
  return mkdtemp(path.join(os.tmpdir(), `fs-${prefix}-`));
}

/** Runs statements in a throwaway DuckDB (with TimeZone UTC) and returns the last one's rows as JSON-able objects. */
export async function duck<T = Record<string, unknown>>(...statements: string[]): Promise<T[]> {
  const instance = await DuckDBInstance.create(':memory:');
  const conn = await instance.connect();
  try {
    await conn.run(`SET TimeZone = 'UTC'`);
    let rows: T[] = [];
    for (const sql of statements) rows = (await conn.runAndReadAll(sql)).getRowObjectsJS() as T[];
    return rows;
  } finally {
    conn.closeSync();
    instance.closeSync();
  }
}

/** Writes the rows of `selectSql` to a Parquet file. */
export async function writeParquet(file: string, selectSql: string): Promise<string> {
  await duck(`COPY (${selectSql}) TO '${file.replaceAll("'", "''")}' (FORMAT parquet)`);
  return file;
}

export interface JobYaml {
  view: string;
  source: string;
  transform?: string;
  entity_key: string;
  event_time: string;
  features: Record<string, { type: string }>;
  schedule?: string;
  freshness?: string;
}

/** Writes job definitions as YAML (JSON is valid YAML) into `dir`. */
export async function writeJobs(dir: string, jobs: JobYaml[]): Promise<string> {
  for (const job of jobs) {
    await writeFile(path.join(dir, `${job.view}.yaml`), JSON.stringify({ schedule: '0 0 * * *', freshness: '1d', ...job }, null, 2));
  }
  return dir;
}

export function serverConfig(env: Record<string, string | undefined>): Config {
  // Open access unless a test sets AUTH_MODE=keys: the key checks have their own tests.
  return loadConfig({ PORT: '0', HOST: '127.0.0.1', SCHEDULER_ENABLED: 'false', SYNC_ON_START: 'false', LOG_LEVEL: 'silent', CATALOG_REFRESH_MS: '200', AUTH_MODE: 'open', ...env });
}
