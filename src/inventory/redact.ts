/**
 * A copy of an inventory with every inline secret replaced, driven by the schema's `x-secret`
 * marks so that a new secret field is redacted the moment the schema names it.
 * References ({env: NAME}, {file: PATH}) are kept: they say where the secret is, not what it is.
 */
import { inventorySchema } from './schema.js';
import { REDACTED } from './secrets.js';

type Schema = Record<string, unknown>;
const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

export function redactInventory<T>(inventory: T): T {
  return redact(inventory, inventorySchema as unknown as Schema) as T;
}

function redact(value: unknown, schema: Schema | undefined): unknown {
  if (!schema) return value;
  if (schema['x-secret'] === true && typeof value === 'string') return REDACTED;
  if (Array.isArray(value)) return value.map((v) => redact(v, schema['items'] as Schema | undefined));
  if (!isObj(value)) return value;
  const branches = [schema, ...((schema['anyOf'] ?? schema['oneOf'] ?? []) as Schema[])];
  const out: Record<string, unknown> = {};
  for (const [key, v] of Object.entries(value)) {
    const sub =
      branches.map((b) => (b['properties'] as Schema | undefined)?.[key] as Schema | undefined).find(Boolean) ??
      (isObj(schema['additionalProperties']) ? (schema['additionalProperties'] as Schema) : undefined);
    out[key] = redact(v, sub);
  }
  return out;
}
