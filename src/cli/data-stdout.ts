import { createWriteStream, fstatSync } from 'node:fs';
import { Socket } from 'node:net';
import type { Writable } from 'node:stream';
import { isatty } from 'node:tty';
import { UsageError } from '../errors.js';

/**
 * stdout for bulk data (a disk image, a tar stream). Node makes `process.stdout` synchronous
 * when it is a pipe, so a slow reader would freeze the event loop — and with it Ctrl-C/SIGTERM
 * handling. So: a pipe or socket gets a non-blocking socket handle of its own (async writes,
 * backpressure); a regular file gets an fs stream; a terminal gets nothing (binary garbage).
 */
export function dataStdout(): Writable {
  if (isatty(1)) throw new UsageError('stdout is a terminal; redirect it to a file or a pipe to receive the data');
  const st = fstatSync(1);
  if (st.isFIFO() || st.isSocket()) return new Socket({ fd: 1, readable: false, writable: true });
  return createWriteStream('', { fd: 1, autoClose: false, highWaterMark: 4 << 20 });
}
