// The embedded store's COPY: the sync hands it a CSV stream in reads cut
// anywhere, and it loads it in bounded blobs, each of whole records.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PgliteDatabase } from '../../src/stores/pglite.js';

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
});
