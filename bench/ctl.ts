// The command line `npm run ctl` runs (its Node flags included), so the
// benchmark's syncs run exactly as a user's `npm run sync` does.
import { readFileSync } from 'node:fs';
import path from 'node:path';

const root = path.resolve(import.meta.dirname, '..');

/** Node's arguments for `npm run ctl -- ...args`: the script's flags, ctl.js, then `args`. */
export function ctlArgs(...args: string[]): string[] {
  const script = (JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8')) as { scripts: Record<string, string> }).scripts.ctl!;
  const [node, ...words] = script.split(/\s+/);
  const entry = words.findIndex((word) => word.endsWith('ctl.js'));
  if (node !== 'node' || entry === -1) throw new Error(`package.json's "ctl" script is not "node [flags] dist/cli/ctl.js": ${script}`);
  return [...words.slice(0, entry), path.join(root, words[entry]!), ...args];
}
