// Owns the Redis Cluster hot tier: the same contract as one Redis node, spread
// over the masters of a cluster by key slot.
//
// Key layout: keys stay `fs:<view>:<version>:<entity>` with no hash tag, so a
// version's keys spread over every master. A version switch is still atomic
// for readers on a cluster: the switch happens in the Postgres catalog, in one
// step, and readers only ever ask for keys of the version the catalog names;
// a version's keys are written in full before it is published and never
// change afterwards. So whichever master answers, a value is either the right
// one or absent (a miss, answered from Postgres), never another version's.
//
// Multi-key commands (MGET, MSET, UNLINK of many keys) fail with CROSSSLOT
// unless all keys share a slot, and a batch's keys almost never do (16384
// slots). So a batch read is one script call per master that owns some of its
// keys (the script GETs them; Redis 7's allow-cross-slot-keys lets one call
// read keys of many slots on one node): a batch costs one round trip and one
// reply per master involved. Single reads go straight to the owning master's
// connection, which costs less CPU than the cluster client's routing. Sync
// writes are per-key SETs pipelined on each master's connection. A key that
// meets MOVED, ASK or "non local key" there (a stale slot map, a slot being
// migrated) is read or written again on its own through the cluster client,
// which follows the redirection: resharding costs a few round trips more
// where a read or write meets the slot being moved, never a failed read or
// a wrong value.
// Needs Redis 7.0 or later (script flags); the health check (/readyz) fails on
// an older master, naming it.
//
// Failover: reads fail fast (no offline queue, no retry on a lost connection
// or CLUSTERDOWN, the connections' command timeout, and a deadline over any
// call through the cluster client), so a master that dies
// mid-load surfaces as errors the reader turns into Postgres answers (and
// opens its breaker); the slot map is refreshed on a timer and on MOVED, so
// the promoted replica answers again without a restart. Reads go to masters
// only: a replica may lag, which could cost only misses, but masters keep one
// story.
import { createHash } from 'node:crypto';
import type { ConnectionOptions } from 'node:tls';
import { Cluster, type ChainableCommander, type Redis } from 'ioredis';
import { withDeadline } from '../deadline.js';
import { ReadCoalescer } from './coalesce.js';
import type { HotTier } from './hot-tier.js';
import { DEFAULT_FILL_TTL_SECONDS, hotKeyPrefix, hotVersionMark, markAfterDropSeconds } from './hot-tier.js';

export interface RedisClusterOptions {
  /** Seed nodes; the client learns the rest of the topology from any one of them. */
  readonly nodes: readonly { readonly host: string; readonly port: number }[];
  /** Bound on any one call (a read, a batch write); it fails after this and the reader falls back. */
  readonly commandTimeoutMs: number;
  /** How often the slot map is refreshed (default 5 s), so a failover is noticed even where no MOVED says so. */
  readonly slotsRefreshMs?: number;
  /**
   * After a read of a master times out, how long reads that need it fail at once rather than each waiting out the
   * timeout (default 1 s; REDIS_RETRY_AFTER_MS). A master cut off without a reset answers nothing until it is
   * failed over, and reads of the other masters would otherwise keep the reader's breaker closed.
   */
  readonly masterRetryAfterMs?: number;
  /** ACL user (with `password`) or, alone, the `requirepass` password: every node is signed in to with these. */
  readonly username?: string;
  readonly password?: string;
  /** TLS to every node (Node's `tls.connect` options; {} for the system's CAs and NODE_EXTRA_CA_CERTS). */
  readonly tls?: ConnectionOptions;
  /** TTL of lookups' fills (REDIS_FILL_TTL_SECONDS): how long a dropped version's mark must outlive them. */
  readonly fillTtlSeconds?: number;
}

const SCAN_COUNT = 1000;

/** The cluster did not answer in time; a timeout like a socket's, so a sync retries it. */
export class RedisClusterTimeoutError extends Error {
  override name = 'RedisClusterTimeoutError';
  readonly code = 'ETIMEDOUT';
}

