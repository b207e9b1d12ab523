/**
 * Errors of the OpenStack layer. They extend the project's hierarchy (src/errors.ts) so that
 * the CLI maps them to exit codes without knowing about HTTP: a refused credential is an
 * AuthError (77); an API that fails or answers nonsense is an UnavailableError (69), because
 * to the user it is "the cloud refuses to do this", whatever the status.
 */
import { AuthError, UnavailableError, type ErrorDetails } from '../errors.js';

/** Where a failed call went; never holds a token or a body that could carry a secret. */
export interface CallSite {
  service: string;
  method: string;
  /** Path and query only (no host), e.g. `/v2.1/servers/detail?limit=100`. */
  path: string;
}

export interface ApiFailure extends CallSite {
  status: number;
  requestId: string | undefined;
  /** The API's own message, extracted from JSON, text or an HTML page; shortened. */
  apiMessage: string | undefined;
}

function describe(f: ApiFailure): string {
  const reason = f.apiMessage ? `: ${f.apiMessage}` : '';
  const req = f.requestId ? ` (request ${f.requestId})` : '';
  return `${f.service} ${f.method} ${f.path} failed with HTTP ${f.status}${reason}${req}`;
}

function failureData(f: ApiFailure): Record<string, unknown> {
  return { service: f.service, method: f.method, path: f.path, status: f.status, requestId: f.requestId };
}

/** An OpenStack API answered with an error status (after any retries). */
export class OpenStackApiError extends UnavailableError {
  readonly failure: ApiFailure;
  constructor(failure: ApiFailure, details: ErrorDetails = {}) {
    super(describe(failure), { ...details, data: { ...failureData(failure), ...details.data } });
    this.failure = failure;
  }
  get status(): number {
    return this.failure.status;
  }
}

/** 401 after a fresh token, or 403: the credentials work but are not allowed to do this. */
export class OpenStackForbiddenError extends AuthError {
  readonly failure: ApiFailure;
  constructor(failure: ApiFailure, details: ErrorDetails = {}) {
    super(describe(failure), { ...details, data: { ...failureData(failure), ...details.data } });
    this.failure = failure;
  }
  get status(): number {
    return this.failure.status;
  }
}

/** The API answered 2xx with something that is not what its documentation promises. */
export class BadResponseError extends UnavailableError {
  readonly site: CallSite;
  constructor(site: CallSite, problem: string, details: ErrorDetails = {}) {
    super(`${site.service} ${site.method} ${site.path} returned an unusable response: ${problem}`, {
      hint: 'a proxy or load balancer in front of the API may be answering instead of OpenStack; check the endpoint URL (service catalog or endpointOverrides)',
      ...details,
      data: { service: site.service, method: site.method, path: site.path, ...details.data },
    });
    this.site = site;
  }
}

/** A long operation ended in an error state, or did not finish in time. */
export class OperationFailedError extends UnavailableError {}

export function httpStatusOf(err: unknown): number | undefined {
  if (err instanceof OpenStackApiError || err instanceof OpenStackForbiddenError) return err.status;
  return undefined;
}

export const isNotFound = (err: unknown): boolean => httpStatusOf(err) === 404;
export const isConflict = (err: unknown): boolean => httpStatusOf(err) === 409;
