// The embedded store's COPY: the sync hands it a CSV stream in reads cut
// anywhere, and it loads it in bounded blobs, each of whole records.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MemoryHotTier } from '../../src/stores/memory.js';
import { PgliteDatabase } from '../../src/stores/pglite.js';
import { StoreHost } from '../../src/sync/remote.js';

describe('embedded Postgres (PGlite) COPY', () => {
  let db: PgliteDatabase;

  beforeAll(async () => {
    db = await PgliteDatabase.open();
    await db.query(`CREATE TABLE copied (id text NOT NULL, t timestamptz NOT NULL, note text)`);
  });

  afterAll(async () => {
    await db?.close();
  });

  it('loads a stream of more than one blob cut mid-record and mid-quoted-field, every row whole', async () => {
    // About 12 MB: three blobs or more. Every tenth note is quoted, with a comma, an escaped quote and a line end.
    const rows = 150_000;
    const record = (i: number) => `k${i},2026-01-01 00:00:${String(i % 60).padStart(2, '0')}+00,${i % 10 === 0 ? `"a, ""quoted""\nnote ${i} ${'x'.repeat(40)}"` : `plain note ${i} ${'y'.repeat(40)}`}\n`;
    let csv = '';
    for (let i = 0; i < rows; i++) csv += record(i);
    const copy = await db.openCopy('copied', ['id', 't', 'note']);
    // Reads of odd sizes, as a socket gives them: boundaries fall inside records and inside quoted fields.
    for (let at = 0, size = 7; at < csv.length; at += size, size = (size * 31 + 17) % 65_521 + 1) await copy.write(csv.slice(at, at + size));
    expect(await copy.finish()).toBe(rows);
    const [counts] = await db.query<{ n: number; quoted: number }>(`SELECT count(*)::int AS n, count(*) FILTER (WHERE note LIKE 'a, "quoted"' || chr(10) || 'note %')::int AS quoted FROM copied`);
    expect(counts).toEqual({ n: rows, quoted: rows / 10 });
    const [last] = await db.query<{ id: string; note: string }>(`SELECT id, note FROM copied WHERE id = 'k149990'`);
    expect(last).toEqual({ id: 'k149990', note: `a, "quoted"\nnote 149990 ${'x'.repeat(40)}` });
  });

  it('loads a record longer than a blob whole, between ordinary ones, from small reads', async () => {
    await db.query('TRUNCATE copied');
    // A 6 MB quoted note with line ends inside: no cut may fall in it, whatever the reads.
    const big = `"${`${'z'.repeat(1_000_000)}\n`.repeat(6)}end"`;
    const csv = `a1,2026-01-01 00:00:00+00,first\nbig,2026-01-01 00:00:00+00,${big}\na2,2026-01-01 00:00:00+00,"last, quoted"\n`;
    const copy = await db.openCopy('copied', ['id', 't', 'note']);
    for (let at = 0; at < csv.length; at += 4096) await copy.write(csv.slice(at, at + 4096));
    expect(await copy.finish()).toBe(3);
    const loaded = await db.query<{ id: string; length: number; tail: string }>(`SELECT id, length(note) AS length, right(note, 3) AS tail FROM copied ORDER BY id`);
    expect(loaded).toEqual([
      { id: 'a1', length: 5, tail: 'rst' },
      { id: 'a2', length: 12, tail: 'ted' },
      { id: 'big', length: 6_000_006 + 3, tail: 'end' },
    ]);
  });
});

describe('embedded store host (a sync child reaching PGlite over IPC)', () => {
  it('rolls back a transaction that opens only after its sync process is gone, so the one session stays free', async () => {
    const db = await PgliteDatabase.open();
    const host = new StoreHost(db, new MemoryHotTier());
    try {
      const call = (id: number, op: string, ...args: unknown[]) => host.handle({ t: 'call', id, op, args });
      const first = await call(1, 'tx.begin');
      expect(first).toMatchObject({ ok: true });
      // The child asks for a second transaction, which waits for the session; then the child dies.
      const second = call(2, 'tx.begin');
      await host.release();
      expect(await second).toMatchObject({ ok: false, error: { message: 'the sync process exited' } });
      // Before, that transaction opened after the release and held the session: this query never answered.
      const answer = await Promise.race([db.query<{ one: number }>('SELECT 1 AS one'), new Promise((resolve) => setTimeout(() => resolve('blocked'), 3000))]);
      expect(answer).toEqual([{ one: 1 }]);
    } finally {
      await db.close();
    }
  }, 15_000);
});
