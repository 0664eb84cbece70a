// Owns the `pg` implementation of Database: a connection pool for reads and run
// records, dedicated connections for COPY and for advisory locks.
import { once } from 'node:events';
import pg from 'pg';
import { from as copyFrom } from 'pg-copy-streams';
import type { CopyStream, Database, LockResult, QueryOptions, Queryable } from './database.js';
import { quoteIdent } from './database.js';

// int8 as a JS number: the sync refuses integers outside ±2^53, so this is exact.
const INT8_OID = 20;
const parseInt8 = (value: string) => Number(value);
const typeParsers = {
  getTypeParser: ((oid: number, format?: string) =>
    oid === INT8_OID ? parseInt8 : pg.types.getTypeParser(oid, format as 'text')) as typeof pg.types.getTypeParser,
};

export interface PostgresOptions {
  readonly url: string;
  readonly maxConnections?: number;
  readonly applicationName?: string;
  /** Upper bound for any one statement, so no query runs unbounded. */
  readonly statementTimeoutMs?: number;
  /** Upper bound for getting a connection and for a query's answer, seen from this side (a frozen server never answers). */
  readonly clientTimeoutMs?: number;
}

/**
 * A lost connection (a socket error, not an SQL error) says that it was Postgres that went away; the code stays, so
 * callers still see it as transient. SQL errors pass unchanged.
 */
function connectionLost(error: unknown): unknown {
  const e = error as { code?: string; message?: string; severity?: string };
  if (e?.severity !== undefined || typeof e?.message !== 'string') return error;
  if (!/^E[A-Z]+$/.test(e.code ?? '') && !/Connection terminated|timeout/i.test(e.message)) return error;
  return Object.assign(new Error(`Postgres connection lost or timed out: ${e.message}`, { cause: error }), { code: e.code });
}

async function runQuery<R>(client: pg.Pool | pg.PoolClient, text: string, params: readonly unknown[] | undefined, options: QueryOptions | undefined): Promise<R[]> {
  const config: pg.QueryConfig = { text, values: params as unknown[] | undefined };
  if (options?.name) config.name = options.name;
  if (options?.rowMode) (config as pg.QueryArrayConfig).rowMode = 'array';
  try {
    const result = await client.query(config);
    return result.rows as R[];
  } catch (error) {
    throw connectionLost(error);
  }
}

export class PostgresDatabase implements Database {
  readonly kind = 'postgres' as const;
  readonly pool: pg.Pool;

  constructor(options: PostgresOptions) {
    this.pool = new pg.Pool({
      connectionString: options.url,
      max: options.maxConnections ?? 10,
      application_name: options.applicationName ?? 'feature-serving-api',
      statement_timeout: options.statementTimeoutMs ?? 60_000,
      connectionTimeoutMillis: options.clientTimeoutMs ?? 5_000,
      ...(options.clientTimeoutMs ? { query_timeout: options.clientTimeoutMs } : {}),
      idleTimeoutMillis: 30_000,
      options: '-c TimeZone=UTC',
      types: typeParsers,
    });
    // An idle client that loses its server must not crash the process; the next query reports it.
    this.pool.on('error', () => undefined);
  }

  query<R = Record<string, unknown>>(text: string, params?: readonly unknown[], options?: QueryOptions): Promise<R[]> {
    return runQuery<R>(this.pool, text, params, options);
  }

  async transaction<T>(fn: (tx: Queryable) => Promise<T>): Promise<T> {
    const client = await this.pool.connect();
    try {
      await client.query('BEGIN');
      const value = await fn({ query: (text, params, options) => runQuery(client, text, params, options) });
      await client.query('COMMIT');
      return value;
    } catch (error) {
      await client.query('ROLLBACK').catch(() => undefined);
      throw error;
    } finally {
      client.release();
    }
  }

  async openCopy(table: string, columns: readonly string[]): Promise<CopyStream> {
    const client = await this.pool.connect();
    // COPY can legitimately run for minutes; the pool's statement bound is for lookups.
    await client.query('SET statement_timeout = 0');
    const stream = client.query(copyFrom(`COPY ${table} (${columns.map(quoteIdent).join(', ')}) FROM STDIN WITH (FORMAT csv)`));
    let failure: Error | undefined;
    // Failures say where they happened; the original code stays, so connection losses are still retried.
    const fail = (error: Error) => (failure ??= Object.assign(new Error(`Postgres failed during COPY into ${table}: ${error.message}`, { cause: error }), { code: (error as { code?: string }).code }));
    stream.on('error', fail);
    // A server lost mid-COPY is reported on the client (EPIPE, reset); unheard, that event would kill the process
    // instead of failing the run with the reason. The stream is ended with it, so a write waiting to drain wakes.
    const onClientError = (error: Error) => stream.destroy(fail(error));
    client.on('error', onClientError);
    let released = false;
    const release = (error?: Error) => {
      if (released) return;
      released = true;
      client.off('error', onClientError);
      // A connection whose COPY broke is not returned to the pool.
      client.release(error ?? true);
    };
    return {
      async write(csv) {
        if (failure) throw failure;
        if (!stream.write(csv)) {
          // once() rejects with the raw error; the described one is in `failure`.
          await Promise.race([once(stream, 'drain'), once(stream, 'error')]).catch(() => undefined);
          if (failure) throw failure;
        }
      },
      async finish() {
        if (failure) throw failure;
        stream.end();
        try {
          await once(stream, 'finish');
        } catch (error) {
          release(error as Error);
          throw fail(error as Error);
        }
        if (failure) {
          release(failure);
          throw failure;
        }
        released = true;
        client.off('error', onClientError);
        client.release();
        return Number(stream.rowCount);
      },
      async abort(reason) {
        stream.destroy(reason);
        release(reason);
      },
    };
  }

  async withAdvisoryLock<T>(key: string, fn: () => Promise<T>): Promise<LockResult<T>> {
    const client = await this.pool.connect();
    let broken: Error | undefined;
    // The lock's connection sits idle while fn runs; if the server goes, its error must not kill the process:
    // fn's own queries fail and say why, and the lost session has released the lock.
    const onClientError = (error: Error) => {
      broken ??= error;
    };
    client.on('error', onClientError);
    try {
      const [row] = (await client.query('SELECT pg_try_advisory_lock(hashtextextended($1, 0)) AS ok', [key])).rows as { ok: boolean }[];
      if (!row?.ok) return { acquired: false };
      try {
        return { acquired: true, value: await fn() };
      } finally {
        await client.query('SELECT pg_advisory_unlock(hashtextextended($1, 0))', [key]).catch((error: Error) => {
          broken = error;
        });
      }
    } finally {
      // If unlocking failed, dropping the connection is what releases the lock.
      client.off('error', onClientError);
      client.release(broken ?? undefined);
    }
  }

  async ping(): Promise<void> {
    await this.pool.query('SELECT 1');
  }

  async close(): Promise<void> {
    await this.pool.end();
  }
}
