// Owns API keys: stored hashed in Postgres, each with a name and the views it
// may read; created, listed and revoked from the command line. The server keeps
// the active keys in memory and re-reads them on the catalog's schedule, so a
// new or revoked key takes effect within CATALOG_REFRESH_MS, without restart.
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import type { Queryable } from './database.js';
import { META_SCHEMA } from './metadata.js';

/** What a verified key may do. */
export interface KeyGrant {
  readonly keyId: string;
  readonly name: string;
  /** View names the key may read; '*' means all. */
  readonly views: readonly string[];
  /** The key's own rate limit, or null for the server's default. */
  readonly rate: { readonly perSecond: number; readonly burst: number } | null;
}

export interface ApiKeyRecord extends KeyGrant {
  readonly createdAt: Date;
  readonly revokedAt: Date | null;
}

const TOKEN = /^fsk_([a-f0-9]{12})_([A-Za-z0-9_-]{43})$/;
const sha256 = (text: string) => createHash('sha256').update(text).digest();

export function mayRead(grant: KeyGrant, view: string): boolean {
  return grant.views.includes('*') || grant.views.includes(view);
}

export async function createApiKey(db: Queryable, name: string, views: readonly string[], rate?: { perSecond: number; burst: number }): Promise<{ keyId: string; token: string }> {
  const keyId = randomBytes(6).toString('hex');
  const token = `fsk_${keyId}_${randomBytes(32).toString('base64url')}`;
  await db.query(`INSERT INTO ${META_SCHEMA}.api_keys (key_id, name, hash, views, rate_per_second, burst) VALUES ($1, $2, $3, $4, $5, $6)`, [
    keyId,
    name,
    sha256(token).toString('hex'),
    views,
    rate?.perSecond ?? null,
    rate?.burst ?? null,
  ]);
  return { keyId, token };
}

type KeyRow = {
  key_id: string;
  name: string;
  hash: string;
  views: string[];
  rate_per_second: number | null;
  burst: number | null;
  created_at: Date | string;
  revoked_at: Date | string | null;
};

const rateOf = (r: KeyRow) => (r.rate_per_second === null ? null : { perSecond: Number(r.rate_per_second), burst: Number(r.burst ?? Math.ceil(Number(r.rate_per_second))) });

export async function listApiKeys(db: Queryable): Promise<ApiKeyRecord[]> {
  const rows = await db.query<KeyRow>(`SELECT key_id, name, views, rate_per_second, burst, created_at, revoked_at FROM ${META_SCHEMA}.api_keys ORDER BY created_at, key_id`);
  return rows.map((r) => ({ keyId: r.key_id, name: r.name, views: r.views, rate: rateOf(r), createdAt: new Date(r.created_at), revokedAt: r.revoked_at === null ? null : new Date(r.revoked_at) }));
}

/** Revokes by key id or by name; returns how many keys it revoked. */
export async function revokeApiKey(db: Queryable, idOrName: string): Promise<number> {
  const rows = await db.query(`UPDATE ${META_SCHEMA}.api_keys SET revoked_at = now() WHERE (key_id = $1 OR name = $1) AND revoked_at IS NULL RETURNING key_id`, [idOrName]);
  return rows.length;
}

/** The active keys, held in memory and refreshed from Postgres. */
export class ApiKeys {
  private keys = new Map<string, { hash: Buffer; grant: KeyGrant }>();

  constructor(private readonly db: Queryable) {}

  get size(): number {
    return this.keys.size;
  }

  async refresh(): Promise<void> {
    const rows = await this.db.query<KeyRow>(`SELECT key_id, name, hash, views, rate_per_second, burst FROM ${META_SCHEMA}.api_keys WHERE revoked_at IS NULL`);
    this.keys = new Map(rows.map((r) => [r.key_id, { hash: Buffer.from(r.hash, 'hex'), grant: { keyId: r.key_id, name: r.name, views: r.views, rate: rateOf(r) } }]));
  }

  /** The grant of a valid, unrevoked token, or null. The hash comparison takes constant time. */
  verify(token: string): KeyGrant | null {
    const match = TOKEN.exec(token);
    const entry = match ? this.keys.get(match[1]!) : undefined;
    // Compare even when the id is unknown, so timing does not tell ids apart.
    const expected = entry?.hash ?? DUMMY_HASH;
    const ok = timingSafeEqual(sha256(token), expected);
    return ok && entry ? entry.grant : null;
  }
}

const DUMMY_HASH = sha256('no such key');
