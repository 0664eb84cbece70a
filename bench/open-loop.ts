// Open-loop load at a fixed offered rate, for the benchmark's latency figures:
// requests are sent on a steady schedule (every millisecond, the ones due),
// whatever the server's pace, over keep-alive connections on loopback; a
// request that finds every connection busy waits, and its latency counts from
// when it was due (no coordinated omission). Latencies are kept in
// microseconds. (autocannon's rate mode sends each second's quota in a burst
// at the start of the second and keeps latency in whole milliseconds, which
// makes a p99 of 2 ms against 3 ms a 1.5× "difference".)
// Usage: node --import tsx bench/open-loop.ts <url-template with {id}> <ids: count> <seconds> <rate> [connections]
// Prints one JSON line: { rps, p50, p99, errors, non2xx, late } (latencies in ms, with decimals).
import net from 'node:net';

const [template, countText, secondsText, rateText, connectionsText = '32'] = process.argv.slice(2);
const url = new URL(template!.replace('{id}', 'ID_PLACEHOLDER'));
const count = Number(countText);
const seconds = Number(secondsText);
const rate = Number(rateText);
const connections = Number(connectionsText);
const pathTemplate = url.pathname + url.search;
const requestFor = () => {
  const id = `e${String(1 + Math.floor(Math.random() * count)).padStart(7, '0')}`;
  return `GET ${pathTemplate.replace('ID_PLACEHOLDER', id)} HTTP/1.1\r\nHost: ${url.host}\r\n\r\n`;
};

const latencies = new Float64Array(Math.ceil(rate * seconds) + 16);
let recorded = 0;
let errors = 0;
let non2xx = 0;
const queue: number[] = []; // due times of requests waiting for a free connection

interface Conn {
  socket: net.Socket;
  busySince: number | null;
  buffer: Buffer;
}

function complete(conn: Conn, status: number): void {
  if (status < 200 || status >= 300) non2xx++;
  if (recorded < latencies.length) latencies[recorded++] = (performance.now() - conn.busySince!) * 1000;
  conn.busySince = null;
  const next = queue.shift();
  if (next !== undefined) send(conn, next);
}

function parse(conn: Conn): void {
  for (;;) {
    const end = conn.buffer.indexOf('\r\n\r\n');
    if (end < 0) return;
    const head = conn.buffer.toString('latin1', 0, end);
    const status = Number(head.slice(9, 12));
    const length = Number(/\r\ncontent-length:\s*(\d+)/i.exec(head)?.[1] ?? 0);
    if (conn.buffer.length < end + 4 + length) return;
    conn.buffer = conn.buffer.subarray(end + 4 + length);
    complete(conn, status);
  }
}

function send(conn: Conn, dueAt: number): void {
  conn.busySince = dueAt;
  conn.socket.write(requestFor());
}

const conns: Conn[] = await Promise.all(
  Array.from(
    { length: connections },
    () =>
      new Promise<Conn>((resolve, reject) => {
        const socket = net.connect(Number(url.port), url.hostname, () => resolve(conn));
        socket.setNoDelay(true);
        const conn: Conn = { socket, busySince: null, buffer: Buffer.alloc(0) };
        socket.on('data', (chunk: Buffer) => {
          conn.buffer = conn.buffer.length ? Buffer.concat([conn.buffer, chunk]) : chunk;
          parse(conn);
        });
        socket.on('error', (error) => {
          errors++;
          reject(error);
        });
      }),
  ),
);

const start = performance.now();
let scheduled = 0;
const total = Math.floor(rate * seconds);
await new Promise<void>((resolve) => {
  const tick = setInterval(() => {
    const now = performance.now();
    const due = Math.min(total, Math.floor(((now - start) / 1000) * rate));
    for (; scheduled < due; scheduled++) {
      const dueAt = start + (scheduled * 1000) / rate;
      const idle = conns.find((c) => c.busySince === null);
      if (idle) send(idle, dueAt);
      else queue.push(dueAt);
    }
    if (scheduled >= total) {
      clearInterval(tick);
      resolve();
    }
  }, 1);
});
// Let the last requests finish (bounded).
const deadline = performance.now() + 5000;
while ((queue.length || conns.some((c) => c.busySince !== null)) && performance.now() < deadline) await new Promise((r) => setTimeout(r, 5));
const elapsed = (performance.now() - start) / 1000;
const late = queue.length + conns.filter((c) => c.busySince !== null).length;
for (const c of conns) c.socket.destroy();

const sorted = latencies.subarray(0, recorded).sort();
const pct = (p: number) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]! / 1000 : 0);
process.stdout.write(JSON.stringify({ rps: recorded / elapsed, p50: Math.round(pct(0.5) * 1000) / 1000, p99: Math.round(pct(0.99) * 1000) / 1000, errors, non2xx, late }) + '\n');
