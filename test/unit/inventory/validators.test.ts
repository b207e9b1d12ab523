import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { inventorySchema } from '../../../src/inventory/schema.js';
import { schemasDigest } from '../../../src/inventory/validators.compiled.js';
import { strategyOptionSchemas } from '../../../src/strategy/options.js';

describe('build-time validators', () => {
  it('were compiled from the current schemas (after changing a schema, run npm run build)', () => {
    // The digest scripts/build-validators.mjs records.
    const digest = createHash('sha256').update(JSON.stringify([inventorySchema, strategyOptionSchemas])).digest('hex');
    expect(schemasDigest).toBe(digest);
  });
});
