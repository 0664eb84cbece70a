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
});
