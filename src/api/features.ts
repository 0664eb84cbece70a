// Owns the feature routes: GET /features/v1/{entity_id} and POST
// /features/v1/batch. Validation first, then one read through the
// FeatureReader, then the body with its freshness metadata.
import { Hono } from 'hono';
import { bodyLimit } from 'hono/body-limit';
import { z } from 'zod';
import { withDeadline } from '../deadline.js';
import { ENTITY_ID_PATTERN, type Deprecation } from '../jobs/definition.js';
import { mayRead, type KeyGrant } from '../stores/api-keys.js';
import type { Catalog, ServedVersion, ServedView } from '../stores/catalog.js';
import { StoreUnavailableError, VersionGoneError, type FeatureSource, type FeatureRow, type ReadResult } from '../stores/reader.js';
import type { Metrics } from '../observability/metrics.js';
import { deprecationHeaders, entityTag, freshnessHeaders, freshnessOf, matchesIfNoneMatch } from './freshness.js';
import { ApiError } from './problem.js';
import { endOfTurn, respondJson, responseHeaders } from './respond.js';

export interface FeatureRouteDeps {
  readonly catalog: Catalog;
  readonly reader: FeatureSource;
  readonly metrics: Metrics;
  readonly batchMaxIds: number;
  /** A lookup's budget; a read still unanswered then becomes a 503. */
  readonly requestTimeoutMs?: number;
}

const entityIdRegex = new RegExp(ENTITY_ID_PATTERN);

export function checkEntityId(id: unknown, where: string): string {
  if (typeof id !== 'string' || !entityIdRegex.test(id)) {
    const shown = typeof id === 'string' ? JSON.stringify(id.length > 40 ? `${id.slice(0, 40)}…` : id) : typeof id;
    throw new ApiError('invalid-entity-id', `${where} ${shown} is not a valid entity id: expected 1 to 128 characters of letters, digits and _ . : @ - (not starting with . : @ -)`);
  }
  return id;
}

/** The views the caller may read (all of them when access is open). */
export function visibleViews(catalog: Catalog, grant: KeyGrant | undefined): ServedView[] {
  return catalog.list().filter((v) => !grant || mayRead(grant, v.job.view));
}

function viewNames(catalog: Catalog, grant: KeyGrant | undefined): string {
  return (
    visibleViews(catalog, grant)
      .map((v) => v.job.view)
      .join(', ') || 'none for this key'
  );
}

/** A view's deprecation as the caller may see it: its successor is named only to a key that may read that view. */
export function deprecationFor(deprecated: Deprecation, grant: KeyGrant | undefined): Deprecation {
  return deprecated.successor && grant && !mayRead(grant, deprecated.successor) ? { ...deprecated, successor: undefined } : deprecated;
}

/** The named view, if it exists and the caller may read it; checked before any read, so a 403 reveals nothing about entities. */
export function requireView(catalog: Catalog, name: string, grant: KeyGrant | undefined): ServedView {
  const view = catalog.get(name);
  if (view && grant && !mayRead(grant, name)) throw new ApiError('forbidden', `API key "${grant.name}" may not read view "${name}"`);
  if (!view) throw new ApiError('unknown-view', `there is no view "${name.slice(0, 60)}"; views: ${viewNames(catalog, grant)}`);
  return view;
}

function requireVersion(view: ServedView): ServedVersion {
  if (!view.current) {
    throw new ApiError('view-not-ready', `view "${view.job.view}" has no published version yet; its first sync has not succeeded`, {}, { 'Retry-After': '5' });
  }
  return view.current;
}

/** The requested features: their names, positions in the version, and JSON key prefixes (made once per request, not per entity). */
interface Selection {
  readonly names: string[];
  readonly indexes: number[];
  readonly prefixes: string[];
}

/** The requested features, or null for all of them. */
function selectFeatures(version: ServedVersion, names: readonly string[] | undefined): Selection | null {
  if (names === undefined) return null;
  const unique = [...new Set(names)];
  if (unique.length === 0 || unique.some((n) => n === '')) throw new ApiError('invalid-request', 'features must name at least one feature, separated by commas');
  const unknown = unique.filter((n) => !version.featureIndex.has(n));
  if (unknown.length) {
    throw new ApiError('unknown-feature', `view "${version.view}" has no feature ${unknown.map((n) => `"${n}"`).join(', ')}; features: ${[...version.featureIndex.keys()].join(', ')}`);
  }
  return { names: unique, indexes: unique.map((n) => version.featureIndex.get(n)!), prefixes: prefixesFor(unique) };
}

