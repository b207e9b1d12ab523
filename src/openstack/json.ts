/**
 * Typed readers for API documents. Client modules turn JSON into typed records with these and
 * nothing else, so a field that is missing or of the wrong type gives a clear error naming the
 * field, instead of an `undefined` travelling into the rest of the program.
 */

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
export type JsonObject = { [key: string]: Json };

/** A document exactly as an API returned it: only for archiving (metadata/), never read by other code. */
export type RawDocument = Readonly<JsonObject>;

export class ShapeError extends Error {
  constructor(readonly where: string, readonly expected: string, actual: unknown) {
    super(`${where || 'document'} should be ${expected}, got ${kind(actual)}`);
  }
}

function kind(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (v === undefined) return 'nothing (missing)';
  return typeof v === 'object' ? 'an object' : `${typeof v} ${JSON.stringify(v).slice(0, 40)}`;
}

export const isObject = (v: unknown): v is JsonObject => typeof v === 'object' && v !== null && !Array.isArray(v);

/** A cursor over one JSON value that knows its path, for error messages. */
export class Reader {
  constructor(readonly value: unknown, readonly where: string = '') {}

  static of(value: unknown, where = ''): Reader {
    return new Reader(value, where);
  }

  private at(key: string): Reader {
    const obj = this.object();
    return new Reader(obj[key], this.where ? `${this.where}.${key}` : key);
  }

  object(): JsonObject {
    if (!isObject(this.value)) throw new ShapeError(this.where, 'an object', this.value);
    return this.value;
  }

  raw(): RawDocument {
    return this.object();
  }

  get(key: string): Reader {
    return this.at(key);
  }

  has(key: string): boolean {
    return isObject(this.value) && this.value[key] !== undefined && this.value[key] !== null;
  }

  /** A required string. */
  str(key: string): string {
    const r = this.at(key);
    if (typeof r.value !== 'string') throw new ShapeError(r.where, 'a string', r.value);
    return r.value;
  }

  /** A string, or undefined when missing or null. Empty strings count as missing (Nova uses "" for unset). */
  optStr(key: string): string | undefined {
    const r = this.at(key);
    if (r.value === undefined || r.value === null || r.value === '') return undefined;
    if (typeof r.value !== 'string') throw new ShapeError(r.where, 'a string', r.value);
    return r.value;
  }

  num(key: string): number {
    const r = this.at(key);
    if (typeof r.value !== 'number') throw new ShapeError(r.where, 'a number', r.value);
    return r.value;
  }

  optNum(key: string): number | undefined {
    const r = this.at(key);
    if (r.value === undefined || r.value === null) return undefined;
    if (typeof r.value === 'number') return r.value;
    // Some APIs send numbers as strings ("1.0", Glance properties); accept those that are numbers.
    if (typeof r.value === 'string' && r.value.trim() !== '' && Number.isFinite(Number(r.value))) return Number(r.value);
    throw new ShapeError(r.where, 'a number', r.value);
  }

  /** A boolean; Cinder sends some as the strings "true"/"false". */
  bool(key: string, fallback?: boolean): boolean {
    const r = this.at(key);
    if (typeof r.value === 'boolean') return r.value;
    if (r.value === 'true' || r.value === 'True') return true;
    if (r.value === 'false' || r.value === 'False') return false;
    if ((r.value === undefined || r.value === null) && fallback !== undefined) return fallback;
    throw new ShapeError(r.where, 'a boolean', r.value);
  }

  /** A required array, each element as a Reader. */
  list(key: string): Reader[] {
    const r = this.at(key);
    if (!Array.isArray(r.value)) throw new ShapeError(r.where, 'an array', r.value);
    return r.value.map((v, i) => new Reader(v, `${r.where}[${i}]`));
  }

  optList(key: string): Reader[] {
    const r = this.at(key);
    if (r.value === undefined || r.value === null) return [];
    return this.list(key);
  }

  strList(key: string): string[] {
    return this.optList(key).map((r) => {
      if (typeof r.value !== 'string') throw new ShapeError(r.where, 'a string', r.value);
      return r.value;
    });
  }

  /** An object of string values (metadata, extra specs); non-string values are stringified. */
  strMap(key: string): Record<string, string> {
    const r = this.at(key);
    if (r.value === undefined || r.value === null) return {};
    const o = r.object();
    return Object.fromEntries(Object.entries(o).map(([k, v]) => [k, typeof v === 'string' ? v : JSON.stringify(v)]));
  }
}
