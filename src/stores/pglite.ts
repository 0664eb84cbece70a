// Owns the embedded Database: Postgres compiled to WASM (PGlite), in this
// process, for running without any server. One session, so locks are
// process-local and COPY goes through in-memory blobs of bounded size.
import { PGlite } from '@electric-sql/pglite';
import type { CopyStream, Database, LockResult, QueryOptions, Queryable } from './database.js';
import { quoteIdent } from './database.js';

/** COPY is sent in blobs of about this many bytes, so memory stays bounded. */
const COPY_BLOB_BYTES = 4 * 1024 * 1024;

type PgliteQueryable = Pick<PGlite, 'query'>;

async function runQuery<R>(target: PgliteQueryable, text: string, params: readonly unknown[] | undefined, options: QueryOptions | undefined): Promise<R[]> {
  const result = await target.query<R>(text, params as unknown[] | undefined, options?.rowMode ? { rowMode: 'array' } : undefined);
  return result.rows;
}

export class PgliteDatabase implements Database {
  readonly kind = 'pglite' as const;
  private readonly heldLocks = new Set<string>();

  private constructor(private readonly db: PGlite) {}

  /** `dataDir` keeps the data across restarts; without it the database lives in memory. */
  static async open(dataDir?: string): Promise<PgliteDatabase> {
    const db = await PGlite.create(dataDir ?? 'memory://');
    await db.exec(`SET TimeZone = 'UTC'`);
    return new PgliteDatabase(db);
  }

  query<R = Record<string, unknown>>(text: string, params?: readonly unknown[], options?: QueryOptions): Promise<R[]> {
    return runQuery<R>(this.db, text, params, options);
  }

  transaction<T>(fn: (tx: Queryable) => Promise<T>): Promise<T> {
    return this.db.transaction((tx) => fn({ query: (text, params, options) => runQuery(tx, text, params, options) }));
  }

  async openCopy(table: string, columns: readonly string[]): Promise<CopyStream> {
    const sql = `COPY ${table} (${columns.map(quoteIdent).join(', ')}) FROM '/dev/blob' WITH (FORMAT csv)`;
    let parts: string[] = [];
    let bytes = 0;
    let rows = 0;
    // Each write is scanned once, as it arrives: whether the text so far ends inside quotes, and where its last line
    // end outside quotes is (an offset into the pending text; -1 for none).
    let quoted = false;
    let cut = -1;
    const load = async (text: string) => {
      const result = await this.db.query(sql, [], { blob: new Blob([text]) });
      rows += result.affectedRows ?? 0;
    };
    // Writes are reads of a stream, cut anywhere (inside a record, inside a quoted field): each COPY takes the
    // text up to the last line end outside quotes, whole records, and the rest waits for the next one.
    const flushWhole = async () => {
      if (cut === -1) return; // one record longer than a blob: wait for its end
      const text = parts.join('');
      parts = cut + 1 < text.length ? [text.slice(cut + 1)] : [];
      bytes = text.length - (cut + 1);
      const whole = text.slice(0, cut + 1);
      // The rest holds no line end outside quotes (the cut was the last); its quote state is the text's.
      cut = -1;
      await load(whole);
    };
    return {
      async write(csv) {
        for (let i = 0; i < csv.length; i++) {
          const code = csv.charCodeAt(i);
          if (code === 34) quoted = !quoted; // '"'; an escaped quote ("") toggles twice
          else if (code === 10 && !quoted) cut = bytes + i;
        }
        parts.push(csv);
        bytes += csv.length;
        if (bytes >= COPY_BLOB_BYTES) await flushWhole();
      },
      async finish() {
        // The stream has ended, so what is left is whole records.
        const text = parts.join('');
        parts = [];
        bytes = 0;
        cut = -1;
        if (text) await load(text);
        return rows;
      },
      async abort() {
        parts = [];
        bytes = 0;
        cut = -1;
        quoted = false;
      },
    };
  }

  async withAdvisoryLock<T>(key: string, fn: () => Promise<T>): Promise<LockResult<T>> {
    // One session serves the whole process, so Postgres locks would always be
    // re-entrant here; the exclusion that matters is within this process.
    if (this.heldLocks.has(key)) return { acquired: false };
    this.heldLocks.add(key);
    try {
      return { acquired: true, value: await fn() };
    } finally {
      this.heldLocks.delete(key);
    }
  }

  async ping(): Promise<void> {
    await this.db.query('SELECT 1');
  }

  async close(): Promise<void> {
    await this.db.close();
  }
}