/** `{"name":` / `,"name":` for each feature of a version, made once per version. */
const namePrefixes = new WeakMap<ServedVersion, string[]>();

function prefixesFor(names: readonly string[]): string[] {
  return names.map((name, i) => `${i ? ',' : '{'}${JSON.stringify(name)}:`);
}

/** One stored value as JSON text. Stored values are scalars: numbers (finite: the sync refuses NaN and ±Infinity), strings, booleans, null. */
function valueJson(value: unknown): string {
  switch (typeof value) {
    case 'number':
      return Number.isFinite(value) ? String(value) : 'null';
    case 'string':
      return JSON.stringify(value);
    case 'boolean':
      return value ? 'true' : 'false';
    default:
      return value === null || value === undefined ? 'null' : (JSON.stringify(value) ?? 'null');
  }
}

/**
 * The `features` object of a row as JSON text, written straight from the stored values in the version's order:
 * no intermediate object per entity (a batch of 100 spent more time building and serialising those than reading them).
 */
function featuresJson(version: ServedVersion, row: FeatureRow, selection: Selection | null): string {
  let out = '';
  if (selection) {
    const { prefixes, indexes } = selection;
    for (let i = 0; i < prefixes.length; i++) out += prefixes[i]! + valueJson(row.values[indexes[i]!]);
  } else {
    let prefixes = namePrefixes.get(version);
    if (!prefixes) {
      prefixes = prefixesFor(version.features.map((f) => f.name));
      namePrefixes.set(version, prefixes);
    }
    for (let i = 0; i < prefixes.length; i++) out += prefixes[i]! + valueJson(row.values[i]);
  }
  return out ? `${out}}` : '{}';
}

/** Where a lookup's time went: each store read, and the whole request so far. */
function serverTiming(result: ReadResult, startedAt: number): string {
  const parts: string[] = [];
  if (result.timings.hot !== undefined) parts.push(`hot;dur=${result.timings.hot.toFixed(2)}`);
  if (result.timings.postgres !== undefined) parts.push(`pg;dur=${result.timings.postgres.toFixed(2)}`);
  parts.push(`total;dur=${(performance.now() - startedAt).toFixed(2)}`);
  return parts.join(', ');
}

