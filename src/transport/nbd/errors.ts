/**
 * NBD failures mapped onto the project's error hierarchy:
 * - the server broke the protocol (wrong magic, unknown cookie, a reply that does not cover
 *   what was asked): the bytes can no longer be trusted → DataCorruptError (exit 65);
 * - the server answered a command with an error, refused an option, or went away →
 *   UnavailableError (exit 69): nothing wrong was read, the source just cannot serve it now.
 */
import { DataCorruptError, UnavailableError, type ErrorDetails } from '../../errors.js';

export class NbdProtocolError extends DataCorruptError {
  constructor(where: string, message: string, details: ErrorDetails = {}) {
    super(`NBD protocol violation from ${where}: ${message}`, {
      hint: 'the NBD server sent something the protocol does not allow; no data from this connection was used',
      ...details,
    });
  }
}

export class NbdServerError extends UnavailableError {
  readonly errno: number;
  constructor(message: string, errno: number, details: ErrorDetails = {}) {
    super(message, details);
    this.errno = errno;
  }
}
