/**
 * Secrets in the inventory are references until the moment they are used: inline text, an
 * environment variable, or a file. Resolving reads them; nothing here ever logs a value.
 */
import { readFileSync } from 'node:fs';
import { ConfigError } from '../errors.js';
import type { Secret } from './types.js';

export type Environment = Readonly<Record<string, string | undefined>>;

/** Why the secret cannot be resolved, or undefined when it can. Never includes the value. */
export function secretProblem(secret: Secret, env: Environment): string | undefined {
  if (typeof secret === 'string') return undefined;
  if ('env' in secret) {
    return env[secret.env] ? undefined : `environment variable ${secret.env} is not set (export it, or use {file: PATH})`;
  }
  try {
    const text = readFileSync(secret.file, 'utf8');
    return firstLine(text) ? undefined : `file ${secret.file} is empty`;
  } catch (err) {
    return `cannot read ${secret.file}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`;
  }
}

export function resolveSecret(secret: Secret, env: Environment, where: string): string {
  if (typeof secret === 'string') return secret;
  const problem = secretProblem(secret, env);
  if (problem) throw new ConfigError(`${where}: ${problem}`);
  if ('env' in secret) return env[secret.env]!;
  return firstLine(readFileSync(secret.file, 'utf8'));
}

function firstLine(text: string): string {
  return text.split(/\r?\n/)[0]!.trim();
}

/** Placeholder used wherever a secret would be shown. */
export const REDACTED = '<redacted>';
