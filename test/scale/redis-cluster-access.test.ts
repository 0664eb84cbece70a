// A Redis Cluster that asks for a password and speaks only TLS (as managed
// clusters do), against a real one: six redis-server processes on loopback
// with requirepass and TLS on clients, replication and the cluster bus. The
// settings REDIS_CLUSTER_PASSWORD, REDIS_CLUSTER_USERNAME and
// REDIS_CLUSTER_TLS reach every node, and a wrong or missing one fails
// loudly, naming what the nodes said.
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../../src/config/index.js';
import { createHotTier } from '../../src/stores/create-hot-tier.js';
import { hotKey } from '../../src/stores/hot-tier.js';
import { RedisClusterHotTier } from '../../src/stores/redis-cluster.js';
import { tempDir } from '../support/fixtures.js';
import { selfSignedCertificate, startRedisCluster, type RedisClusterServer } from '../support/servers.js';

const PASSWORD = 'cluster-secret';
const root = path.resolve(import.meta.dirname, '../..');

describe('REDIS_CLUSTER_PASSWORD, REDIS_CLUSTER_USERNAME and REDIS_CLUSTER_TLS', () => {
  const servers = { DATABASE_URL: 'postgres://db/x', REDIS_CLUSTER_NODES: 'redis-a:7000' };

  it('are read for a cluster; TLS is off and no one signs in by default', () => {
    expect(loadConfig(servers).redisClusterConnection).toEqual({ username: undefined, password: undefined, tls: false });
    const config = loadConfig({ ...servers, REDIS_CLUSTER_USERNAME: 'api', REDIS_CLUSTER_PASSWORD: 'p@ss,word', REDIS_CLUSTER_TLS: 'true' });
    expect(config.redisClusterConnection).toEqual({ username: 'api', password: 'p@ss,word', tls: true });
    expect(Object.isFrozen(config.redisClusterConnection)).toBe(true);
  });

  it('are refused without a cluster (one node takes them in REDIS_URL), and a user without a password', () => {
    const single = { DATABASE_URL: 'postgres://db/x', REDIS_URL: 'redis://cache:6379' };
    expect(() => loadConfig({ ...single, REDIS_CLUSTER_PASSWORD: 'x' })).toThrow(ConfigError);
    expect(() => loadConfig({ ...single, REDIS_CLUSTER_PASSWORD: 'x' })).toThrow(/REDIS_CLUSTER_PASSWORD is set without REDIS_CLUSTER_NODES.*REDIS_URL \(redis:\/\/user:password@host:6379, rediss:\/\/ for TLS\)/);
    expect(() => loadConfig({ ...single, REDIS_CLUSTER_TLS: 'yes', REDIS_CLUSTER_USERNAME: 'u' })).toThrow(/REDIS_CLUSTER_USERNAME, REDIS_CLUSTER_TLS are set without REDIS_CLUSTER_NODES/);
    expect(loadConfig({ ...single, REDIS_CLUSTER_TLS: 'false' }).redisClusterConnection.tls).toBe(false);
    expect(() => loadConfig({ ...servers, REDIS_CLUSTER_USERNAME: 'api' })).toThrow(/REDIS_CLUSTER_USERNAME is set without REDIS_CLUSTER_PASSWORD/);
    expect(() => loadConfig({ ...servers, REDIS_CLUSTER_TLS: 'sometimes' })).toThrow(/REDIS_CLUSTER_TLS/);
  });
});

