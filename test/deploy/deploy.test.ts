// The deployment descriptions (deploy/) cannot be run here (no container
// engine), so this checks what can be checked offline: every file is valid
// YAML; every environment variable they give our image exists in the config
// schema; the probes point at routes the server really answers; image, ports
// and commands agree with the Dockerfile; the files they mount exist; the
// Prometheus configuration passes promtool with the repository's rules.
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { mkdtemp, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import YAML from 'yaml';
import { ENV_KEYS, loadConfig } from '../../src/config/index.js';
import { startServer, type RunningServer } from '../../src/server.js';
import { serverConfig } from '../support/fixtures.js';

const root = path.resolve(import.meta.dirname, '../..');
const deploy = path.join(root, 'deploy');
const IMAGE = 'feature-serving-api';

// Parsed YAML, walked loosely: the assertions are the schema.
type Obj = Record<string, any>;

function yamlFiles(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const full = path.join(dir, name);
    if (statSync(full).isDirectory()) return yamlFiles(full);
    return /\.ya?ml$/.test(name) ? [full] : [];
  });
}

/** Every document of a file, parsed strictly (Compose's `<<` merge keys resolved). */
function documents(file: string): Obj[] {
  const docs = YAML.parseAllDocuments(readFileSync(file, 'utf8'), { merge: true, uniqueKeys: true });
  for (const doc of docs) expect({ file, errors: doc.errors.map((e) => e.message) }).toEqual({ file, errors: [] });
  return docs.map((doc) => doc.toJS() as Obj).filter((doc) => doc !== null);
}

const compose = () => documents(path.join(deploy, 'docker-compose.yml'))[0]!;
const k8s = () => readdirSync(path.join(deploy, 'k8s')).flatMap((name) => documents(path.join(deploy, 'k8s', name)));
const ours = (image: unknown) => typeof image === 'string' && (image === IMAGE || image.startsWith(`${IMAGE}:`));

/** What the Dockerfile's final stage says: exposed port, PORT, the command, the health check path. */
function dockerfile() {
  const text = readFileSync(path.join(root, 'Dockerfile'), 'utf8');
  const final = text.slice(text.lastIndexOf('\nFROM '));
  return {
    expose: Number(/^EXPOSE (\d+)/m.exec(final)?.[1]),
    port: Number(/^ENV .*\bPORT=(\d+)/m.exec(final)?.[1]),
    cmd: JSON.parse(/^CMD (\[.*\])$/m.exec(final)![1]!) as string[],
    healthPath: /127\.0\.0\.1:'[^)]*?'(\/[a-z]+)'/.exec(final)?.[1] ?? /(\/healthz|\/readyz)/.exec(final)?.[1],
  };
}