export class RedisClusterHotTier implements HotTier {
  readonly kind = 'redis' as const;
  readonly client: Cluster;
  private readonly timeoutMs: number;
  private masters: Map<string, Redis> | undefined;
  /** Masters whose reads timed out, by connection: until when reads that need them fail at once. */
  private readonly timedOutUntil = new Map<Redis, number>();
  private readonly masterRetryAfterMs: number;
  private readonly fillTtlSeconds: number;
  /** The latest distinct connection and node errors ioredis reported (at most three), for the message when the cluster cannot be reached. */
  private recentErrors: string[] = [];
  /** Masters already seen running Redis 7 or later (batch reads need script flags), by host:port. */
  private readonly onRedis7 = new Set<string>();
  /** Single-key lookups of the same few event-loop turns, read together (one call per master). */
  private readonly single = new ReadCoalescer(
    (key) => this.getOne(key),
    (keys) => this.getMany(keys),
  );

  constructor(options: RedisClusterOptions) {
    if (options.nodes.length === 0) throw new Error('a Redis Cluster needs at least one seed node (REDIS_CLUSTER_NODES)');
    this.timeoutMs = options.commandTimeoutMs;
    this.masterRetryAfterMs = options.masterRetryAfterMs ?? 1000;
    this.fillTtlSeconds = options.fillTtlSeconds ?? DEFAULT_FILL_TTL_SECONDS;
    this.client = new Cluster(
      options.nodes.map((n) => ({ host: n.host, port: n.port })),
      {
        enableOfflineQueue: false,
        scaleReads: 'master',
        // A lost connection or CLUSTERDOWN fails the command at once (the reader has Postgres);
        // MOVED is still followed, since it names the node that now owns the slot.
        retryDelayOnFailover: 0,
        retryDelayOnClusterDown: 0,
        retryDelayOnTryAgain: 50,
        maxRedirections: 4,
        // Each refresh opens a connection and rebuilds a 16384-entry map; MOVED also triggers one.
        slotsRefreshInterval: options.slotsRefreshMs ?? 5000,
        slotsRefreshTimeout: Math.max(options.commandTimeoutMs, 1000),
        // Keep trying to reach the cluster in the background, at most every 2 s.
        clusterRetryStrategy: (attempt) => Math.min(100 * attempt, 2000),
        // With TLS, nodes are connected to by the names the cluster gives (not resolved to addresses first), so each
        // certificate is checked against the name it was issued for.
        ...(options.tls ? { dnsLookup: (address: string, callback: (error: null, address: string) => void) => callback(null, address) } : {}),
        redisOptions: {
          commandTimeout: options.commandTimeoutMs,
          connectTimeout: Math.max(options.commandTimeoutMs, 1000),
          maxRetriesPerRequest: 0,
          ...(options.username ? { username: options.username } : {}),
          ...(options.password ? { password: options.password } : {}),
          ...(options.tls ? { tls: options.tls } : {}),
        },
      },
    );
    // Node and connection errors surface on each command; the events themselves are not fatal, but the latest say
    // why the cluster cannot be reached (a wrong password, a certificate, TLS on one end only).
    this.client.on('error', (error: Error) => this.noteError(error));
    this.client.on('node error', (error: Error) => this.noteError(error));
    this.client.on('ready', () => (this.recentErrors = []));
    for (const event of ['+node', '-node', 'refresh', 'ready']) this.client.on(event, () => (this.masters = undefined));
    // ioredis connects to a node only at its first command, and with no offline queue it refuses
    // the commands that arrive while that connection is being made: connect to each node at once.
    this.client.on('+node', (node: Redis) => {
      if (node.status === 'wait') node.connect().catch(() => undefined);
    });
  }

  async get(keys: readonly string[]): Promise<(Buffer | null)[]> {
    if (keys.length === 1) return [await this.single.get(keys[0]!)];
    return this.getMany(keys);
  }

