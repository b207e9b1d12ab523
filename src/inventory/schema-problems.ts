/**
 * Runs a schema's validator over a document and turns its errors into one readable problem
 * each, worded for people ("must be an integer ≥ 0", "unknown key; did you mean …"), never
 * quoting a value (a value may be a secret).
 */
import type { ErrorObject } from 'ajv';
import type { ConfigProblem } from '../errors.js';
import { closest } from '../util/suggest.js';
import type { PathSegment, SourceDocument } from './document.js';
import type { CompiledValidator } from './validators.compiled.js';

type Schema = Record<string, unknown>;

/**
 * Validates `value` (found at `basePath` of `doc`) with a validator compiled at build time
 * (./validators.compiled.js).
 */
export function schemaProblems(doc: SourceDocument, validate: CompiledValidator, value: unknown, basePath: PathSegment[] = []): ConfigProblem[] {
  if (validate(value)) return [];
  const errors = dropBranchNoise(validate.errors ?? []);
  const seen = new Set<string>();
  const problems: ConfigProblem[] = [];
  for (const e of errors) {
    const p = toProblem(doc, e, basePath);
    const id = `${p.path}\0${p.message}`;
    if (seen.has(id)) continue;
    seen.add(id);
    problems.push(p);
  }
  return problems;
}

/**
 * When an `anyOf`/`oneOf` fails, ajv reports every branch's errors too. If the schema words the
 * alternatives (`x-expected`), keep only that one message. A `oneOf` under a discriminator picks
 * its branch, so there the branch errors are the precise ones and are kept.
 */
function dropBranchNoise(errors: ErrorObject[]): ErrorObject[] {
  const summarised = errors.filter(
    (e) => (e.keyword === 'anyOf' || e.keyword === 'oneOf') && typeof (e.parentSchema as Schema | undefined)?.['x-expected'] === 'string',
  );
  return errors.filter((e) => !summarised.some((s) => s !== e && e.schemaPath.startsWith(`${s.schemaPath}/`)));
}

function segments(instancePath: string): PathSegment[] {
  if (!instancePath) return [];
  return instancePath
    .slice(1)
    .split('/')
    .map((s) => s.replace(/~1/g, '/').replace(/~0/g, '~'))
    .map((s) => (/^\d+$/.test(s) ? Number(s) : s));
}

function toProblem(doc: SourceDocument, e: ErrorObject, basePath: PathSegment[]): ConfigProblem {
  const path = [...basePath, ...segments(e.instancePath)];
  const parent = (e.parentSchema ?? {}) as Schema;
  const expected = typeof parent['x-expected'] === 'string' ? (parent['x-expected'] as string) : undefined;
  switch (e.keyword) {
    case 'additionalProperties': {
      const key = String(e.params['additionalProperty']);
      const known = Object.keys((parent['properties'] as Schema | undefined) ?? {});
      const guess = closest(key, known);
      const message = guess
        ? `unknown key; did you mean "${guess}"?`
        : known.length
          ? `unknown key; valid keys here: ${known.join(', ')}`
          : 'unknown key';
      return doc.problem([...path, key], message, { key: true });
    }
    case 'required': {
      const key = String(e.params['missingProperty']);
      const sub = (parent['properties'] as Schema | undefined)?.[key] as Schema | undefined;
      const hint = sub && Array.isArray(sub['enum']) ? ` (one of: ${(sub['enum'] as unknown[]).join(', ')})` : '';
      const problem = doc.problem(path, `is required${hint}`);
      return { ...problem, path: problem.path ? `${problem.path}.${key}` : key };
    }
    case 'propertyNames':
      return doc.problem([...path, String(e.params['propertyName'])], `invalid name; must be ${describeNameRule(parent)}`, { key: true });
    case 'discriminator':
      return doc.problem([...path, 'type'], e.params['error'] === 'tag' ? 'is required (one of: local, nfs)' : 'must be one of: local, nfs');
    default:
      return doc.problem(path, expected ? `must be ${expected}` : wordFor(e, parent));
  }
}

function describeNameRule(parent: Schema): string {
  const names = parent['propertyNames'] as Schema | undefined;
  return typeof names?.['x-expected'] === 'string' ? (names['x-expected'] as string) : 'a valid name';
}

function article(type: string): string {
  const nouns: Record<string, string> = {
    integer: 'an integer',
    number: 'a number',
    string: 'a string',
    boolean: 'true or false',
    object: 'a mapping (key: value)',
    array: 'a list',
    null: 'empty',
  };
  return nouns[type] ?? type;
}

function wordFor(e: ErrorObject, parent: Schema): string {
  const type = parent['type'];
  const bounds = (): string => {
    const parts: string[] = [];
    if (typeof parent['minimum'] === 'number') parts.push(`≥ ${parent['minimum']}`);
    if (typeof parent['maximum'] === 'number') parts.push(`≤ ${parent['maximum']}`);
    return parts.length ? ` ${parts.join(' and ')}` : '';
  };
  switch (e.keyword) {
    case 'type':
    case 'minimum':
    case 'maximum':
      if (type === 'integer' || type === 'number') return `must be ${article(type)}${bounds()}`;
      return `must be ${article(String(e.params['type'] ?? type))}`;
    case 'enum':
      return `must be one of: ${(e.params['allowedValues'] as unknown[]).join(', ')}`;
    case 'const':
      return `must be ${JSON.stringify(e.params['allowedValue'])}`;
    case 'minLength':
      return e.params['limit'] === 1 ? 'must not be empty' : `must be at least ${e.params['limit']} characters long`;
    case 'minItems':
      return `must have at least ${e.params['limit']} item${e.params['limit'] === 1 ? '' : 's'}`;
    case 'minProperties':
    case 'maxProperties':
      return `must have ${e.keyword === 'minProperties' ? 'at least' : 'at most'} ${e.params['limit']} key${e.params['limit'] === 1 ? '' : 's'}`;
    case 'pattern':
      return `must match ${e.params['pattern']}`;
    case 'anyOf':
    case 'oneOf':
      return 'does not match any allowed form';
    default:
      return e.message ?? `fails ${e.keyword}`;
  }
}