/** A command run in our image must start one of its compiled entry points (dist/x.js from src/x.ts). */
function expectRealEntryPoint(command: string[]) {
  const script = command.find((part) => /^dist\/.+\.js$/.test(part));
  expect(script, `command ${JSON.stringify(command)} names no dist/*.js entry point`).toBeDefined();
  expect(existsSync(path.join(root, script!.replace(/^dist\//, 'src/').replace(/\.js$/, '.ts')))).toBe(true);
}

describe('deployment descriptions', () => {
  it('are all valid YAML, and there are Compose and Kubernetes ones', () => {
    const files = yamlFiles(deploy);
    expect(files.map((f) => path.relative(deploy, f))).toEqual(expect.arrayContaining(['docker-compose.yml', 'k8s/api.yaml', 'k8s/sync.yaml', 'k8s/config.yaml']));
    for (const file of files) expect(documents(file).length).toBeGreaterThan(0);
  });

  it('set only environment variables that the config schema defines, on our image', () => {
    const known = new Set(ENV_KEYS);
    const set: { where: string; name: string }[] = [];
    for (const [name, service] of Object.entries(compose().services as Obj)) {
      if (!ours(service.image)) continue;
      const env = service.environment ?? {};
      const names = Array.isArray(env) ? env.map((e: string) => e.split('=')[0]!) : Object.keys(env);
      set.push(...names.map((n: string) => ({ where: `compose service ${name}`, name: n })));
    }
    const docs = k8s();
    const configMaps = new Map(docs.filter((d) => d.kind === 'ConfigMap').map((d) => [d.metadata.name, Object.keys(d.data ?? {})]));
    const secrets = new Map(docs.filter((d) => d.kind === 'Secret').map((d) => [d.metadata.name, Object.keys({ ...d.data, ...d.stringData })]));
    let containers = 0;
    for (const doc of docs.filter((d) => d.spec?.template?.spec?.containers)) {
      for (const container of doc.spec.template.spec.containers as Obj[]) {
        if (!ours(container.image)) continue;
        containers++;
        const where = `${doc.kind} ${doc.metadata.name}`;
        set.push(...(container.env ?? []).map((e: Obj) => ({ where, name: e.name as string })));
        for (const from of container.envFrom ?? []) {
          const keys = from.configMapRef ? configMaps.get(from.configMapRef.name) : secrets.get(from.secretRef.name);
          expect(keys, `${where} takes its environment from ${JSON.stringify(from)}, which deploy/k8s does not define`).toBeDefined();
          set.push(...keys!.map((name) => ({ where: `${where} (envFrom)`, name })));
        }
      }
    }
    expect(containers).toBeGreaterThanOrEqual(2);
    expect(set.length).toBeGreaterThan(10);
    expect(set.filter((s) => !known.has(s.name))).toEqual([]);
  });

  it('give our processes environments the server accepts as they are (values too, not only names)', () => {
    const environments: { where: string; env: Record<string, string> }[] = [];
    for (const [name, service] of Object.entries(compose().services as Obj)) {
      if (!ours(service.image)) continue;
      const env = service.environment ?? {};
      environments.push({ where: `compose service ${name}`, env: Array.isArray(env) ? Object.fromEntries(env.map((e: string) => [e.split('=')[0], e.slice(e.indexOf('=') + 1)])) : Object.fromEntries(Object.entries(env).map(([k, v]) => [k, String(v)])) });
    }
    const docs = k8s();
    const data = (kind: string, name: string) => {
      const doc = docs.find((d) => d.kind === kind && d.metadata.name === name)!;
      return Object.fromEntries(Object.entries({ ...doc.data, ...doc.stringData }).map(([k, v]) => [k, kind === 'Secret' && doc.data?.[k] ? Buffer.from(String(v), 'base64').toString() : String(v)]));
    };
    for (const doc of docs.filter((d) => d.spec?.template?.spec?.containers)) {
      for (const container of doc.spec.template.spec.containers as Obj[]) {
        if (!ours(container.image)) continue;
        const env: Record<string, string> = {};
        for (const from of container.envFrom ?? []) Object.assign(env, from.configMapRef ? data('ConfigMap', from.configMapRef.name) : data('Secret', from.secretRef.name));
        for (const e of container.env ?? []) if (e.value !== undefined) env[e.name] = String(e.value);
        environments.push({ where: `${doc.kind} ${doc.metadata.name}`, env });
      }
    }
    expect(environments.length).toBeGreaterThanOrEqual(3);
    for (const { where, env } of environments) {
      // Placeholders such as ${VAR} in Compose stand for a value given at deploy time; any URL will do here.
      const resolved = Object.fromEntries(Object.entries(env).map(([k, v]) => [k, v.replace(/\$\{[^}]+\}/g, 'x')]));
      expect(() => loadConfig(resolved), where).not.toThrow();
    }
  });

  it('use the Dockerfile\'s image, port and entry points', () => {
    const docker = dockerfile();
    expect(docker.expose).toBe(8080);
    expect(docker.port).toBe(docker.expose);
    expectRealEntryPoint(docker.cmd);
    const { services } = compose();
    const built = Object.entries(services as Obj).filter(([, s]) => s.build);
    expect(built.length).toBeGreaterThan(0);
    for (const [name, service] of built) {
      expect({ name, image: ours(service.image) }).toEqual({ name, image: true });
      expect(existsSync(path.resolve(deploy, service.build.context, service.build.dockerfile ?? 'Dockerfile'))).toBe(true);
    }
    expect(services.api.environment.PORT ?? String(docker.port)).toBe(String(docker.expose));
    expect(services.api.ports.every((p: string) => String(p).endsWith(`:${docker.expose}`))).toBe(true);
    for (const service of Object.values(services as Obj)) {
      if (ours(service.image) && Array.isArray(service.command)) {
        const script = (service.command as string[]).join(' ');
        for (const match of script.matchAll(/dist\/[\w/-]+\.js/g)) expect(existsSync(path.join(root, match[0].replace(/^dist\//, 'src/').replace(/\.js$/, '.ts')))).toBe(true);
      }
    }
    for (const doc of k8s().filter((d) => d.spec?.template?.spec?.containers)) {
      for (const container of doc.spec.template.spec.containers as Obj[]) {
        expect(ours(container.image)).toBe(true);
        // The server's pods listen on the image's port; a one-shot command (the API key Job) listens on none.
        if (!container.command || container.command.includes('dist/server.js')) {
          expect(container.ports).toEqual([{ name: 'http', containerPort: docker.expose }]);
          const port = (container.env as Obj[]).find((e) => e.name === 'PORT')?.value;
          expect(port).toBe(String(docker.expose));
        }
        if (container.command) expectRealEntryPoint(container.command);
        // The image runs as the unprivileged `node` user (uid 1000).
        expect(doc.spec.template.spec.securityContext).toMatchObject({ runAsNonRoot: true, runAsUser: 1000 });
      }
    }
  });

  it('Kubernetes: a one-shot Job creates the first API key with the settings the pods get, never retried into a second key', () => {
    const docs = k8s();
    const job = docs.find((d) => d.kind === 'Job' && d.metadata.name === 'feature-api-key');
    expect(job).toBeDefined();
    expect(job!.spec.backoffLimit).toBe(0);
    expect(job!.spec.template.spec.restartPolicy).toBe('Never');
    const [container] = job!.spec.template.spec.containers as Obj[];
    expect(container!.command).toEqual(['node', 'dist/cli/ctl.js', 'keys', 'create', 'api', '--views', '*']);
    const api = docs.find((d) => d.kind === 'Deployment' && d.metadata.name === 'feature-serving-api');
    expect(container!.envFrom).toEqual(api!.spec.template.spec.containers[0].envFrom);
  });

  it('Kubernetes: readiness on /readyz, liveness on /healthz, resource requests, a PodDisruptionBudget over the API pods, syncs in one place', () => {
    const docs = k8s();
    const deployments = docs.filter((d) => d.kind === 'Deployment');
    for (const deployment of deployments) {
      for (const container of deployment.spec.template.spec.containers as Obj[]) {
        expect(container.readinessProbe.httpGet).toEqual({ path: '/readyz', port: 'http' });
        expect(container.livenessProbe.httpGet).toEqual({ path: '/healthz', port: 'http' });
        expect(container.resources.requests).toMatchObject({ cpu: expect.anything(), memory: expect.anything() });
      }
      // Pods run the server's selector labels.
      expect(deployment.spec.template.metadata.labels).toMatchObject(deployment.spec.selector.matchLabels);
    }
    const env = (deployment: Obj) => Object.fromEntries((deployment.spec.template.spec.containers[0].env as Obj[]).map((e) => [e.name, e.value]));
    const api = deployments.find((d) => d.metadata.name === 'feature-serving-api')!;
    const sync = deployments.find((d) => d.metadata.name === 'feature-sync')!;
    expect(env(api)).toMatchObject({ SCHEDULER_ENABLED: 'false' });
    expect(env(sync)).toMatchObject({ SCHEDULER_ENABLED: 'true', WEB_CONCURRENCY: '1' });
    expect(sync.spec).toMatchObject({ replicas: 1, strategy: { type: 'Recreate' } });
    // The API pods' WEB_CONCURRENCY matches their CPU request (the container sees all of the node's cores).
    expect(Number(env(api).WEB_CONCURRENCY)).toBe(Number(api.spec.template.spec.containers[0].resources.requests.cpu));
    const pdb = docs.find((d) => d.kind === 'PodDisruptionBudget')!;
    expect(pdb.spec.selector.matchLabels).toEqual(api.spec.selector.matchLabels);
    expect(pdb.spec.maxUnavailable ?? api.spec.replicas - pdb.spec.minAvailable).toBeLessThan(api.spec.replicas);
    const service = docs.find((d) => d.kind === 'Service')!;
    // The Service sends lookups to the API pods only, not to the sync singleton.
    expect(service.spec.selector).toEqual(api.spec.template.metadata.labels);
    expect(Object.entries(service.spec.selector).every(([k, v]) => sync.spec.template.metadata.labels[k] === v)).toBe(false);
    expect(service.spec.ports[0].targetPort).toBe('http');
    // Shutdown: Kubernetes waits longer than the server's own bound (grace + 5 s).
    const grace = Number(docs.find((d) => d.kind === 'ConfigMap')!.data.SHUTDOWN_GRACE_SECONDS);
    for (const deployment of deployments) expect(deployment.spec.template.spec.terminationGracePeriodSeconds).toBeGreaterThanOrEqual(grace + 5);
  });

  it('Compose: API replicas, Postgres primary and replica, a six-node Redis Cluster, Prometheus with the rules and Grafana with the dashboard, all mounted from the repository', () => {
    const { services } = compose();
    expect(services.api.deploy.replicas).toBeGreaterThanOrEqual(2);
    expect(services['postgres-replica'].command.join(' ')).toMatch(/pg_basebackup -h postgres .* -R/);
    const redisNodes = Object.entries(services as Obj).filter(([name]) => /^redis-\d+$/.test(name));
    expect(redisNodes).toHaveLength(6);
    for (const [, node] of redisNodes) expect(node.command.join(' ')).toContain('--cluster-enabled yes');
    expect(services['redis-cluster-init'].command.join(' ')).toContain('--cluster create');
    expect(services.api.environment.REDIS_CLUSTER_NODES.split(',')).toEqual(redisNodes.map(([name]) => `${name}:6379`));
    for (const [name, service] of Object.entries(services as Obj)) {
      for (const volume of (service.volumes ?? []) as string[]) {
        const [source] = volume.split(':');
        if (!source!.startsWith('.')) continue; // a named volume
        expect({ name, source, exists: existsSync(path.resolve(deploy, source!)) }).toEqual({ name, source, exists: true });
      }
    }
    const mounts = (name: string) => Object.fromEntries((services[name].volumes as string[]).map((v) => v.split(':')).map(([from, to]) => [path.relative(root, path.resolve(deploy, from!)), to]));
    expect(mounts('prometheus')).toMatchObject({ 'observability/prometheus/rules.yml': '/etc/prometheus/rules.yml', 'deploy/prometheus/prometheus.yml': '/etc/prometheus/prometheus.yml' });
    expect(mounts('grafana')).toMatchObject({ 'observability/grafana/feature-api.json': '/var/lib/grafana/dashboards/feature-api.json' });
    const prometheus = documents(path.join(deploy, 'prometheus/prometheus.yml'))[0]!;
    expect(prometheus.rule_files).toEqual(['/etc/prometheus/rules.yml']);
    expect(prometheus.scrape_configs[0].dns_sd_configs[0]).toMatchObject({ names: ['api'], port: 8080 });
    // Grafana: the dashboard's data source variable finds the provisioned default Prometheus.
    const provider = documents(path.join(deploy, 'grafana/provisioning/dashboards/feature-api.yml'))[0]!;
    expect(provider.providers[0].options.path).toBe('/var/lib/grafana/dashboards');
    const datasource = documents(path.join(deploy, 'grafana/provisioning/datasources/prometheus.yml'))[0]!.datasources[0];
    expect(datasource).toMatchObject({ type: 'prometheus', isDefault: true, url: 'http://prometheus:9090' });
    const dashboard = JSON.parse(readFileSync(path.join(root, 'observability/grafana/feature-api.json'), 'utf8')) as Obj;
    expect(dashboard.templating.list).toEqual(expect.arrayContaining([expect.objectContaining({ type: 'datasource', query: 'prometheus' })]));
  });

  it('Prometheus configuration passes promtool with the repository\'s rules', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'fs-deploy-'));
    const config = readFileSync(path.join(deploy, 'prometheus/prometheus.yml'), 'utf8').replace('/etc/prometheus/rules.yml', path.join(root, 'observability/prometheus/rules.yml'));
    await writeFile(path.join(dir, 'prometheus.yml'), config);
    const out = execFileSync('promtool', ['check', 'config', path.join(dir, 'prometheus.yml')], { encoding: 'utf8' });
    expect(out).toMatch(/SUCCESS/);
  });
});

describe('the probes answer on a real server', () => {
  let server: RunningServer;
  beforeAll(async () => {
    server = await startServer(serverConfig({}));
  });
  afterAll(async () => {
    await server?.close();
  });

  it('every probe path of the manifests and the Dockerfile is a route the server answers', async () => {
    const paths = new Set<string>([dockerfile().healthPath!]);
    for (const deployment of k8s().filter((d) => d.kind === 'Deployment')) {
      for (const container of deployment.spec.template.spec.containers as Obj[]) {
        for (const probe of ['readinessProbe', 'livenessProbe', 'startupProbe']) if (container[probe]) paths.add(container[probe].httpGet.path);
      }
    }
    expect([...paths].sort()).toEqual(['/healthz', '/readyz']);
    for (const probePath of paths) {
      const response = await fetch(`http://127.0.0.1:${server.port}${probePath}`);
      // No view is synced here, so /readyz says not ready (503): still the route, not a 404.
      expect({ probePath, status: response.status }).toEqual({ probePath, status: probePath === '/readyz' ? 503 : 200 });
      expect(((await response.json()) as { status: string }).status).toBe(probePath === '/readyz' ? 'not_ready' : 'ok');
    }
  });
});
