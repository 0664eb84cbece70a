// The typed client for this API, generated from openapi.yaml (`npm run sdk`
// regenerates schema.ts; a test fails when it is out of date).
import createClient, { type ClientOptions } from 'openapi-fetch';
import type { components, paths } from './schema.js';

export type { components, paths } from './schema.js';
export type FeatureResponse = components['schemas']['FeatureResponse'];
export type BatchRequest = components['schemas']['BatchRequest'];
export type BatchResponse = components['schemas']['BatchResponse'];
export type Problem = components['schemas']['Problem'];

export function createFeatureClient(baseUrl: string, options: Omit<ClientOptions, 'baseUrl'> = {}) {
  return createClient<paths>({ baseUrl, ...options });
}
