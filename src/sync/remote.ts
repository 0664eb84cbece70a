// Owns the bridge that lets a sync child process use stores that live in its
// parent (the embedded PGlite and in-process hot tier cannot be shared any other
// way). The child gets a Database and a HotTier whose calls travel over the IPC
// channel; the parent serves them and, if the child dies, rolls back its open
// transaction, aborts its COPY and releases its locks.
import type { CopyStream, Database, LockResult, QueryOptions, Queryable } from '../stores/database.js';
import type { HotTier } from '../stores/hot-tier.js';

export type Call = { t: 'call'; id: number; op: string; args: unknown[] };
export type Reply = { t: 'reply'; id: number; ok: true; value: unknown } | { t: 'reply'; id: number; ok: false; error: { name: string; message: string; code?: string } };

type Channel = { send(message: unknown): void; on(event: 'message', listener: (message: unknown) => void): void };

/** Child side: calls the parent and waits for its reply. */
export class RemoteStores {
  private nextId = 1;
  private readonly pending = new Map<number, { resolve(value: unknown): void; reject(error: Error): void }>();

  constructor(private readonly channel: Channel) {
    channel.on('message', (message) => {
      const reply = message as Reply;
      if (reply?.t !== 'reply') return;
      const waiter = this.pending.get(reply.id);
      if (!waiter) return;
      this.pending.delete(reply.id);
      if (reply.ok) waiter.resolve(reply.value);
      else waiter.reject(Object.assign(new Error(reply.error.message), { name: reply.error.name, code: reply.error.code }));
    });
  }

  call<T>(op: string, ...args: unknown[]): Promise<T> {
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (value: unknown) => void, reject });
      this.channel.send({ t: 'call', id, op, args } satisfies Call);
    });
  }

  database(kind: Database['kind']): Database {
    const call = this.call.bind(this);
    return {
      kind,
      query: <R>(text: string, params?: readonly unknown[], options?: QueryOptions) => call<R[]>('db.query', text, params, options),
      async transaction<T>(fn: (tx: Queryable) => Promise<T>): Promise<T> {
        const tx = await call<number>('tx.begin');
        try {
          const value = await fn({ query: <R>(text: string, params?: readonly unknown[], options?: QueryOptions) => call<R[]>('tx.query', tx, text, params, options) });
          await call('tx.end', tx, true);
          return value;
        } catch (error) {
          await call('tx.end', tx, false).catch(() => undefined);
          throw error;
        }
      },
      async openCopy(table: string, columns: readonly string[]): Promise<CopyStream> {
        const copy = await call<number>('copy.open', table, columns);
        return {
          write: (csv) => call('copy.write', copy, csv),
          finish: () => call<number>('copy.finish', copy),
          abort: (reason) => call('copy.abort', copy, reason.message),
        };
      },
      async withAdvisoryLock<T>(key: string, fn: () => Promise<T>): Promise<LockResult<T>> {
        if (!(await call<boolean>('lock.acquire', key))) return { acquired: false };
        try {
          return { acquired: true, value: await fn() };
        } finally {
          await call('lock.release', key);
        }
      },
      ping: () => call('db.ping'),
      close: async () => undefined,
    };
  }

  hotTier(kind: HotTier['kind']): HotTier {
    const call = this.call.bind(this);
    return {
      kind,
      get: (keys) => call('hot.get', keys),
      set: (entries, ttl) => call('hot.set', entries, ttl),
      claimVersion: (view, version) => call('hot.claimVersion', view, version),
      dropVersion: (view, version, options) => call('hot.dropVersion', view, version, options),
      ping: () => call('hot.ping'),
      close: async () => undefined,
    };
  }
}

/** Parent side: serves one child's calls against the real stores. */
export class StoreHost {
  private nextHandle = 1;
  /** Set once the child is gone (release): what opens after that is undone at once. */
  private released = false;
  private readonly transactions = new Map<number, { tx: Queryable; end(commit: boolean): void; done: Promise<unknown> }>();
  private readonly copies = new Map<number, CopyStream>();
  private readonly locks = new Map<string, { release(): void; done: Promise<unknown> }>();

  constructor(
    private readonly db: Database,
    private readonly hot: HotTier,
  ) {}

  async handle(call: Call): Promise<Reply> {
    try {
      return { t: 'reply', id: call.id, ok: true, value: await this.dispatch(call.op, call.args) };
    } catch (error) {
      const e = error as Error & { code?: string };
      return { t: 'reply', id: call.id, ok: false, error: { name: e.name, message: e.message, code: e.code } };
    }
  }

