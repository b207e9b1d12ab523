#!/usr/bin/env node
/**
 * `npm run bench`: runs every benchmark module in bench/ (each a standalone script, *.mjs except
 * this one) in sequence, passing the command-line arguments on. A failing module is reported and
 * the others still run; the exit status is non-zero if any failed.
 *
 *   npm run bench [-- --only repository] [-- <module args>]
 */
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const onlyAt = args.indexOf('--only');
const only = onlyAt >= 0 ? args[onlyAt + 1]?.split(',') : undefined;
const passOn = onlyAt >= 0 ? args.filter((_, i) => i !== onlyAt && i !== onlyAt + 1) : args;

const modules = readdirSync(here)
  .filter((f) => f.endsWith('.mjs') && f !== 'run.mjs' && !f.startsWith('_'))
  .filter((f) => !only || only.includes(f.replace(/\.mjs$/, '')))
  .sort();

let failed = 0;
for (const m of modules) {
  process.stdout.write(`\n=== bench/${m} ===\n`);
  const r = spawnSync(process.execPath, [join(here, m), ...passOn], { stdio: 'inherit' });
  if (r.status !== 0) {
    failed++;
    process.stdout.write(`bench/${m} failed (exit ${r.status ?? r.signal})\n`);
  }
}
process.exit(failed ? 1 : 0);
