import { readFileSync } from 'node:fs';

/** vprotect's version, from package.json (dist/src/version.js → ../../package.json). */
export const VERSION: string = (() => {
  for (const rel of ['../../package.json', '../package.json']) {
    try {
      const pkg = JSON.parse(readFileSync(new URL(rel, import.meta.url), 'utf8')) as { name?: string; version?: string };
      if (pkg.name === 'vprotect' && pkg.version) return pkg.version;
    } catch {
      // try the next location (tests run the sources from src/, the CLI from dist/src/)
    }
  }
  return '0.0.0-unknown';
})();
