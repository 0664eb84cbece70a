// Baseline servers for the benchmark, doing only what the baseline names:
//   const: a bare Hono route answering a constant JSON body of the feature response's size
//   redis: a bare Hono route doing one ioredis GET of a stored value
//   pg:    a bare Hono route doing one prepared pg point select
// Usage: node --import tsx bench/bare.ts <const|redis|pg> <port> <body-file|redis-url|database-url> [key-prefix|table]
import { readFileSync } from 'node:fs';
import { serve } from '@hono/node-server';
import { Hono } from 'hono';
import { Redis } from 'ioredis';
import pg from 'pg';

const [mode, portText, target, extra] = process.argv.slice(2);
const app = new Hono();
if (mode === 'const') {
  const body = readFileSync(target!, 'utf8');
  app.get('/features/v1/:id', (c) => c.body(body, 200, { 'Content-Type': 'application/json' }));
} else if (mode === 'redis') {
  const redis = new Redis(target!);
  app.get('/features/v1/:id', async (c) => c.body((await redis.get(`${extra}${c.req.param('id')}`)) ?? 'null', 200, { 'Content-Type': 'application/json' }));
} else if (mode === 'pg') {
  const pool = new pg.Pool({ connectionString: target!, max: 20 });
  app.get('/features/v1/:id', async (c) => {
    const result = await pool.query({ name: 'point', text: `SELECT * FROM ${extra} WHERE entity_id = $1`, values: [c.req.param('id')] });
    return c.json(result.rows[0] ?? null);
  });
} else {
  throw new Error(`unknown mode ${mode}`);
}
serve({ fetch: app.fetch, port: Number(portText), hostname: '127.0.0.1' }, () => process.send?.('ready'));
