// Throwaway Postgres and Redis servers for tests, started from the installed
// binaries on free loopback ports and removed afterwards. Postgres refuses to
// run as root, so as root it runs as the `postgres` user.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { chown, mkdir, mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';

const isRoot = process.getuid?.() === 0;

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

async function waitFor(what: string, timeoutMs: number, probe: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await probe().catch(() => false)) return;
    if (Date.now() > deadline) throw new Error(`${what} did not come up within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function pgBinDir(): string {
  if (process.env.PG_BIN) return process.env.PG_BIN;
  const root = '/usr/lib/postgresql';
  const versions = existsSync(root) ? readdirSync(root).filter((v) => existsSync(path.join(root, v, 'bin', 'initdb'))) : [];
  versions.sort((a, b) => Number(b) - Number(a));
  if (!versions.length) throw new Error('no Postgres binaries under /usr/lib/postgresql/*/bin (apt-get install postgresql) and PG_BIN is unset');
  return path.join(root, versions[0]!, 'bin');
}

/** Runs a Postgres binary, as the postgres user when we are root. */
function pgExec(binary: string, args: string[]): string {
  const file = path.join(pgBinDir(), binary);
  const [command, argv] = isRoot ? ['runuser', ['-u', 'postgres', '--', file, ...args]] : [file, args];
  return execFileSync(command, argv, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

/** Sends a signal to a process and all its descendants. */
function signalTree(pid: number, signal: NodeJS.Signals): void {
  const children = new Map<number, number[]>();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      children.set(ppid, [...(children.get(ppid) ?? []), Number(entry)]);
    } catch {
      // The process ended while we looked.
    }
  }
  const visit = (p: number) => {
    try {
      process.kill(p, signal);
    } catch {
      // Already gone.
    }
    for (const child of children.get(p) ?? []) visit(child);
  };
  visit(pid);
}

export interface PostgresServer {
  readonly url: string;
  readonly port: number;
  readonly dataDir: string;
  stop(): Promise<void>;
  start(): Promise<void>;
  freeze(): void;
  thaw(): void;
  destroy(): Promise<void>;
  createDatabase(name: string): Promise<string>;
}

export interface PostgresOptions {
  /** Ready to be the primary of streaming replicas (startPostgresReplica): WAL for replicas, full-page writes, WAL senders. */
  readonly replication?: boolean;
}

export async function startPostgres(settings: PostgresOptions = {}): Promise<PostgresServer> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'fs-pg-'));
  const dataDir = path.join(dir, 'data');
  if (isRoot) {
    const uid = Number(execFileSync('id', ['-u', 'postgres'], { encoding: 'utf8' }).trim());
    const gid = Number(execFileSync('id', ['-g', 'postgres'], { encoding: 'utf8' }).trim());
    await chown(dir, uid, gid);
  }
  const port = await freePort();
  pgExec('initdb', ['-D', dataDir, '-A', 'trust', '-U', 'postgres', '--no-sync', '-E', 'UTF8', '--locale=C']);
  const options = [
    `-p ${port}`,
    '-c listen_addresses=127.0.0.1',
    `-c unix_socket_directories=${dir}`,
    '-c fsync=off',
    '-c synchronous_commit=off',
    '-c full_page_writes=off',
    '-c max_connections=200',
    ...(settings.replication ? ['-c wal_level=replica', '-c max_wal_senders=10', '-c full_page_writes=on', '-c wal_keep_size=256MB'] : []),
  ].join(' ');
  const url = `postgres://postgres@127.0.0.1:${port}/postgres`;
  const start = async () => {
    pgExec('pg_ctl', ['-w', '-t', '60', '-D', dataDir, '-o', options, '-l', path.join(dir, 'log'), 'start']);
    await waitFor('Postgres', 20_000, async () => {
      const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 1000 });
      try {
        await client.connect();
        await client.query('SELECT 1');
        return true;
      } finally {
        await client.end().catch(() => undefined);
      }
    });
  };
  await start();
  return postgresHandle({ dir, dataDir, url, port, start }, async (name) => {
    const client = new pg.Client({ connectionString: url });
    await client.connect();
    try {
      await client.query(`CREATE DATABASE "${name.replaceAll('"', '""')}"`);
    } finally {
      await client.end();
    }
    return `postgres://postgres@127.0.0.1:${port}/${encodeURIComponent(name)}`;
  });
}

export interface RedisServer {
  readonly url: string;
  readonly port: number;
  stop(): Promise<void>;
  start(): Promise<void>;
  freeze(): void;
  thaw(): void;
  destroy(): Promise<void>;
}

