// Owns the `pg` implementation of Database: a connection pool for reads and run
// records, dedicated connections for COPY and for advisory locks.
import { once } from 'node:events';
import pg from 'pg';
import { from as copyFrom } from 'pg-copy-streams';
import { withDeadline } from '../deadline.js';
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
          // once('drain') rejects on an error (the raw one; the described one is in `failure`); a stream closed
          // without one ends the wait too. The listeners go with the wait: one left per full buffer piled up.
          const waited = new AbortController();
          await Promise.race([once(stream, 'drain', { signal: waited.signal }), once(stream, 'close', { signal: waited.signal })])
            .catch(() => undefined)
            .finally(() => waited.abort());
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
        // The pool's statement bound applies again to whatever uses this connection next.
        await client.query('RESET statement_timeout').then(
          () => client.release(),
          (error: Error) => client.release(error),
        );
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

/** Why a lookup did not read from a replica: it has not replayed the version, it is down, or its read failed. */
export type ReplicaSkipReason = 'behind' | 'down' | 'failed';

export interface ReplicaStatus {
  readonly name: string;
  /** ok: used for every version it has replayed; down: skipped until a poll of it succeeds. */
  readonly status: 'ok' | 'down';
  /** The last WAL position it had replayed when polled. */
  readonly replayLsn: string | null;
  readonly error?: string;
}

export interface ReplicaSetOptions {
  readonly urls: readonly string[];
  /** The primary, to check that each replica is a copy of it. */
  readonly primary: Queryable;
  /** How often each replica's replayed switches (and health) are read. */
  readonly pollMs: number;
  /** Bound on a connection wait or a query's answer on a replica, so a frozen one leaves time for the primary. */
  readonly clientTimeoutMs: number;
  readonly statementTimeoutMs?: number;
  readonly maxConnections?: number;
  readonly onRead?: (replica: string) => void;
  readonly onSkip?: (replica: string, reason: ReplicaSkipReason) => void;
}

interface Replica {
  readonly name: string;
  readonly pool: pg.Pool;
  /**
   * Per view, the newest switch (generation) this replica has replayed; null
   * while it is down or not yet checked. Replay only moves forward, so a
   * polled value is a lower bound until the replica fails.
   */
  generations: Map<string, number> | null;
  replayLsn: string | null;
  error: string | undefined;
  polling: boolean;
}

/** A read a replica may refuse without being unhealthy: the table was dropped by replay, or replay cancelled the query. */
const REPLICA_BENIGN_CODES = new Set(['42P01', '40001']);

function replicaName(url: string, index: number, taken: Set<string>): string {
  let name: string;
  try {
    const parsed = new URL(url);
    name = `${parsed.hostname}:${parsed.port || '5432'}`;
  } catch {
    name = `replica${index + 1}`;
  }
  // Names label metrics; connection strings (with passwords) never do.
  if (taken.has(name)) name = `${name}#${index + 1}`;
  taken.add(name);
  return name;
}

/**
 * Read routing over streaming replicas of the primary. A lookup of a version
 * goes to a replica only if that replica has replayed the switch that made the
 * version current (its `featurestore.views` row shows that generation or a
 * later one): the switch commits after the version's table is complete, and
 * replay is in commit order, so such a replica holds all of the version. A
 * replica that has not, that is down or that fails is skipped; the caller
 * reads the primary when no replica answers.
 */
export class ReplicaSet {
  private readonly replicas: Replica[];
  private next = 0;
  private timer: NodeJS.Timeout | undefined;
  private systemId: Promise<string> | undefined;

  constructor(private readonly options: ReplicaSetOptions) {
    const taken = new Set<string>();
    this.replicas = options.urls.map((url, i) => {
      const pool = new pg.Pool({
        connectionString: url,
        max: options.maxConnections ?? 10,
        application_name: 'feature-serving-api',
        statement_timeout: options.statementTimeoutMs ?? 60_000,
        connectionTimeoutMillis: options.clientTimeoutMs,
        query_timeout: options.clientTimeoutMs,
        idleTimeoutMillis: 30_000,
        options: '-c TimeZone=UTC',
        types: typeParsers,
      });
      pool.on('error', () => undefined);
      return { name: replicaName(url, i, taken), pool, generations: null, replayLsn: null, error: 'not checked yet', polling: false };
    });
  }

