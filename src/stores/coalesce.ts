// Owns merging concurrent single-key reads of a hot tier: the lookups that
// reach it within a few turns of the event loop become one multi-key read.
// Under load a turn carries many lookups, and one MGET (one script call per
// master on a cluster) of n keys costs far less CPU on both ends than n GETs:
// one command, one socket write, one reply, one wake-up of each Redis process
// involved.
//
// A read is sent at the end of a turn (setImmediate, after that turn's I/O
// callbacks) once it holds `fill` keys, or else after at most `holdTurns`
// turns. That hold is what makes it adapt: an idle loop turns in
// microseconds, so a lone lookup waits microseconds and is sent as a plain
// GET; a busy loop's turns each bring more lookups, so reads grow with the
// load, which matters most on a cluster, where each read is split over the
// masters. A batch that reaches `maxKeys` is sent at once. The command
// timeout counts from the send: a lookup waits at most those few turns more.

type Waiter = { resolve: (value: Buffer | null) => void; reject: (error: unknown) => void };

export interface CoalescerOptions {
  /** A read is never larger than this: more lookups are sent in several reads. */
  readonly maxKeys?: number;
  /** A read with this many keys is sent at the end of the turn it reached them in. */
  readonly fill?: number;
  /** Turns a smaller read waits for more lookups, at most, before it is sent anyway. */
  readonly holdTurns?: number;
}

export class ReadCoalescer {
  private keys: string[] = [];
  private waiters: Waiter[] = [];
  private scheduled = false;
  /** Turns the pending read has waited so far. */
  private held = 0;
  private readonly maxKeys: number;
  private readonly fill: number;
  private readonly holdTurns: number;

  constructor(
    /** One key. */
    private readonly readOne: (key: string) => Promise<Buffer | null>,
    /** Several keys, values in their order. */
    private readonly readMany: (keys: string[]) => Promise<(Buffer | null)[]>,
    options: CoalescerOptions = {},
  ) {
    this.maxKeys = options.maxKeys ?? 128;
    this.fill = Math.min(options.fill ?? 32, this.maxKeys);
    this.holdTurns = options.holdTurns ?? 4;
  }

  get(key: string): Promise<Buffer | null> {
    return new Promise((resolve, reject) => {
      this.keys.push(key);
      this.waiters.push({ resolve, reject });
      if (this.keys.length >= this.maxKeys) this.send();
      else if (!this.scheduled) {
        this.scheduled = true;
        setImmediate(this.endOfTurn);
      }
    });
  }

  private readonly endOfTurn = (): void => {
    if (this.keys.length > 0 && this.keys.length < this.fill && this.held < this.holdTurns) {
      this.held++;
      setImmediate(this.endOfTurn);
      return;
    }
    this.scheduled = false;
    this.send();
  };

  private send(): void {
    const { keys, waiters } = this;
    this.held = 0;
    if (keys.length === 0) return;
    this.keys = [];
    this.waiters = [];
    // Every waiter of the read gets its answer or its error (each lookup then falls back alone),
    // even if a read throws rather than rejects.
    const fail = (error: unknown) => waiters.forEach((waiter) => waiter.reject(error));
    try {
      if (keys.length === 1) this.readOne(keys[0]!).then(waiters[0]!.resolve, fail);
      else
        this.readMany(keys).then((values) => {
          // One value per key, or every lookup fails (and falls back): a short reply must not read as misses.
          if (values.length !== keys.length) fail(new Error(`a read of ${keys.length} keys answered ${values.length} values`));
          else waiters.forEach((waiter, i) => waiter.resolve(values[i]!));
        }, fail);
    } catch (error) {
      fail(error);
    }
  }
}
