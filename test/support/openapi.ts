// Checks real responses against openapi.yaml: the status must be documented,
// the media type must match, the body must validate against the schema
// (JSON Schema 2020-12, as OpenAPI 3.1 uses), and required headers must be there.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { Ajv2020, type ValidateFunction } from 'ajv/dist/2020.js';
import addFormatsModule from 'ajv-formats';
import { parse } from 'yaml';

type Json = Record<string, any>;

const SPEC_ID = 'openapi.yaml';
export const spec: Json = parse(readFileSync(path.resolve('openapi.yaml'), 'utf8'));

const ajv = new Ajv2020({ strict: false, allErrors: true });
(addFormatsModule as unknown as (a: Ajv2020) => void)(ajv);
ajv.addSchema({ $id: SPEC_ID, components: spec.components }, SPEC_ID);

/** Follows a local $ref ("#/components/…") in the spec. */
function resolve<T = Json>(node: Json): T {
  let current = node;
  while (current && typeof current.$ref === 'string') {
    current = current.$ref
      .slice(2)
      .split('/')
      .reduce((at: Json, key: string) => at?.[key], spec);
    if (!current) throw new Error(`unresolvable $ref ${node.$ref}`);
  }
  return current as T;
}

// Schemas reference "#/components/…" of the spec; point those refs at the registered spec.
function rebase(schema: unknown): unknown {
  if (Array.isArray(schema)) return schema.map(rebase);
  if (schema && typeof schema === 'object') {
    return Object.fromEntries(Object.entries(schema).map(([k, v]) => [k, k === '$ref' && typeof v === 'string' && v.startsWith('#/') ? `${SPEC_ID}${v}` : rebase(v)]));
  }
  return schema;
}

const validators = new Map<string, ValidateFunction>();
function validatorFor(key: string, schema: Json): ValidateFunction {
  let validate = validators.get(key);
  if (!validate) {
    validate = ajv.compile(rebase(schema) as Json);
    validators.set(key, validate);
  }
  return validate;
}

export function specOperations(): { method: string; path: string }[] {
  return Object.entries(spec.paths as Json).flatMap(([p, item]) =>
    Object.keys(item as Json)
      .filter((m) => ['get', 'post', 'put', 'patch', 'delete'].includes(m))
      .map((method) => ({ method: method.toUpperCase(), path: p })),
  );
}

/** The spec path template matching a concrete path; literal paths win over templated ones. */
export function matchPath(concrete: string, method?: string): string | undefined {
  const candidates = Object.keys(spec.paths as Json).filter((template) => {
    const pattern = new RegExp(`^${template.replace(/[.*+?^${}()|[\]\\]/g, '\\$&').replace(/\\\{[^}]+\\\}/g, '[^/]+')}$`);
    return pattern.test(concrete);
  });
  // The most literal template wins, among those with an operation for the method if one has (GET /features/v1/batch
  // is the lookup of entity "batch": the batch path has no GET).
  const withMethod = method ? candidates.filter((template) => (spec.paths[template] as Json)[method.toLowerCase()]) : [];
  return (withMethod.length ? withMethod : candidates).sort((a, b) => a.split('{').length - b.split('{').length)[0];
}

export async function assertMatchesSpec(method: string, requestPath: string, response: Response): Promise<void> {
  const where = `${method} ${requestPath} → ${response.status}`;
  const template = matchPath(requestPath, method);
  // An unknown route must still answer with a documented problem shape.
  const operation: Json | undefined = template ? (spec.paths[template] as Json)[method.toLowerCase()] : undefined;
  if (!operation) {
    if (response.status !== 404 && response.status !== 405) throw new Error(`${where}: no operation in openapi.yaml for this method and path`);
    await checkBody(where, response, resolve(spec.components.responses.NotFound), 'route-not-found');
    return;
  }
  const responseSpec = operation.responses[String(response.status)] ?? operation.responses.default;
  if (!responseSpec) throw new Error(`${where}: status ${response.status} is not documented for ${method} ${template}`);
  const resolved = resolve(responseSpec);
  for (const [name, header] of Object.entries((resolved.headers ?? {}) as Json)) {
    const h = resolve(header);
    const value = response.headers.get(name);
    if (h.required && value === null) throw new Error(`${where}: required header ${name} is missing`);
    if (value !== null && h.schema) {
      const validate = validatorFor(`${template}|${method}|${response.status}|header:${name}`, h.schema);
      if (!validate(value)) throw new Error(`${where}: header ${name}: ${JSON.stringify(value)} ${ajv.errorsText(validate.errors)}`);
    }
  }
  await checkBody(where, response, resolved, `${template}|${method}|${response.status}`);
}

async function checkBody(where: string, response: Response, resolved: Json, key: string): Promise<void> {
  const content = resolved.content as Json | undefined;
  const type = (response.headers.get('Content-Type') ?? '').split(';')[0]!.trim();
  if (!content) {
    const text = await response.clone().text();
    if (text !== '') throw new Error(`${where}: the spec documents no body, but one was sent (${type})`);
    return;
  }
  const media = content[type];
  if (!media) throw new Error(`${where}: Content-Type ${JSON.stringify(type)} is not documented (expected one of ${Object.keys(content).join(', ')})`);
  if (!type.endsWith('json')) return;
  const body = await response.clone().json();
  const validate = validatorFor(`${key}|${type}`, media.schema);
  if (!validate(body)) throw new Error(`${where}: body does not match openapi.yaml: ${ajv.errorsText(validate.errors)}\n${JSON.stringify(body).slice(0, 500)}`);
}
