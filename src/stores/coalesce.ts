// Owns merging concurrent single-key reads of a hot tier: the lookups that
// reach it in one turn of the event loop become one multi-key read, sent once
// that turn's I/O callbacks have run (setImmediate, microseconds later). Under
// load a turn carries many lookups, and one MGET (one script call per master
// on a cluster) of n keys costs far less CPU on both ends than n GETs: one
// command, one reply, one timer. A lookup alone in its turn is a plain GET,
// sent at the end of that turn.

type Waiter = { resolve: (value: Buffer | null) => void; reject: (error: unknown) => void };

export class ReadCoalescer {
  private keys: string[] = [];
  private waiters: Waiter[] = [];
  private scheduled = false;

  constructor(
    /** One key. */
    private readonly readOne: (key: string) => Promise<Buffer | null>,
    /** Several keys, values in their order. */
    private readonly readMany: (keys: string[]) => Promise<(Buffer | null)[]>,
    /** A turn with more lookups than this sends them in several reads. */
    private readonly maxKeys = 128,
  ) {}

  get(key: string): Promise<Buffer | null> {
    return new Promise((resolve, reject) => {
      this.keys.push(key);
      this.waiters.push({ resolve, reject });
      if (this.keys.length >= this.maxKeys) this.flush();
      else if (!this.scheduled) {
        this.scheduled = true;
        setImmediate(this.flush);
      }
    });
  }

  private readonly flush = (): void => {
    this.scheduled = false;
    const { keys, waiters } = this;
    if (keys.length === 0) return;
    this.keys = [];
    this.waiters = [];
    // Every waiter of the read gets its answer or its error (each lookup then falls back alone),
    // even if a read throws rather than rejects.
    const fail = (error: unknown) => waiters.forEach((waiter) => waiter.reject(error));
    try {
      if (keys.length === 1) this.readOne(keys[0]!).then(waiters[0]!.resolve, fail);
      else this.readMany(keys).then((values) => waiters.forEach((waiter, i) => waiter.resolve(values[i] ?? null)), fail);
    } catch (error) {
      fail(error);
    }
  };
}
