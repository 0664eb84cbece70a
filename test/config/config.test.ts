// The environment is parsed once into a typed config; bad values fail with
// the variable's name and what was expected.
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/index.js';

describe('configuration', () => {
  it('defaults to the embedded mode with start-up syncs', () => {
    const config = loadConfig({}, '/srv/app');
    expect(config).toMatchObject({ embedded: true, port: 8080, syncOnStart: true, syncJobsDir: '/srv/app/sync-jobs', batchMaxIds: 1000 });
    expect(Object.isFrozen(config)).toBe(true);
  });

  it('uses servers when both URLs are given, without start-up syncs by default', () => {
    const config = loadConfig({ DATABASE_URL: 'postgres://db/x', REDIS_URL: 'redis://cache:6379' });
    expect(config).toMatchObject({ embedded: false, syncOnStart: false, databaseUrl: 'postgres://db/x' });
  });

  it('refuses half of the server pair', () => {
    expect(() => loadConfig({ DATABASE_URL: 'postgres://db/x' })).toThrow(/set both DATABASE_URL and REDIS_URL .* REDIS_URL is unset/);
  });

  it('names each bad variable', () => {
    expect(() => loadConfig({ PORT: 'eighty', LOG_LEVEL: 'loud', SCHEDULER_ENABLED: 'maybe' })).toThrow(/PORT: .*\(got "eighty"\)[\s\S]*SCHEDULER_ENABLED[\s\S]*LOG_LEVEL/);
  });

  it('treats empty variables as unset', () => {
    expect(loadConfig({ DATABASE_URL: '', REDIS_URL: '' }).embedded).toBe(true);
  });
});