  /**
   * One script call per owning master, straight to its connection: the
   * script GETs the master's keys of the batch (any slots it owns, which the
   * allow-cross-slot-keys flag permits) and answers them in one reply. That
   * costs the API process, the bottleneck, less than a pipeline of GETs
   * (ioredis builds a command and a promise per key), though Redis pays about
   * half as much again for the script (measured: README). Each call is
   * bounded by the connection's command timeout. A master that turns out not
   * to hold some of its keys (a stale slot map after a failover, or a slot
   * being migrated, whose moved keys live on the importing master) has its
   * keys read again through `routed`: GETs pipelined to it, and each key that
   * meets MOVED or ASK on its own through the cluster client, which follows
   * it, within what is left of the call's bound; the other masters' answers
   * stand. With no usable map at all, the whole batch goes that way.
   */
  private async getMany(keys: readonly string[]): Promise<(Buffer | null)[]> {
    const started = performance.now();
    const left = () => this.timeoutMs - (performance.now() - started);
    const direct = this.byMaster(keys.length, (i) => keys[i]!);
    if (!direct) return this.within(`read of ${keys.length} keys`, this.getRouted(keys), left());
    for (const node of direct.keys()) this.checkNotTimedOut(node);
    const values: (Buffer | null)[] = new Array(keys.length);
    await Promise.all(
      [...direct].map(async ([node, indexes]) => {
        const own = indexes.map((i) => keys[i]!);
        let replies: (Buffer | null)[];
        try {
          // One key of this master: a plain GET costs both ends less than a script call.
          replies = own.length === 1 ? [await node.getBuffer(own[0]!)] : await readScript(node, own);
          if (this.timedOutUntil.size) this.timedOutUntil.delete(node);
        } catch (error) {
          this.noteTimeout(node, error);
          if (!NOT_HERE.test((error as Error).message)) throw error;
          replies = await this.within(`read of ${own.length} keys`, this.getRouted(own), left());
        }
        indexes.forEach((index, j) => (values[index] = replies[j]!));
      }),
    );
    return values;
  }

  /** Keys read through `routed`: for the rare read a master's script could not answer, or no slot map could place. */
  private getRouted(keys: readonly string[]): Promise<(Buffer | null)[]> {
    return this.routed(
      keys.length,
      (i) => keys[i]!,
      (pipeline, i) => pipeline.getBuffer(keys[i]!),
      (i) => this.client.getBuffer(keys[i]!),
    );
  }

  /**
   * One command per item: a pipeline on the connection of each master the
   * slot map names, then each command that met a MOVED or ASK (a stale map, a
   * slot being migrated) again on its own through the cluster client, which
   * follows it. Not the cluster client's pipelines: ioredis handles their
   * redirections all or nothing, so one ASK resends a whole pipeline of reads
   * to the importing master, where keys that have not moved read as absent,
   * and a pipeline of writes fails. With no usable map, every command goes on
   * its own. Any other error fails the call.
   */
  private async routed<T>(count: number, keyOf: (i: number) => string, add: (pipeline: ChainableCommander, i: number) => void, alone: (i: number) => Promise<T>): Promise<T[]> {
    const groups = this.byMaster(count, keyOf);
    if (!groups) return Promise.all(Array.from({ length: count }, (_, i) => alone(i)));
    const values: T[] = new Array(count);
    await Promise.all(
      [...groups].map(async ([node, indexes]) => {
        const pipeline = node.pipeline();
        for (const i of indexes) add(pipeline, i);
        const results = (await pipeline.exec()) ?? [];
        // Checked in one pass (no promise per item: a sync sends every row through here); any other error fails
        // the call before a redirected command is sent again.
        const redirected: number[] = [];
        indexes.forEach((index, j) => {
          const [error, value] = results[j] ?? [new Error(`Redis Cluster: ${nodeName(node)} answered ${results.length} of ${indexes.length} pipelined commands`), null];
          if (!error) values[index] = value as T;
          else if (NOT_HERE.test(error.message)) redirected.push(index);
          else throw error;
        });
        await Promise.all(redirected.map(async (index) => (values[index] = await alone(index))));
      }),
    );
    return values;
  }

  /** Item indexes by the connection of the master the slot map names for their keys; undefined if one is not connected. */
  private byMaster(count: number, keyOf: (i: number) => string): Map<Redis, number[]> | undefined {
    const slots = this.client.slots;
    const masters = this.mastersByName();
    const groups = new Map<Redis, number[]>();
    for (let i = 0; i < count; i++) {
      const owner = slots[keySlot(keyOf(i))]?.[0];
      const node = owner === undefined ? undefined : masters.get(owner);
      if (!node || node.status !== 'ready') return undefined;
      const indexes = groups.get(node);
      if (indexes) indexes.push(i);
      else groups.set(node, [i]);
    }
    return groups;
  }

