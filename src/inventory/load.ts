/**
 * Loads an inventory file: YAML syntax → JSON Schema → cross-checks, reporting every problem at
 * once with file:line:column and the path in the document. Relative paths in the inventory are
 * taken relative to the inventory file, as users expect when they keep keys beside it.
 */
import { readFile } from 'node:fs/promises';
import { dirname, isAbsolute, resolve } from 'node:path';
import { ConfigError, type ConfigProblem } from '../errors.js';
import { semanticProblems } from './checks.js';
import { formatProblem, SourceDocument } from './document.js';
import { schemaProblems } from './schema-problems.js';
import type { Environment } from './secrets.js';
import type { Inventory } from './types.js';
import { inventory as validateInventory } from './validators.compiled.js';

export interface LoadOptions {
  /** Environment variables for {env: NAME} secrets and `~` in paths. */
  env: Environment;
  /**
   * Skip the checks that depend on this machine (files readable, environment variables set):
   * for linting an inventory on a machine that will not run it, such as a CI job of a config repo.
   */
  offline?: boolean;
}

export async function loadInventory(file: string, opts: LoadOptions): Promise<Inventory> {
  const absolute = resolve(file);
  let text: string;
  try {
    text = await readFile(absolute, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const hint =
      code === 'ENOENT'
        ? 'create it (see examples/minimal.yaml), or point at one with -c FILE or VPROTECT_INVENTORY'
        : 'check the file\'s permissions';
    throw new ConfigError(`cannot read inventory ${absolute}: ${code ?? String(err)}`, [], { hint });
  }
  return parseInventory(absolute, text, opts);
}

export function parseInventory(file: string, text: string, opts: LoadOptions): Inventory {
  const doc = new SourceDocument(file, text);
  const syntax = doc.syntaxProblems();
  if (syntax.length) throw problemsError(file, syntax);

  const raw: unknown = doc.doc.toJS();
  if (raw === null || raw === undefined) {
    throw problemsError(file, [{ file, line: 1, column: 1, path: '', message: 'the inventory is empty; start from examples/minimal.yaml' }]);
  }
  resolvePaths(raw, dirname(file), opts.env);
  const problems = [...schemaProblems(doc, validateInventory, raw), ...semanticProblems(doc, raw, opts.env, opts.offline === true)];
  if (problems.length) throw problemsError(file, problems);

  const inv = raw as Partial<Inventory>;
  return {
    file,
    version: 1,
    clouds: inv.clouds ?? {},
    hypervisors: inv.hypervisors ?? [],
    cephClusters: inv.cephClusters ?? {},
    destinations: inv.destinations ?? {},
    proxies: inv.proxies ?? [],
    policies: inv.policies ?? [],
  };
}

function problemsError(file: string, problems: ConfigProblem[]): ConfigError {
  const sorted = [...problems].sort((a, b) => a.line - b.line || a.column - b.column);
  const n = sorted.length;
  return new ConfigError(`${file}: ${n} problem${n === 1 ? '' : 's'}:\n${sorted.map((p) => `  ${formatProblem(p)}`).join('\n')}`, sorted);
}

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);

/** Every place in the inventory that holds a file system path, as [section, ...keys] patterns. */
const PATH_FIELDS: string[][] = [
  ['clouds', '*', 'caBundle'],
  ['clouds', '*', 'password', 'file'],
  ['clouds', '*', 'applicationCredential', 'secret', 'file'],
  ['hypervisors', '*', 'keyFile'],
  ['hypervisors', '*', 'password', 'file'],
  ['hypervisors', '*', 'keyPassphrase', 'file'],
  ['hypervisors', '*', 'hostKey', 'knownHostsFile'],
  ['cephClusters', '*', 'conf', 'path'],
  ['cephClusters', '*', 'keyring', 'path'],
  ['destinations', '*', 'path'],
  ['destinations', '*', 'mountPoint'],
];

function resolvePaths(raw: unknown, base: string, env: Environment): void {
  const visit = (node: unknown, pattern: string[]): void => {
    const [head, ...rest] = pattern;
    if (head === undefined) return;
    const children: [string | number, unknown][] =
      head === '*' ? (Array.isArray(node) ? node.map((v, i) => [i, v]) : isObj(node) ? Object.entries(node) : []) : isObj(node) ? [[head, node[head]]] : [];
    for (const [key, child] of children) {
      if (rest.length === 0) {
        if (typeof child === 'string' && child !== '') (node as Record<string | number, unknown>)[key] = absolutePath(child, base, env);
      } else {
        visit(child, rest);
      }
    }
  };
  for (const pattern of PATH_FIELDS) visit(raw, pattern);
}

function absolutePath(p: string, base: string, env: Environment): string {
  if (p === '~' || p.startsWith('~/')) return resolve(env['HOME'] ?? '/', p.slice(2));
  return isAbsolute(p) ? p : resolve(base, p);
}