async function redisAnswers(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    let data = '';
    socket.setTimeout(500, () => {
      socket.destroy();
      resolve(false);
    });
    socket.on('error', () => resolve(false));
    socket.on('connect', () => socket.write('PING\r\n'));
    socket.on('data', (chunk) => {
      data += chunk.toString();
      if (data.includes('\r\n')) {
        socket.destroy();
        resolve(data.startsWith('+PONG'));
      }
    });
  });
}

const liveChildren = new Set<ChildProcess>();
process.on('exit', () => {
  for (const child of liveChildren) child.kill('SIGKILL');
});

export interface RedisOptions {
  /**
   * A Redis Cluster of this one node: cluster mode on, every slot its own, so
   * REDIS_CLUSTER_NODES=127.0.0.1:<port> reaches it through the cluster client.
   * The benchmark uses it to tell the cluster read path's own cost from that
   * of reading several masters.
   */
  readonly clusterOfOne?: boolean;
}

export async function startRedis(options: RedisOptions = {}): Promise<RedisServer> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'fs-redis-'));
  const port = await freePort();
  const cluster: string[] = [];
  if (options.clusterOfOne) {
    let busPort = await freePort();
    while (busPort === port) busPort = await freePort();
    // A lone node does not know its own address until another node tells it: announce it, or CLUSTER SLOTS names no host.
    cluster.push('--cluster-enabled', 'yes', '--cluster-port', String(busPort), '--cluster-config-file', path.join(dir, 'nodes.conf'), '--cluster-announce-ip', '127.0.0.1');
  }
  let child: ChildProcess | undefined;
  const start = async () => {
    const proc = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--protected-mode', 'no', '--dir', dir, ...cluster], {
      stdio: 'ignore',
    });
    child = proc;
    liveChildren.add(proc);
    proc.once('exit', () => liveChildren.delete(proc));
    const failed = new Promise<never>((_, reject) => proc.once('error', (error) => reject(new Error(`cannot start redis-server (apt-get install redis-server): ${error.message}`))));
    await Promise.race([waitFor('Redis', 10_000, () => redisAnswers(port)), failed]);
    if (!options.clusterOfOne) return;
    // Slots stay assigned across a restart (nodes.conf).
    if (/cluster_slots_assigned:0\b/.test(redisCli(port, 'CLUSTER', 'INFO'))) redisCli(port, 'CLUSTER', 'ADDSLOTSRANGE', '0', '16383');
    await waitFor('a Redis Cluster of one node (cluster_state:ok)', 10_000, async () => redisCli(port, 'CLUSTER', 'INFO').includes('cluster_state:ok'));
  };
  const stop = async () => {
    const proc = child;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    proc.kill('SIGCONT');
    const exited = new Promise((r) => proc.once('exit', r));
    proc.kill('SIGTERM');
    await exited;
  };
  await start();
  return {
    url: `redis://127.0.0.1:${port}`,
    port,
    start,
    stop,
    freeze: () => child?.kill('SIGSTOP'),
    thaw: () => child?.kill('SIGCONT'),
    async destroy() {
      await stop();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/**
 * A hot-standby streaming replica of `primary` (started with `replication: true`),
 * cloned with `pg_basebackup -R` on its own loopback port. Stop/start keep it a
 * standby; it follows the primary again after a restart.
 */
export async function startPostgresReplica(primary: PostgresServer): Promise<PostgresServer> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'fs-pg-replica-'));
  const dataDir = path.join(dir, 'data');
  if (isRoot) {
    const uid = Number(execFileSync('id', ['-u', 'postgres'], { encoding: 'utf8' }).trim());
    const gid = Number(execFileSync('id', ['-g', 'postgres'], { encoding: 'utf8' }).trim());
    await chown(dir, uid, gid);
  }
  const hba = readFileSync(path.join(primary.dataDir, 'pg_hba.conf'), 'utf8');
  if (!/^host\s+replication\s+all\s+127\.0\.0\.1\/32/m.test(hba)) throw new Error(`the primary's pg_hba.conf has no replication entry for 127.0.0.1 (${primary.dataDir})`);
  pgExec('pg_basebackup', ['-h', '127.0.0.1', '-p', String(primary.port), '-U', 'postgres', '-D', dataDir, '-R', '-X', 'stream', '-c', 'fast', '--no-sync']);
  const port = await freePort();
  // A hot standby needs max_connections at least the primary's.
  const options = [`-p ${port}`, '-c listen_addresses=127.0.0.1', `-c unix_socket_directories=${dir}`, '-c fsync=off', '-c max_connections=200', '-c hot_standby=on'].join(' ');
  const url = `postgres://postgres@127.0.0.1:${port}/postgres`;
  const start = async () => {
    pgExec('pg_ctl', ['-w', '-t', '60', '-D', dataDir, '-o', options, '-l', path.join(dir, 'log'), 'start']);
    await waitFor('Postgres replica', 20_000, async () => {
      const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 1000 });
      try {
        await client.connect();
        const { rows } = await client.query<{ standby: boolean }>('SELECT pg_is_in_recovery() AS standby');
        if (!rows[0]?.standby) throw new Error(`the replica on port ${port} is not in recovery`);
        return true;
      } finally {
        await client.end().catch(() => undefined);
      }
    });
  };
  await start();
  return postgresHandle({ dir, dataDir, url, port, start }, () => Promise.reject(new Error('a replica is read-only: create databases on its primary')));
}

