// Load generator for the benchmark, in its own process: autocannon against one
// route with random entity ids, bounded in time. Prints one JSON line:
// { rps, p50, p99, errors, non2xx }. With RATE set, offers that many requests
// per second in all (a fixed offered rate) instead of as many as possible.
// Usage: node --import tsx bench/load.ts <url-template with {id}> <ids: count> <seconds> [connections] [method] [batch size]
import autocannon from 'autocannon';

const [template, countText, secondsText, connectionsText = '32', method = 'GET', batchText = '0'] = process.argv.slice(2);
const count = Number(countText);
const batch = Number(batchText);
const id = () => `e${String(1 + Math.floor(Math.random() * count)).padStart(7, '0')}`;
const rate = process.env.RATE ? Number(process.env.RATE) : undefined;

const result = await autocannon({
  url: template!.replace('{id}', 'e0000001'),
  connections: Number(connectionsText),
  duration: Number(secondsText),
  ...(rate ? { overallRate: rate } : {}),
  requests: [
    {
      method: method as 'GET' | 'POST',
      setupRequest: (request) => {
        if (batch > 0) {
          request.body = JSON.stringify({ view: 'bench', entity_ids: Array.from({ length: batch }, id) });
          request.headers = { ...request.headers, 'content-type': 'application/json' };
        } else {
          request.path = new URL(template!.replace('{id}', id())).pathname + new URL(template!).search;
        }
        return request;
      },
    },
  ],
});
process.stdout.write(
  JSON.stringify({ rps: result.requests.average, p50: result.latency.p50, p99: result.latency.p99, errors: result.errors + result.timeouts, non2xx: result.non2xx }) + '\n',
);