describe('a Redis Cluster with a password and TLS only', () => {
  let cluster: RedisClusterServer;
  let tls: { cert: string; key: string; ca: string };
  const tiers: RedisClusterHotTier[] = [];
  const tier = (options: { password?: string; username?: string; tls?: boolean }) => {
    const created = new RedisClusterHotTier({
      nodes: cluster.nodes.split(',').map((seed) => ({ host: seed.split(':')[0]!, port: Number(seed.split(':')[1]) })),
      commandTimeoutMs: 2000,
      ...(options.password ? { password: options.password } : {}),
      ...(options.username ? { username: options.username } : {}),
      // The test's own CA, which a deployment would give in NODE_EXTRA_CA_CERTS (the last test does).
      ...(options.tls === false ? {} : { tls: { ca: caText } }),
    });
    tiers.push(created);
    return created;
  };
  let caText = '';

  beforeAll(async () => {
    tls = selfSignedCertificate(await tempDir('redis-tls'));
    caText = readFileSync(tls.ca, 'utf8');
    cluster = await startRedisCluster({ password: PASSWORD, tls });
  });
  afterAll(async () => {
    await Promise.allSettled(tiers.map((t) => t.close()));
    await cluster?.destroy();
  });

  it('reads and writes on every master, single and batch, and drops a version', async () => {
    const hot = tier({ password: PASSWORD });
    await hot.ready(20_000);
    await hot.ping();
    const entries = Array.from({ length: 500 }, (_, i) => [hotKey('secure', 1, `e${i}`), Buffer.from(`v${i}`)] as const);
    await hot.set(entries);
    const ids = Array.from({ length: 200 }, (_, i) => (i % 4 === 0 ? `absent${i}` : `e${i}`));
    expect(await hot.get(ids.map((id) => hotKey('secure', 1, id)))).toEqual(ids.map((id) => (id.startsWith('absent') ? null : Buffer.from(`v${id.slice(1)}`))));
    expect(await Promise.all([7, 8, 9].map((i) => hot.get([hotKey('secure', 1, `e${i}`)])))).toEqual([[Buffer.from('v7')], [Buffer.from('v8')], [Buffer.from('v9')]]);
    expect(await hot.dropVersion('secure', 1)).toBe(500);
    expect(await hot.get([hotKey('secure', 1, 'e1')])).toEqual([null]);
  });

  it('signs in as an ACL user given with its password', async () => {
    // The user on every node (ACLs are per node), allowed what the hot tier does.
    await Promise.all(
      cluster.ports.map(async (port) => {
        const admin = new Redis({ host: '127.0.0.1', port, password: PASSWORD, tls: { ca: caText } });
        try {
          await admin.call('ACL', 'SETUSER', 'features', 'on', '>user-secret', '~fs:*', '+@all');
        } finally {
          admin.disconnect();
        }
      }),
    );
    const hot = tier({ username: 'features', password: 'user-secret' });
    await hot.ready(20_000);
    await hot.set([[hotKey('acl', 1, 'e1'), Buffer.from('as user')]]);
    expect(await hot.get([hotKey('acl', 1, 'e1'), hotKey('acl', 1, 'e2')])).toEqual([Buffer.from('as user'), null]);
  });

  it('fails to become ready, saying why, without the password, with a wrong one, and without TLS', async () => {
    await expect(tier({}).ready(3000)).rejects.toThrow(/did not become ready.*latest errors: .*NOAUTH.*REDIS_CLUSTER_PASSWORD/s);
    await expect(tier({ password: 'wrong' }).ready(3000)).rejects.toThrow(/latest errors: .*WRONGPASS/s);
    await expect(tier({ password: PASSWORD, tls: false }).ready(3000)).rejects.toThrow(/did not become ready.*REDIS_CLUSTER_TLS/s);
    // A health check says the same (/readyz).
    const noPassword = tier({});
    await new Promise((resolve) => setTimeout(resolve, 1000));
    await expect(noPassword.ping()).rejects.toThrow(/not ready; latest errors: .*NOAUTH/);
  });

  it('connects from the settings alone, trusting a private CA through NODE_EXTRA_CA_CERTS, and names an untrusted certificate', async () => {
    // A process of its own: Node reads NODE_EXTRA_CA_CERTS at start-up.
    const script = `
      import { loadConfig } from './src/config/index.ts';
      import { createHotTier } from './src/stores/create-hot-tier.ts';
      const hot = createHotTier(loadConfig(process.env), 2000);
      try {
        await hot.ready(10000);
        await hot.set([['fs:env:1:e1', Buffer.from('from env')]]);
        console.log(String((await hot.get(['fs:env:1:e1']))[0]));
      } catch (error) {
        console.log('failed: ' + error.message);
      } finally {
        await hot.close();
      }`;
    const env = { PATH: process.env.PATH, DATABASE_URL: 'postgres://unused/x', REDIS_CLUSTER_NODES: cluster.nodes, REDIS_CLUSTER_PASSWORD: PASSWORD, REDIS_CLUSTER_TLS: 'true' };
    const run = async (extra: Record<string, string>) =>
      (await promisify(execFile)(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { cwd: root, env: { ...env, ...extra }, timeout: 60_000 })).stdout.trim();
    expect(await run({ NODE_EXTRA_CA_CERTS: tls.ca })).toBe('from env');
    expect(await run({})).toMatch(/^failed: the Redis Cluster did not become ready.*latest errors: .*self-signed certificate/);
  });
});