  private async dispatch(op: string, a: unknown[]): Promise<unknown> {
    switch (op) {
      case 'db.query':
        return this.db.query(a[0] as string, a[1] as unknown[], a[2] as QueryOptions);
      case 'db.ping':
        return this.db.ping();
      case 'tx.begin':
        return this.beginTransaction();
      case 'tx.query':
        return this.transactions.get(a[0] as number)!.tx.query(a[1] as string, a[2] as unknown[], a[3] as QueryOptions);
      case 'tx.end': {
        const tx = this.transactions.get(a[0] as number)!;
        this.transactions.delete(a[0] as number);
        tx.end(a[1] as boolean);
        return tx.done;
      }
      case 'copy.open': {
        const handle = this.nextHandle++;
        const copy = await this.db.openCopy(a[0] as string, a[1] as string[]);
        if (this.released) {
          await copy.abort(new Error('sync process exited'));
          throw new Error('the sync process exited');
        }
        this.copies.set(handle, copy);
        return handle;
      }
      case 'copy.write':
        return this.copies.get(a[0] as number)!.write(a[1] as string);
      case 'copy.finish': {
        const copy = this.copies.get(a[0] as number)!;
        this.copies.delete(a[0] as number);
        return copy.finish();
      }
      case 'copy.abort': {
        const copy = this.copies.get(a[0] as number);
        this.copies.delete(a[0] as number);
        return copy?.abort(new Error(a[1] as string));
      }
      case 'lock.acquire':
        return this.acquireLock(a[0] as string);
      case 'lock.release': {
        const lock = this.locks.get(a[0] as string);
        this.locks.delete(a[0] as string);
        lock?.release();
        return lock?.done;
      }
      case 'hot.get':
        return this.hot.get(a[0] as string[]);
      case 'hot.set':
        return this.hot.set(a[0] as [string, Buffer][], a[1] as number | undefined);
      case 'hot.claimVersion':
        return this.hot.claimVersion(a[0] as string, a[1] as number);
      case 'hot.dropVersion':
        return this.hot.dropVersion(a[0] as string, a[1] as number, a[2] as { release?: boolean } | undefined);
      case 'hot.ping':
        return this.hot.ping();
      default:
        throw new Error(`unknown store operation ${op}`);
    }
  }

  private beginTransaction(): Promise<number> {
    const handle = this.nextHandle++;
    let end!: (commit: boolean) => void;
    const ended = new Promise<boolean>((r) => (end = r));
    let opened!: (tx: Queryable) => void;
    const open = new Promise<Queryable>((r) => (opened = r));
    const done = this.db
      .transaction(async (tx) => {
        opened(tx);
        if (!(await ended)) throw new RolledBack();
      })
      .catch((error: Error) => {
        if (!(error instanceof RolledBack)) throw error;
      });
    // The callback may run before `done` exists, so the entry is made here, once both do.
    return Promise.race([open, done.then(() => Promise.reject(new Error('transaction ended before it began')))]).then((tx) => {
      // Opened only after the child was gone (it waited for the one session): rolled back at once, or it would hold
      // the session, and every query of the server, for good.
      if (this.released) {
        end(false);
        throw new Error('the sync process exited');
      }
      this.transactions.set(handle, { tx, end, done });
      return handle;
    });
  }

  private acquireLock(key: string): Promise<boolean> {
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    let acquired!: () => void;
    const gotLock = new Promise<true>((r) => (acquired = () => r(true)));
    const done = this.db.withAdvisoryLock(key, async () => {
      acquired();
      await held;
    });
    return Promise.race([gotLock, done.then((result) => result.acquired)]).then((ok) => {
      if (ok && this.released) {
        release();
        return false;
      }
      if (ok) this.locks.set(key, { release, done });
      return ok;
    });
  }

  /** The child is gone: undo whatever it left open, and whatever it asked for that opens later. */
  async release(): Promise<void> {
    this.released = true;
    for (const copy of this.copies.values()) await copy.abort(new Error('sync process exited')).catch(() => undefined);
    this.copies.clear();
    for (const tx of this.transactions.values()) tx.end(false);
    await Promise.allSettled([...this.transactions.values()].map((tx) => tx.done));
    this.transactions.clear();
    for (const lock of this.locks.values()) lock.release();
    await Promise.allSettled([...this.locks.values()].map((lock) => lock.done));
    this.locks.clear();
  }
}

class RolledBack extends Error {}
