/** The stderr logger behind the library's Logger interface: levels from -q/-v, colour optional. */
import { Chalk, type ChalkInstance } from 'chalk';
import type { Logger, LogLevel } from '../log.js';

const ORDER: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

/** Field names whose values are never printed, whatever a caller passes. */
const SECRET_FIELD = /pass(word|phrase)?|secret|token|key(ring)?$|credential|authorization/i;

export interface StderrLoggerOptions {
  write: (text: string) => void;
  level: LogLevel;
  color: boolean;
}

export function createStderrLogger(opts: StderrLoggerOptions): Logger {
  const chalk: ChalkInstance = new Chalk({ level: opts.color ? 1 : 0 });
  const paint: Record<LogLevel, (s: string) => string> = {
    debug: chalk.gray,
    info: (s) => s,
    warn: chalk.yellow,
    error: chalk.red,
  };
  const emit = (level: LogLevel, message: string, fields?: Record<string, unknown>) => {
    if (ORDER[level] < ORDER[opts.level]) return;
    const prefix = level === 'info' ? '' : `${level}: `;
    const extra = fields ? formatFields(fields) : '';
    opts.write(`${paint[level](`${prefix}${message}`)}${extra ? chalk.gray(` ${extra}`) : ''}\n`);
  };
  return {
    debug: (m, f) => emit('debug', m, f),
    info: (m, f) => emit('info', m, f),
    warn: (m, f) => emit('warn', m, f),
    error: (m, f) => emit('error', m, f),
  };
}

export function formatFields(fields: Record<string, unknown>): string {
  return Object.entries(fields)
    .filter(([, v]) => v !== undefined)
    .map(([k, v]) => `${k}=${SECRET_FIELD.test(k) ? '<redacted>' : typeof v === 'string' ? JSON.stringify(v) : JSON.stringify(v)}`)
    .join(' ');
}