  get names(): string[] {
    return this.replicas.map((r) => r.name);
  }

  status(): ReplicaStatus[] {
    return this.replicas.map((r) => ({ name: r.name, status: r.generations ? 'ok' : 'down', replayLsn: r.replayLsn, ...(r.error ? { error: r.error } : {}) }));
  }

  /** Checks every replica now and then every `pollMs`. */
  async start(): Promise<void> {
    await this.pollAll();
    this.timer = setInterval(() => void this.pollAll(), this.options.pollMs);
    this.timer.unref();
  }

  pollAll(): Promise<void> {
    return Promise.all(this.replicas.map((r) => this.poll(r))).then(() => undefined);
  }

  private async poll(replica: Replica): Promise<void> {
    if (replica.polling) return;
    replica.polling = true;
    try {
      this.systemId ??= this.options.primary
        .query<{ id: string }>('SELECT system_identifier::text AS id FROM pg_control_system()')
        .then(([row]) => row!.id)
        .catch((error: Error) => {
          this.systemId = undefined;
          throw new Error(`cannot read the primary's system identifier to check replicas against: ${error.message}`);
        });
      const primaryId = await this.systemId;
      const { rows } = await replica.pool.query<{ id: string; standby: boolean; lsn: string | null; generations: Record<string, number> | null }>(
        `SELECT (SELECT system_identifier::text FROM pg_control_system()) AS id, pg_is_in_recovery() AS standby, pg_last_wal_replay_lsn()::text AS lsn,
                (SELECT json_object_agg(view, generation) FROM featurestore.views) AS generations`,
      );
      const row = rows[0]!;
      replica.replayLsn = row.lsn;
      // A server that is not a standby of this primary could hold other data under the same names.
      if (row.id !== primaryId) throw new Error(`it is not a copy of the primary (system identifier ${row.id}, the primary's is ${primaryId}); check DATABASE_REPLICA_URLS`);
      if (!row.standby) throw new Error('it is not in recovery (promoted or not a standby), so it no longer follows the primary');
      replica.generations = new Map(Object.entries(row.generations ?? {}).map(([view, generation]) => [view, Number(generation)]));
      replica.error = undefined;
    } catch (error) {
      const message = (error as { code?: string }).code === '42P01' ? 'it has not replayed the featurestore schema yet' : (error as Error).message;
      replica.generations = null;
      replica.error = message;
    } finally {
      replica.polling = false;
    }
  }

  /**
   * Runs a read of one version (`generation` of `view`) on a replica that has
   * replayed it, trying each such replica in turn; undefined when none could
   * answer, and the caller reads the primary. All the replicas tried share one
   * `clientTimeoutMs`: however many of them hang, the primary is asked while
   * the lookup still has the rest of its budget.
   */
  async query<R>(view: string, generation: number, text: string, params: readonly unknown[], options?: QueryOptions): Promise<R[] | undefined> {
    const count = this.replicas.length;
    const start = this.next++ % count;
    const { clientTimeoutMs } = this.options;
    const deadline = performance.now() + clientTimeoutMs;
    for (let i = 0; i < count; i++) {
      const replica = this.replicas[(start + i) % count]!;
      const generations = replica.generations;
      if (!generations) {
        this.options.onSkip?.(replica.name, 'down');
        continue;
      }
      if ((generations.get(view) ?? 0) < generation) {
        this.options.onSkip?.(replica.name, 'behind');
        continue;
      }
      const left = deadline - performance.now();
      // The replicas' share of this lookup is spent (one that hung took it): the primary answers.
      if (left <= 0) break;
      // Given only what an earlier replica left of the share (1 ms of slack for getting here), running out of it says
      // nothing about this one: it is not marked down for that, and its polls still judge it.
      const partial = left < clientTimeoutMs - 1;
      let shareSpent = false;
      try {
        // The pool's own timeouts end the query later.
        const read = runQuery<R>(replica.pool, text, params, options);
        const rows = await withDeadline(read, left, () => {
          shareSpent = true;
          return new Error(`it did not answer a read within ${clientTimeoutMs} ms`);
        });
        this.options.onRead?.(replica.name);
        return rows;
      } catch (error) {
        this.options.onSkip?.(replica.name, 'failed');
        if (shareSpent && partial) break;
        if (REPLICA_BENIGN_CODES.has((error as { code?: string }).code ?? '')) continue;
        // Unused until a poll finds it healthy again (it may come back as another server, so what it had replayed is forgotten).
        if (replica.generations === generations) {
          replica.generations = null;
          replica.error = (error as Error).message;
        }
      }
    }
    return undefined;
  }