/** The controls of a started Postgres server (primary or replica) in `dataDir`, run as the postgres user when we are root. */
function postgresHandle(
  where: { dir: string; dataDir: string; url: string; port: number; start: () => Promise<void> },
  createDatabase: (name: string) => Promise<string>,
): PostgresServer {
  const { dir, dataDir } = where;
  const postmasterPid = () => Number(readFileSync(path.join(dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
  const stop = async () => {
    pgExec('pg_ctl', ['-w', '-t', '60', '-D', dataDir, '-m', 'fast', 'stop']);
  };
  const server: PostgresServer = {
    url: where.url,
    port: where.port,
    dataDir,
    start: where.start,
    stop,
    freeze: () => signalTree(postmasterPid(), 'SIGSTOP'),
    thaw: () => signalTree(postmasterPid(), 'SIGCONT'),
    async destroy() {
      if (existsSync(path.join(dataDir, 'postmaster.pid'))) {
        server.thaw();
        await stop().catch(() => undefined);
      }
      await rm(dir, { recursive: true, force: true });
    },
    createDatabase,
  };
  return server;
}

export interface RedisClusterServer {
  /** Seeds for REDIS_CLUSTER_NODES: every node, as host:port. */
  readonly nodes: string;
  readonly ports: readonly number[];
  /** Ports of the nodes that are masters now (asked of the nodes themselves). */
  masters(): Promise<number[]>;
  /** SIGKILLs one node: no shutdown, no goodbye to the cluster, as a crash would. */
  kill(port: number): void;
  /** SIGSTOPs one node: its connections stay open and nothing answers, as when it is cut off without a reset. */
  freeze(port: number): void;
  thaw(port: number): void;
  /** Resolves once `masters` live nodes are masters and every live node reports cluster_state:ok with that many serving slots. */
  waitHealthy(timeoutMs?: number, masters?: number): Promise<void>;
  destroy(): Promise<void>;
}

/** How clients reach a test cluster's nodes: a requirepass password and, with `tls`, TLS only (certificate files of 127.0.0.1). */
export interface RedisClusterAccess {
  readonly password?: string;
  readonly tls?: { readonly cert: string; readonly key: string; readonly ca: string };
}

/** redis-cli's arguments for `access`. */
const cliAccess = (access: RedisClusterAccess): string[] => [
  ...(access.password ? ['-a', access.password, '--no-auth-warning'] : []),
  ...(access.tls ? ['--tls', '--cacert', access.tls.ca] : []),
];

function redisCli(port: number, ...args: string[]): string {
  return redisCliAs({}, port, ...args);
}

function redisCliAs(access: RedisClusterAccess, port: number, ...args: string[]): string {
  return execFileSync('redis-cli', ['-h', '127.0.0.1', '-p', String(port), ...cliAccess(access), ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 10_000 });
}

/**
 * A self-signed certificate for 127.0.0.1 (its own CA), written into `dir` with openssl, for a TLS test cluster.
 */
export function selfSignedCertificate(dir: string): { cert: string; key: string; ca: string } {
  const cert = path.join(dir, 'cert.pem');
  const key = path.join(dir, 'key.pem');
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '2', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1'], { stdio: 'ignore' });
  return { cert, key, ca: cert };
}

/**
 * A Redis Cluster of three masters with one replica each, on loopback: six
 * redis-server processes (each with its own cluster bus port) joined by
 * `redis-cli --cluster create`. A short node timeout makes a failover take
 * seconds, not the default fifteen.
 */
export async function startRedisCluster(access: RedisClusterAccess = {}): Promise<RedisClusterServer> {
  const cli = (port: number, ...args: string[]) => redisCliAs(access, port, ...args);
  const answers = async (port: number) => {
    try {
      return cli(port, 'PING').trim() === 'PONG';
    } catch {
      return false;
    }
  };
  const dir = await mkdtemp(path.join(os.tmpdir(), 'fs-redis-cluster-'));
  const ports: number[] = [];
  const children = new Map<number, ChildProcess>();
  const destroy = async () => {
    await Promise.all(
      [...children.values()].map(async (proc) => {
        if (proc.exitCode !== null || proc.signalCode !== null) return;
        const exited = new Promise((r) => proc.once('exit', r));
        proc.kill('SIGKILL');
        await exited;
      }),
    );
    await rm(dir, { recursive: true, force: true });
  };
  try {
    for (let i = 0; i < 6; i++) {
      const port = await freePort();
      let busPort = await freePort();
      while (busPort === port || ports.includes(busPort)) busPort = await freePort();
      ports.push(port);
      const nodeDir = path.join(dir, String(port));
      await mkdir(nodeDir);
      const proc = spawn(
        'redis-server',
        [
          '--port', String(port), '--bind', '127.0.0.1', '--protected-mode', 'no', '--dir', nodeDir,
          '--cluster-enabled', 'yes', '--cluster-port', String(busPort), '--cluster-config-file', path.join(nodeDir, 'nodes.conf'),
          '--cluster-node-timeout', '2000', '--appendonly', 'no', '--save', '',
          // A replica always takes over its failed master, however long since it last heard from it: on a loaded CI
          // machine the default (10 × node timeout) can leave a replica refusing, and the cluster down for good.
          '--cluster-replica-validity-factor', '0',
          // Replicas sign in to their masters with the same password; with TLS, clients, replication and the bus use it.
          ...(access.password ? ['--requirepass', access.password, '--masterauth', access.password] : []),
          ...(access.tls
            ? ['--port', '0', '--tls-port', String(port), '--tls-cluster', 'yes', '--tls-replication', 'yes', '--tls-cert-file', access.tls.cert, '--tls-key-file', access.tls.key, '--tls-ca-cert-file', access.tls.ca, '--tls-auth-clients', 'no']
            : []),
        ],
        { stdio: 'ignore' },
      );
      children.set(port, proc);
      liveChildren.add(proc);
      proc.once('exit', () => liveChildren.delete(proc));
      const failed = new Promise<never>((_, reject) => proc.once('error', (error) => reject(new Error(`cannot start redis-server (apt-get install redis-server): ${error.message}`))));
      await Promise.race([waitFor(`Redis cluster node on ${port}`, 10_000, () => answers(port)), failed]);
    }
    execFileSync('redis-cli', [...cliAccess(access), '--cluster', 'create', ...ports.map((p) => `127.0.0.1:${p}`), '--cluster-replicas', '1', '--cluster-yes'], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
      timeout: 60_000,
    });
  } catch (error) {
    await destroy();
    throw error;
  }
  const alive = () => ports.filter((p) => children.get(p)!.exitCode === null && children.get(p)!.signalCode === null);
  const masters = async () => alive().filter((p) => /^role:master/m.test(cli(p, 'INFO', 'replication')));
  const waitHealthy = async (timeoutMs = 30_000, expectedMasters = 3) =>
    waitFor(`Redis Cluster (${expectedMasters} live masters, cluster_state:ok on every node)`, timeoutMs, async () => {
      if ((await masters()).length !== expectedMasters) return false;
      return alive().every((p) => {
        const info = cli(p, 'CLUSTER', 'INFO');
        return info.includes('cluster_state:ok') && info.includes(`cluster_size:${expectedMasters}`);
      });
    });
  const cluster: RedisClusterServer = {
    nodes: ports.map((p) => `127.0.0.1:${p}`).join(','),
    ports,
    masters,
    kill: (port) => children.get(port)?.kill('SIGKILL'),
    freeze: (port) => children.get(port)?.kill('SIGSTOP'),
    thaw: (port) => children.get(port)?.kill('SIGCONT'),
    waitHealthy,
    destroy,
  };
  try {
    await waitHealthy();
    // Replicas attached and in sync, so a failover has someone to promote.
    await waitFor('Redis Cluster replicas in sync', 30_000, async () => (await masters()).every((p) => /connected_slaves:1/.test(cli(p, 'INFO', 'replication'))));
  } catch (error) {
    await destroy();
    throw error;
  }
  return cluster;
}