  async set(entries: readonly (readonly [string, Buffer])[], ttlSeconds?: number): Promise<void> {
    if (entries.length === 0) return;
    // A sync may start writing before the slot map has arrived; wait for it within the same bound.
    if (!this.isReady()) await this.ready(this.timeoutMs);
    await this.within(
      `write of ${entries.length} keys`,
      this.routed(
        entries.length,
        (i) => entries[i]![0],
        (pipeline, i) => (ttlSeconds ? pipeline.set(entries[i]![0], entries[i]![1], 'EX', ttlSeconds) : pipeline.set(entries[i]![0], entries[i]![1])),
        (i) => (ttlSeconds ? this.client.set(entries[i]![0], entries[i]![1], 'EX', ttlSeconds) : this.client.set(entries[i]![0], entries[i]![1])),
      ),
    );
  }

  /**
   * Scans every master and unlinks the version's keys there. Refuses to run on
   * an unhealthy cluster or a stale map of masters, since keys on a master it
   * missed would stay behind unnoticed.
   */
  async dropVersion(view: string, version: number, options: { readonly release?: boolean } = {}): Promise<number> {
    const masters = await this.healthyMasters();
    let removed = 0;
    for (const node of masters) {
      let cursor = '0';
      do {
        const [next, keys] = await node.scan(cursor, 'MATCH', `${hotKeyPrefix(view, version)}*`, 'COUNT', SCAN_COUNT);
        cursor = next;
        if (keys.length === 0) continue;
        // One key per UNLINK (keys of one node still span many slots), pipelined on the owning master; a key of a
        // slot being migrated (SCAN lists the importing master's keys too) follows its MOVED or ASK on its own.
        const counts = await this.within(
          `drop of ${keys.length} keys`,
          this.routed(
            keys.length,
            (i) => keys[i]!,
            (pipeline, i) => pipeline.unlink(keys[i]!),
            (i) => this.client.unlink(keys[i]!),
          ),
        ).catch((error: Error) => {
          throw new Error(`Redis Cluster: dropping version ${version} of ${view} (keys found on ${nodeName(node)}) failed: ${error.message}`, { cause: error });
        });
        for (const count of counts) removed += Number(count);
      } while (cursor !== '0');
    }
    // The mark last: a drop cut short leaves it, so the version still reads as used.
    const mark = hotVersionMark(view, version);
    await this.within<unknown>('drop of a version mark', options.release ? this.client.unlink(mark) : this.client.set(mark, 'dropped', 'EX', markAfterDropSeconds(this.fillTtlSeconds)));
    return removed;
  }

  async claimVersion(view: string, version: number): Promise<boolean> {
    if (!this.isReady()) await this.ready(this.timeoutMs);
    return (await this.within('version mark', this.client.set(hotVersionMark(view, version), '1', 'NX'))) === 'OK';
  }

  /** Every master must answer and see the cluster as healthy, so /readyz reports a failover in progress. */
  async ping(): Promise<void> {
    await this.within('health check', this.healthyMasters());
  }

  /**
   * Waits for the slot map and a ready connection to every master, so
   * start-up can say plainly that the cluster is unreachable and a sync does
   * not meet a connection still being made.
   */
  async ready(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!this.isReady()) {
      if (Date.now() >= deadline) {
        throw new RedisClusterTimeoutError(
          `the Redis Cluster did not become ready within ${timeoutMs} ms (client ${this.client.status}${this.lastErrorText()}; ` +
            'are the REDIS_CLUSTER_NODES seeds right, cluster_state ok, and REDIS_CLUSTER_PASSWORD and REDIS_CLUSTER_TLS as the nodes expect?)',
        );
      }
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  }

  private isReady(): boolean {
    if (this.client.status !== 'ready') return false;
    const masters = this.client.nodes('master');
    return masters.length > 0 && masters.every((node) => node.status === 'ready');
  }

  async close(): Promise<void> {
    this.client.disconnect();
  }