export function featureRoutes(deps: FeatureRouteDeps): Hono {
  const { catalog, reader, metrics } = deps;
  const app = new Hono();

  const budget = deps.requestTimeoutMs ?? 1000;
  /** Reads one version; if it was reclaimed under us, follows the catalog to the current one once, within the same budget. */
  async function readVersion(view: ServedView, ids: readonly string[]): Promise<{ version: ServedVersion; result: ReadResult }> {
    const version = requireVersion(view);
    try {
      return { version, result: await reader.read(version, ids) };
    } catch (error) {
      if (!(error instanceof VersionGoneError)) throw error;
      try {
        await catalog.refresh();
        const current = requireVersion(catalog.get(view.job.view)!);
        return { version: current, result: await reader.read(current, ids) };
      } catch (again) {
        if (again instanceof ApiError || again instanceof StoreUnavailableError) throw again;
        // A 503 that the log explains, not an unexpected 500: Postgres cannot say which version is current, or the
        // version it names is gone too.
        throw new StoreUnavailableError(
          again instanceof VersionGoneError
            ? `version ${version.version} of view "${view.job.view}" was reclaimed while being read, and so was the one the catalog then named: ${again.message}`
            : `version ${version.version} of view "${view.job.view}" was reclaimed while being read, and the catalog could not be read again: ${(again as Error).message}`,
          { cause: again },
        );
      }
    }
  }

  /** The read, or a StoreUnavailableError once the request's budget is spent: never a hang. */
  async function read(view: ServedView, ids: readonly string[]): Promise<{ version: ServedVersion; result: ReadResult }> {
    const { version, result } = await withDeadline(readVersion(view, ids), budget, () => new StoreUnavailableError(`the stores did not answer within the ${budget} ms budget (REQUEST_TIMEOUT_MS)`));
    metrics.lookupsByTier.inc({ view: view.job.view, tier: result.tier }, ids.length);
    // Answers that took no I/O (memory) or came over many connections (Postgres) are sent with the turn's
    // other responses: writing each as soon as its request is read cost about 1.7x the CPU per lookup on
    // loopback (measured: memory 95 -> 50 us, Postgres 183 -> 140 us). A Redis answer already comes with
    // the others of its turn, in one reply (stores/coalesce.ts), and waiting longer only slowed it.
    if (result.tier !== 'redis') await endOfTurn();
    return { version, result };
  }

  /** Without ?view=, the one view that holds the entity (or the only view there is). */
  async function resolveView(entityId: string, grant: KeyGrant | undefined): Promise<{ view: ServedView; version: ServedVersion; row: FeatureRow | null; result: ReadResult }> {
    const views = visibleViews(catalog, grant);
    if (views.length === 0) throw new ApiError('forbidden', `API key "${grant?.name}" may not read any view`);
    if (views.length === 1) {
      const { version, result } = await read(views[0]!, [entityId]);
      return { view: views[0]!, version, row: result.rows[0] ?? null, result };
    }
    const ready = views.filter((v) => v.current);
    const reads = await Promise.all(ready.map(async (view) => ({ view, ...(await read(view, [entityId])) })));
    const holding = reads.filter((r) => r.result.rows[0]);
    if (holding.length > 1) {
      throw new ApiError('ambiguous-entity', `entity "${entityId}" is in several views (${holding.map((h) => h.view.job.view).join(', ')}); choose one with ?view=`, {
        views: holding.map((h) => h.view.job.view),
      });
    }
    if (holding.length === 0) {
      const pending = views.filter((v) => !v.current).map((v) => v.job.view);
      // An unsynced view might hold it: say so rather than claim it does not exist.
      if (pending.length) throw new ApiError('view-not-ready', `no published view holds entity "${entityId}", and ${pending.join(', ')} have no published version yet`, {}, { 'Retry-After': '5' });
      throw new ApiError('entity-not-found', `no view holds entity "${entityId}"; views: ${viewNames(catalog, grant)}`);
    }
    const only = holding[0]!;
    return { view: only.view, version: only.version, row: only.result.rows[0]!, result: only.result };
  }

  // Not GET: `batch` is a valid entity id, so GET /features/v1/batch is that entity's lookup.
  app.on(['PUT', 'PATCH', 'DELETE'], '/batch', () => {
    throw new ApiError('method-not-allowed', 'use POST for /features/v1/batch', {}, { Allow: 'POST' });
  });

  app.get('/:entity_id', async (c) => {
    const params = c.req.queries();
    for (const [key, values] of Object.entries(params)) {
      if (key !== 'view' && key !== 'features') throw new ApiError('invalid-request', `unknown query parameter "${key}"; accepted: view, features`);
      if (values.length > 1) throw new ApiError('invalid-request', `query parameter "${key}" is given ${values.length} times; give it once`);
    }
    const entityId = checkEntityId(c.req.param('entity_id'), 'path segment');
    const viewName = params.view?.[0];
    const featureNames = params.features?.[0]?.split(',').map((n) => n.trim());

    let view: ServedView;
    let version: ServedVersion;
    let row: FeatureRow | null;
    let result: ReadResult;
    const grant = c.get('grant');
    if (viewName !== undefined) {
      view = requireView(catalog, viewName, grant);
      requireVersion(view);
      selectFeatures(view.current!, featureNames); // reject bad selections before reading
      ({ version, result } = await read(view, [entityId]));
      row = result.rows[0] ?? null;
    } else {
      ({ view, version, row, result } = await resolveView(entityId, grant));
    }
    const selection = selectFeatures(version, featureNames);
    const headers = responseHeaders(c);
    headers['Feature-Tier'] = result.tier;
    headers['Server-Timing'] = serverTiming(result, c.get('startedAt'));
    // A caller of a deprecated view hears of it on a miss too.
    if (view.job.deprecated) deprecationHeaders(headers, deprecationFor(view.job.deprecated, grant), entityId);
    if (!row) throw new ApiError('entity-not-found', `view "${view.job.view}" has no entity "${entityId}" in version ${version.version}`);

    const now = Date.now();
    const meta = freshnessOf(view, version, now);
    freshnessHeaders(headers, view, version, meta, catalog.nextRun(view.job.view, now), now);
    const etag = entityTag(version, entityId, selection?.names ?? null);
    headers.ETag = etag;
    if (matchesIfNoneMatch(c.req.header('If-None-Match'), etag)) return respondJson(c, 304, null);
    return respondJson(
      c,
      200,
      `{"view":${JSON.stringify(view.job.view)},"entity_id":${JSON.stringify(entityId)},"event_time":${JSON.stringify(row.eventTime)},"features":${featuresJson(version, row, selection)},"metadata":${JSON.stringify(meta)}}`,
    );
  });

  const batchBody = z.strictObject({
    view: z.string().min(1).optional(),
    entity_ids: z.array(z.unknown()).min(1, 'expected at least one entity id').max(deps.batchMaxIds, `expected at most ${deps.batchMaxIds} entity ids`),
    features: z.array(z.string()).optional(),
  });

  app.post(
    '/batch',
    bodyLimit({
      // Every id at its longest, quoted, plus room for the rest of the body.
      maxSize: deps.batchMaxIds * 140 + 16 * 1024,
      onError: () => {
        throw new ApiError('payload-too-large', `the request body is larger than a batch of ${deps.batchMaxIds} ids can be`);
      },
    }),
    async (c) => {
      if (Object.keys(c.req.queries()).length) throw new ApiError('invalid-request', 'POST /features/v1/batch takes no query parameters; put view, entity_ids and features in the body');
      const type = c.req.header('Content-Type') ?? '';
      if (!/^application\/json\s*(;|$)/i.test(type)) throw new ApiError('unsupported-media-type', `send the batch as application/json (got ${type ? JSON.stringify(type) : 'no Content-Type'})`);
      let raw: unknown;
      try {
        raw = await c.req.json();
      } catch {
        throw new ApiError('invalid-request', 'the request body is not valid JSON');
      }
      const parsed = batchBody.safeParse(raw);
      if (!parsed.success) {
        const issues = parsed.error.issues.map((i) => `${i.path.join('.') || 'body'}: ${i.code === 'unrecognized_keys' ? `unknown field(s) ${i.keys.join(', ')}` : i.message}`);
        throw new ApiError('invalid-request', `invalid batch body (expected {"view": string, "entity_ids": [string, …], "features"?: [string, …]}): ${issues.join('; ')}`);
      }
      const body = parsed.data;
      const ids = body.entity_ids.map((id, i) => checkEntityId(id, `entity_ids[${i}]`));
      const grant = c.get('grant');
      let viewName = body.view;
      if (viewName === undefined) {
        const views = visibleViews(catalog, grant);
        if (views.length !== 1) throw new ApiError('invalid-request', `name the view in "view"; views: ${viewNames(catalog, grant)}`);
        viewName = views[0]!.job.view;
      }
      const view = requireView(catalog, viewName, grant);
      selectFeatures(requireVersion(view), body.features);
      const unique = [...new Set(ids)];
      const admit = c.get('admit') ?? ((work) => work());
      const { version, result } = await admit(() => read(view, unique));
      const selection = selectFeatures(version, body.features);
      const byId = new Map(unique.map((id, i) => [id, result.rows[i] ?? null]));
      const now = Date.now();
      const meta = freshnessOf(view, version, now);
      const headers = responseHeaders(c);
      freshnessHeaders(headers, view, version, meta, catalog.nextRun(view.job.view, now), now);
      if (view.job.deprecated) deprecationHeaders(headers, deprecationFor(view.job.deprecated, grant));
      // A POST answer is not reusable: the freshness headers inform, they do not license caching.
      headers['Cache-Control'] = 'no-store';
      headers['Feature-Tier'] = result.tier;
      headers['Server-Timing'] = serverTiming(result, c.get('startedAt'));
      let results = '';
      for (let i = 0; i < ids.length; i++) {
        const id = ids[i]!;
        const row = byId.get(id);
        if (i) results += ',';
        results += row
          ? `{"entity_id":${JSON.stringify(id)},"status":"PRESENT","event_time":${JSON.stringify(row.eventTime)},"features":${featuresJson(version, row, selection)}}`
          : `{"entity_id":${JSON.stringify(id)},"status":"NOT_FOUND"}`;
      }
      return respondJson(c, 200, `{"view":${JSON.stringify(view.job.view)},"metadata":${JSON.stringify(meta)},"results":[${results}]}`);
    },
  );

  return app;
}
