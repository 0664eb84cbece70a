// Starts one throwaway Postgres for the whole test run (each test file makes
// its own database on it), unless TEST_DATABASE_URL names one.
import type { TestProject } from 'vitest/node';
import { startPostgres } from './servers.js';

declare module 'vitest' {
  export interface ProvidedContext {
    databaseUrl: string;
  }
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  if (process.env.TEST_DATABASE_URL) {
    project.provide('databaseUrl', process.env.TEST_DATABASE_URL);
    return async () => undefined;
  }
  const postgres = await startPostgres();
  project.provide('databaseUrl', postgres.url);
  return () => postgres.destroy();
}