  /** The masters ioredis routes to, checked against the cluster's own view: all answer, all say cluster_state:ok, none is missing, and all run Redis 7+. */
  private async healthyMasters(): Promise<Redis[]> {
    if (this.client.status !== 'ready') throw new Error(`the Redis Cluster client is ${this.client.status}, not ready${this.lastErrorText()}`);
    const masters = this.client.nodes('master');
    if (masters.length === 0) throw new Error('the Redis Cluster client knows no master yet');
    const infos = await Promise.all(masters.map(async (node) => [node, String(await node.cluster('INFO'))] as const));
    for (const [node, info] of infos) {
      const state = /cluster_state:(\w+)/.exec(info)?.[1];
      if (state !== 'ok') throw new Error(`Redis Cluster node ${nodeName(node)} reports cluster_state:${state ?? 'unknown'}; a failover may be in progress`);
      const size = Number(/cluster_size:(\d+)/.exec(info)?.[1]);
      if (size !== masters.length) throw new Error(`Redis Cluster has ${size} masters serving slots but the client knows ${masters.length}; its slot map is being refreshed, retry shortly`);
    }
    await Promise.all(masters.filter((node) => !this.onRedis7.has(nodeName(node))).map(async (node) => {
      const version = /redis_version:(\S+)/.exec(String(await node.info('server')))?.[1] ?? 'unknown';
      if (!(Number(version.split('.')[0]) >= 7)) throw new Error(`Redis Cluster node ${nodeName(node)} runs Redis ${version}; the cluster hot tier needs Redis 7.0 or later (its batch reads use script flags): upgrade it`);
      this.onRedis7.add(nodeName(node));
    }));
    return masters;
  }

  /**
   * One key, straight to the connection of the master that owns its slot:
   * the cluster client's routing costs more CPU than the GET itself. A master
   * that no longer owns the slot answers MOVED (or ASK), and then the cluster
   * client, which follows redirections and refreshes its slot map, reads it.
   */
  private async getOne(key: string): Promise<Buffer | null> {
    const started = performance.now();
    const owner = this.client.slots[keySlot(key)]?.[0];
    const node = owner === undefined ? undefined : this.mastersByName().get(owner);
    if (!node || node.status !== 'ready') return this.within('read', this.client.getBuffer(key));
    this.checkNotTimedOut(node);
    try {
      // Bounded by the connection's command timeout: no deadline of our own to arm per read.
      const value = await node.getBuffer(key);
      if (this.timedOutUntil.size) this.timedOutUntil.delete(node);
      return value;
    } catch (error) {
      this.noteTimeout(node, error);
      if (NOT_HERE.test((error as Error).message)) return this.within('read', this.client.getBuffer(key), this.timeoutMs - (performance.now() - started));
      throw error;
    }
  }

  /** Fails at once a read that needs a master whose read timed out within masterRetryAfterMs. */
  private checkNotTimedOut(node: Redis): void {
    const until = this.timedOutUntil.get(node);
    if (until === undefined) return;
    if (Date.now() >= until) {
      // This read tries it again; the others keep failing at once until it answers (which clears the mark) or
      // times out (which marks the master again).
      this.timedOutUntil.set(node, Date.now() + this.timeoutMs + this.masterRetryAfterMs);
      return;
    }
    throw new RedisClusterTimeoutError(`Redis Cluster master ${nodeName(node)} did not answer a read within ${this.timeoutMs} ms; reads that need it fail at once for ${this.masterRetryAfterMs} ms`);
  }

  private noteTimeout(node: Redis, error: unknown): void {
    if ((error as Error).message === 'Command timed out') this.timedOutUntil.set(node, Date.now() + this.masterRetryAfterMs);
  }

  private noteError(error: Error): void {
    // 'Failed to refresh slots cache.' carries what the last node answered as lastNodeError; a certificate error comes
    // on its own, before the 'Connection is closed.' that follows it.
    const cause = (error as Error & { lastNodeError?: Error }).lastNodeError;
    const text = cause ? `${error.message} (${cause.message})` : error.message;
    this.recentErrors = [...this.recentErrors.filter((seen) => seen !== text), text].slice(-3);
  }