  async close(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    await Promise.allSettled(this.replicas.map((r) => r.pool.end()));
  }
}

export interface NotificationListenerOptions {
  readonly url: string;
  readonly channel: string;
  readonly onNotification: (payload: string) => void;
  /** Called each time LISTEN is in place, after start and after every reconnect: notifications sent meanwhile were missed. */
  readonly onListening: () => void;
  readonly onLost?: (error: Error) => void;
  readonly connectTimeoutMs?: number;
  /**
   * How often the idle connection is checked with a query (default 10 s), and how long that may take (default 5 s):
   * a connection that dies without a word (a NAT or balancer dropping idle flows, a host gone) otherwise looks
   * alive for hours, while notifications silently stop.
   */
  readonly heartbeatMs?: number;
  readonly heartbeatTimeoutMs?: number;
}

/**
 * A dedicated connection that LISTENs on one channel of the primary, and
 * reconnects (and LISTENs again) with backoff up to 5 s whenever it is lost,
 * including when it stops answering the periodic check.
 */
export class NotificationListener {
  private client: pg.Client | undefined;
  private closed = false;
  private retryMs = 100;
  private retryTimer: NodeJS.Timeout | undefined;
  /** Checks the live connection (see heartbeatMs). */
  private heartbeat: NodeJS.Timeout | undefined;

  constructor(private readonly options: NotificationListenerOptions) {}

  get listening(): boolean {
    return this.client !== undefined;
  }

  start(): void {
    void this.connect();
  }

  private async connect(): Promise<void> {
    if (this.closed) return;
    const client = new pg.Client({ connectionString: this.options.url, application_name: 'feature-serving-api listener', keepAlive: true, connectionTimeoutMillis: this.options.connectTimeoutMs ?? 5_000 });
    let lost = false;
    const onLost = (error: Error) => {
      if (lost) return;
      lost = true;
      if (this.client === client) {
        this.client = undefined;
        clearInterval(this.heartbeat);
      }
      void client.end().catch(() => undefined);
      if (this.closed) return;
      this.options.onLost?.(error);
      this.retryTimer = setTimeout(() => void this.connect(), this.retryMs);
      this.retryTimer.unref();
      this.retryMs = Math.min(this.retryMs * 2, 5_000);
    };
    client.on('error', onLost);
    client.on('end', () => onLost(new Error('the listening connection ended')));
    client.on('notification', (message) => {
      if (message.channel === this.options.channel) this.options.onNotification(message.payload ?? '');
    });
    try {
      await client.connect();
      await client.query(`LISTEN ${quoteIdent(this.options.channel)}`);
    } catch (error) {
      onLost(error as Error);
      return;
    }
    if (lost) return;
    if (this.closed) {
      await client.end().catch(() => undefined);
      return;
    }
    this.client = client;
    this.retryMs = 100;
    const checkTimeoutMs = this.options.heartbeatTimeoutMs ?? 5_000;
    let checking = false;
    this.heartbeat = setInterval(() => {
      if (checking) return;
      checking = true;
      const check = client.query('SELECT 1');
      withDeadline(check, checkTimeoutMs, () => new Error(`the listening connection did not answer a check within ${checkTimeoutMs} ms`))
        .then(
          () => undefined,
          (error: Error) => onLost(error),
        )
        .finally(() => (checking = false));
    }, this.options.heartbeatMs ?? 10_000);
    this.heartbeat.unref();
    this.options.onListening();
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.retryTimer);
    clearInterval(this.heartbeat);
    const client = this.client;
    this.client = undefined;
    await client?.end().catch(() => undefined);
  }
}
