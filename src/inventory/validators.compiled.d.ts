/**
 * Types of the validators that scripts/build-validators.mjs generates after tsc (ajv standalone
 * code for src/inventory/schema.ts and src/strategy/options.ts), so that no schema is compiled
 * at run time.
 */
import type { ErrorObject } from 'ajv';
import type { StrategyOptionsName } from '../strategy/options.js';

/** A generated validator: true when `data` is valid, else its errors (verbose: with parentSchema). */
export interface CompiledValidator {
  (data: unknown): boolean;
  errors?: ErrorObject[] | null;
}

export declare const inventory: CompiledValidator;
export declare const strategyOptions: Record<StrategyOptionsName, CompiledValidator>;
/** sha256 of the JSON of [inventorySchema, strategyOptionSchemas] the validators were compiled from. */
export declare const schemasDigest: string;