  private lastErrorText(): string {
    return this.recentErrors.length ? `; latest errors: ${this.recentErrors.join(' | ')}` : '';
  }

  /** Connections by host:port, as the slot map names them; rebuilt after any topology change. */
  private mastersByName(): Map<string, Redis> {
    if (!this.masters) this.masters = new Map(this.client.nodes('master').map((node) => [nodeName(node), node]));
    return this.masters;
  }

  /** Bounds a call, whatever ioredis does underneath (redirections, reconnection), so a failover costs at most this. */
  private within<T>(what: string, work: Promise<T>, ms = this.timeoutMs): Promise<T> {
    return withDeadline(work, ms, () => new RedisClusterTimeoutError(`Redis Cluster ${what} did not finish within ${this.timeoutMs} ms`));
  }
}

/**
 * Reads keys of any slots that one master owns, in one call. Redis 7 runs a
 * script only on keys it may touch there: a key of a slot this master does
 * not own (any more) fails the call with NOT_HERE's message, and keys are
 * passed as arguments, since declared keys must share one slot.
 */
const READ_SCRIPT = `#!lua flags=no-writes,allow-cross-slot-keys
local values = {}
for i = 1, #ARGV do values[i] = redis.call('GET', ARGV[i]) end
return values`;
const READ_SHA = createHash('sha1').update(READ_SCRIPT).digest('hex');
/** A master answered that a key is not its own: the slot map is stale (a failover, a resharding). */
const NOT_HERE = /^(MOVED|ASK) |non local key|do not hash to the same slot/;

async function readScript(node: Redis, keys: string[]): Promise<(Buffer | null)[]> {
  let values: unknown;
  try {
    values = await node.callBuffer('EVALSHA', READ_SHA, 0, ...keys);
  } catch (error) {
    // First use on this master (or after a restart or SCRIPT FLUSH): send the script itself, which loads it.
    if (!/^NOSCRIPT/.test((error as Error).message)) throw error;
    values = await node.callBuffer('EVAL', READ_SCRIPT, 0, ...keys);
  }
  // One value per key, or the read fails: a short reply must not turn the missing keys into misses.
  if (!Array.isArray(values) || values.length !== keys.length) {
    throw new Error(`Redis Cluster: ${nodeName(node)} answered a read of ${keys.length} keys with ${Array.isArray(values) ? `${values.length} values` : typeof values}`);
  }
  return values as (Buffer | null)[];
}

// CRC16-XMODEM, which Redis Cluster uses for key slots.
const CRC16 = (() => {
  const table = new Uint16Array(256);
  for (let i = 0; i < 256; i++) {
    let crc = i << 8;
    for (let bit = 0; bit < 8; bit++) crc = crc & 0x8000 ? ((crc << 1) ^ 0x1021) & 0xffff : (crc << 1) & 0xffff;
    table[i] = crc;
  }
  return table;
})();

/**
 * The cluster slot of a key: CRC16 of the key (of the part inside the first
 * non-empty {…}, if any) modulo 16384, over the key's UTF-8 bytes. The tests
 * check it against the server's CLUSTER KEYSLOT.
 */
export function keySlot(key: string): number {
  // The tag search works on the string: '{' and '}' are single bytes in UTF-8 and never part of another character.
  let start = 0;
  let end = key.length;
  const open = key.indexOf('{');
  if (open !== -1) {
    const close = key.indexOf('}', open + 1);
    if (close > open + 1) {
      start = open + 1;
      end = close;
    }
  }
  let crc = 0;
  for (let i = start; i < end; i++) {
    const code = key.charCodeAt(i);
    if (code > 0x7f) return crc16Utf8(key.slice(start, end));
    crc = ((crc << 8) & 0xffff) ^ CRC16[((crc >> 8) ^ code) & 0xff]!;
  }
  return crc & 0x3fff;
}

function crc16Utf8(text: string): number {
  let crc = 0;
  for (const byte of Buffer.from(text, 'utf8')) crc = ((crc << 8) & 0xffff) ^ CRC16[((crc >> 8) ^ byte) & 0xff]!;
  return crc & 0x3fff;
}

function nodeName(node: Redis): string {
  return `${node.options.host}:${node.options.port}`;
}
