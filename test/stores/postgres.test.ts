// The Postgres store's own contract, against a real server.
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { PostgresDatabase } from '../../src/stores/postgres.js';
import { freshDatabase } from '../support/db.js';

describe('PostgresDatabase', () => {
  let database: { url: string; drop(): Promise<void> };
  let db: PostgresDatabase;

  beforeAll(async () => {
    database = await freshDatabase(inject('databaseUrl'), 'postgres_store');
    // One connection, so the query after a COPY runs on the COPY's connection.
    db = new PostgresDatabase({ url: database.url, maxConnections: 1, statementTimeoutMs: 1234 });
  });

  afterAll(async () => {
    await db?.close();
    await database?.drop();
  });

  it('a COPY runs without the statement bound, and its connection goes back to the pool with the bound restored', async () => {
    await db.query('CREATE TABLE t (id text, n int)');
    expect(await db.query('SHOW statement_timeout')).toEqual([{ statement_timeout: '1234ms' }]);
    const copy = await db.openCopy('t', ['id', 'n']);
    expect(await copy.write('a,1\nb,2\n').then(() => copy.finish())).toBe(2);
    expect(await db.query('SHOW statement_timeout')).toEqual([{ statement_timeout: '1234ms' }]);
    await expect(db.query('SELECT pg_sleep(2)')).rejects.toThrow(/statement timeout/);
  });

  it('a COPY that waits for Postgres again and again leaves no listeners behind', async () => {
    // Postgres stops reading for a second at the first row, so the socket's buffers fill and then every write waits
    // for a drain; each wait once left an 'error' listener on the stream (Node warned past ten, in a 20M-row sync).
    await db.query(`CREATE TABLE slow (id text, n int);
      CREATE FUNCTION slow_first() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN IF NEW.n = 0 THEN PERFORM pg_sleep(1); END IF; RETURN NEW; END $$;
      CREATE TRIGGER slow_first BEFORE INSERT ON slow FOR EACH ROW EXECUTE FUNCTION slow_first()`);
    const warnings: string[] = [];
    const onWarning = (warning: Error) => warnings.push(`${warning.name}: ${warning.message}`);
    process.on('warning', onWarning);
    try {
      const copy = await db.openCopy('slow', ['id', 'n']);
      // 64 rows of 1 KiB a write, 25 MiB in all: far more than the sockets' buffers hold.
      const chunk = (first: number) => Array.from({ length: 64 }, (_, i) => `${'x'.repeat(1016)},${first + i}\n`).join('');
      for (let i = 0; i < 400; i++) await copy.write(chunk(i * 64));
      expect(await copy.finish()).toBe(400 * 64);
      // Node warns on a later turn of the event loop.
      await new Promise((resolve) => setTimeout(resolve, 50));
    } finally {
      process.off('warning', onWarning);
    }
    expect(warnings.filter((w) => w.startsWith('MaxListenersExceededWarning'))).toEqual([]);
  });
});
