// Owns the interface every Postgres flavour implements (a `pg` server, the
// embedded PGlite, or a proxy to either from a sync child process), so the sync
// engine and the readers never know which one they talk to.

export interface QueryOptions {
  /** Prepared-statement name: the server plans the text once per connection. */
  readonly name?: string;
  /** Rows as arrays in select-list order instead of objects. */
  readonly rowMode?: 'array';
}

export interface Queryable {
  query<R = Record<string, unknown>>(text: string, params?: readonly unknown[], options?: QueryOptions): Promise<R[]>;
}

/** A bulk load into one table, fed CSV text in order. */
export interface CopyStream {
  write(csv: string): Promise<void>;
  /** Completes the load and returns the rows the server stored. */
  finish(): Promise<number>;
  abort(reason: Error): Promise<void>;
}

export type LockResult<T> = { acquired: true; value: T } | { acquired: false };

export interface Database extends Queryable {
  readonly kind: 'postgres' | 'pglite';
  transaction<T>(fn: (tx: Queryable) => Promise<T>): Promise<T>;
  /** COPY … FROM STDIN (FORMAT csv) into `table (columns)`. */
  openCopy(table: string, columns: readonly string[]): Promise<CopyStream>;
  /**
   * Runs `fn` holding a session advisory lock on `key`, released when fn ends or
   * the holder's connection dies; `acquired: false` when another session holds it.
   */
  withAdvisoryLock<T>(key: string, fn: () => Promise<T>): Promise<LockResult<T>>;
  ping(): Promise<void>;
  close(): Promise<void>;
}

/** Quotes an identifier for SQL text; names are validated upstream, this is the second fence. */
export function quoteIdent(name: string): string {
  return `"${name.replaceAll('"', '""')}"`;
}

/**
 * Reads a query's rows in batches through a cursor (rows as arrays), so a
 * table of any size passes through bounded memory. It holds a transaction
 * open throughout: not for the embedded store, whose one session would hold
 * every other query back meanwhile.
 */
export async function forEachBatch(db: Database, sql: string, batchRows: number, fn: (rows: unknown[][]) => Promise<void>): Promise<void> {
  await db.transaction(async (tx) => {
    await tx.query(`DECLARE featurestore_batches NO SCROLL CURSOR FOR ${sql}`);
    for (;;) {
      const rows = await tx.query<unknown[]>(`FETCH ${Math.floor(batchRows)} FROM featurestore_batches`, [], { rowMode: 'array' });
      if (rows.length === 0) break;
      await fn(rows);
    }
  });
}
