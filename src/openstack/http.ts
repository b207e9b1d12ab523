/**
 * The HTTP core every OpenStack call goes through (got 14). It owns what all services share:
 * keep-alive connections, CA bundle, timeouts, retries with backoff, Retry-After, request ids in
 * debug logs, and turning transport failures and error statuses into the project's errors.
 *
 * It never logs headers or bodies: tokens travel in headers, and bodies carry passwords
 * (Keystone), adminPass and user_data (Nova). Only method, path, status, time and request id.
 */
import http from 'node:http';
import https from 'node:https';
import { readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Readable } from 'node:stream';
import type { Got, Method, RequestError, Response } from 'got';
import { ConfigError, UnavailableError, throwIfAborted } from '../errors.js';
import type { Logger } from '../log.js';
import { BadResponseError, OpenStackApiError, OpenStackForbiddenError, type ApiFailure, type CallSite } from './errors.js';
import { ShapeError } from './json.js';

/**
 * got and its dependencies are ~75 modules (~0.2 s of CPU to load here): loaded by the first
 * request, not by every command that imports an OpenStack client and never calls it.
 */
let gotModule: typeof import('got') | undefined;
async function loadGot(): Promise<Got> {
  gotModule ??= await import('got');
  return gotModule.default;
}

/** A got transport failure. Before got is loaded, no error can be one. */
function isRequestError(err: unknown): err is RequestError {
  return gotModule !== undefined && err instanceof gotModule.RequestError;
}

export interface RetryPolicy {
  /** Attempts in total, the first included. */
  attempts: number;
  /** Backoff before retry n is a random time up to base × 2^(n-1), capped at maxDelayMs ("full jitter"). */
  baseDelayMs: number;
  maxDelayMs: number;
  /** A Retry-After longer than this is not waited for: the call fails and says how long the API asked for. */
  maxRetryAfterMs: number;
}

export const DEFAULT_RETRY: RetryPolicy = { attempts: 5, baseDelayMs: 500, maxDelayMs: 20_000, maxRetryAfterMs: 120_000 };

export interface TransportOptions {
  log: Logger;
  signal?: AbortSignal | undefined;
  /** PEM file with the CA certificates to trust (clouds.yaml `cacert`, OS_CACERT, inventory caBundle). */
  caBundle?: string | undefined;
  insecure?: boolean | undefined;
  /** Time allowed for one attempt of a call, from start to the last byte. */
  timeoutMs?: number | undefined;
  connectTimeoutMs?: number | undefined;
  retry?: Partial<RetryPolicy> | undefined;
}

export interface HttpRequest {
  /** Service type for messages and logs: identity, compute, image, volume, network. */
  service: string;
  method: Method;
  url: string;
  headers?: Record<string, string> | undefined;
  json?: unknown;
  body?: Buffer | Readable | undefined;
  /**
   * Whether sending it twice is harmless. Defaults to true for GET/HEAD/PUT/DELETE and false for
   * POST/PATCH: a POST that reached the server and then timed out or got a 500 may have created
   * something, so it is only retried when the server certainly did not act on it (429, 503, or
   * a connection that was never established).
   */
  idempotent?: boolean | undefined;
  timeoutMs?: number | undefined;
  /** Statuses that count as success besides 2xx (300 for version documents). */
  okStatuses?: readonly number[] | undefined;
}

export interface HttpResponse {
  status: number;
  headers: Readonly<Record<string, string | string[] | undefined>>;
  body: Buffer;
  requestId: string | undefined;
}

export interface DownloadResponse {
  stream: Readable;
  headers: Readonly<Record<string, string | string[] | undefined>>;
  requestId: string | undefined;
}

/** Thrown by decoders for bodies that are not the JSON they should be; retried for idempotent calls. */
export class UnparsableBody extends Error {}

const NEVER_SENT = new Set(['ECONNREFUSED', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN', 'ENOTFOUND']);
const TRANSIENT_NETWORK = new Set([
  ...NEVER_SENT,
  'ECONNRESET',
  'EPIPE',
  'ETIMEDOUT',
  'ECONNABORTED',
  'ERR_STREAM_PREMATURE_CLOSE',
  'UND_ERR_SOCKET',
]);
const TLS_CODES = /CERT|SSL|TLS|SELF_SIGNED|UNABLE_TO_VERIFY|UNABLE_TO_GET_ISSUER/;
/** 5xx statuses that say nothing was done, so even a POST may be sent again. */
const NOT_PROCESSED = new Set([429, 503]);

export function requestIdOf(headers: Readonly<Record<string, string | string[] | undefined>>): string | undefined {
  const v = headers['x-openstack-request-id'] ?? headers['x-compute-request-id'] ?? headers['x-request-id'];
  return Array.isArray(v) ? v[0] : v;
}

/** Retry-After as milliseconds: delta-seconds or an HTTP date. */
export function parseRetryAfter(value: string | undefined, now = Date.now()): number | undefined {
  if (!value) return undefined;
  const trimmed = value.trim();
  if (/^\d+(\.\d+)?$/.test(trimmed)) return Math.round(Number(trimmed) * 1000);
  const date = Date.parse(trimmed);
  return Number.isNaN(date) ? undefined : Math.max(0, date - now);
}

/** Path and query of a URL: what logs and errors show (never the host's credentials, never a token). */
export function pathOf(url: string): string {
  try {
    const u = new URL(url);
    return `${u.pathname}${u.search}`;
  } catch {
    return url;
  }
}

export class HttpTransport {
  readonly log: Logger;
  private readonly signal: AbortSignal | undefined;
  private readonly retry: RetryPolicy;
  private readonly timeoutMs: number;
  private readonly connectTimeoutMs: number;
  private readonly agents: { http: http.Agent; https: https.Agent };
  private readonly tls: { certificateAuthority?: Buffer; rejectUnauthorized: boolean };

  constructor(opts: TransportOptions) {
    this.log = opts.log;
    this.signal = opts.signal;
    this.retry = { ...DEFAULT_RETRY, ...opts.retry };
    this.timeoutMs = opts.timeoutMs ?? 120_000;
    this.connectTimeoutMs = opts.connectTimeoutMs ?? 15_000;
    // Keep-alive is safe here: the lab's uwsgi runs with --http11-socket (lab-notes/openstack.md §3).
    this.agents = { http: new http.Agent({ keepAlive: true, maxSockets: 16 }), https: new https.Agent({ keepAlive: true, maxSockets: 16 }) };
    this.tls = { rejectUnauthorized: opts.insecure !== true };
    if (opts.caBundle) {
      try {
        this.tls.certificateAuthority = readFileSync(opts.caBundle);
      } catch (err) {
        throw new ConfigError(`cannot read CA bundle ${opts.caBundle}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
      }
    }
  }

  close(): void {
    this.agents.http.destroy();
    this.agents.https.destroy();
  }

  /** Sends a request and returns the raw response (2xx or okStatuses); retries per the policy. */
  send(req: HttpRequest): Promise<HttpResponse> {
    return this.request(req, (r) => r);
  }

  /**
   * Sends a request and decodes the response with `decode`, retrying the whole exchange when the
   * failure is transient. A decoder throws UnparsableBody for a truncated or non-JSON body.
   */
  async request<T>(req: HttpRequest, decode: (res: HttpResponse) => T): Promise<T> {
    const site = siteOf(req);
    const idempotent = req.idempotent ?? !['POST', 'PATCH'].includes(req.method);
    // A stream body can be sent only once.
    const attempts = isStream(req.body) ? 1 : Math.max(1, this.retry.attempts);
    for (let attempt = 1; ; attempt++) {
      throwIfAborted(this.signal);
      // Loaded before the clock starts: the first request's time is the server's, not the import's.
      await loadGot();
      const started = Date.now();
      let outcome: { retryAfterMs?: number | undefined; why: string } | undefined;
      try {
        const res = await this.once(req);
        const ms = Date.now() - started;
        this.log.debug(`${req.service} ${req.method} ${site.path} → ${res.status} in ${ms} ms`, { requestId: res.requestId });
        if (isOk(res.status, req.okStatuses)) {
          try {
            return decode(res);
          } catch (err) {
            if (err instanceof ShapeError) throw new BadResponseError(site, err.message, { cause: err, data: { requestId: res.requestId } });
            if (!(err instanceof UnparsableBody)) throw err;
            if (!idempotent || attempt >= attempts) throw new BadResponseError(site, err.message, { data: { requestId: res.requestId } });
            outcome = { why: err.message };
          }
        } else {
          const retryable = res.status === 429 || (res.status >= 500 && res.status !== 501 && res.status !== 505);
          const allowed = idempotent || NOT_PROCESSED.has(res.status);
          if (!retryable || !allowed || attempt >= attempts) throw statusError(site, res);
          const retryAfterMs = parseRetryAfter(headerValue(res.headers, 'retry-after'));
          if (retryAfterMs !== undefined && retryAfterMs > this.retry.maxRetryAfterMs) {
            throw statusError(site, res, `the API asked to wait ${Math.round(retryAfterMs / 1000)} s (Retry-After), longer than the ${Math.round(this.retry.maxRetryAfterMs / 1000)} s vprotect waits; try again later`);
          }
          outcome = { retryAfterMs, why: `HTTP ${res.status}` };
        }
      } catch (err) {
        if (!isRequestError(err)) throw err;
        throwIfAborted(this.signal);
        const code = err.code;
        const neverSent = NEVER_SENT.has(code) || (code === 'ETIMEDOUT' && ['lookup', 'connect', 'secureConnect'].includes((err as { event?: string }).event ?? ''));
        const transient = TRANSIENT_NETWORK.has(code) || err.name === 'ReadError' || err.name === 'TimeoutError';
        if (!transient || (!idempotent && !neverSent) || attempt >= attempts) throw this.networkError(site, req.url, err, attempt);
        outcome = { why: describeNetworkError(err) };
      }
      const delay = outcome.retryAfterMs ?? this.backoff(attempt);
      this.log.warn(`${req.service} ${req.method} ${site.path}: ${outcome.why}; retrying in ${(delay / 1000).toFixed(1)} s (attempt ${attempt + 1} of ${attempts})`);
      await this.pause(delay);
    }
  }

  /**
   * Opens a response body as a stream (image downloads). Retries until the response starts;
   * after that a broken stream is the consumer's error to handle (see streamError).
   */
  async download(req: HttpRequest): Promise<DownloadResponse> {
    const site = siteOf(req);
    for (let attempt = 1; ; attempt++) {
      throwIfAborted(this.signal);
      const got = await loadGot();
      const stream = got.stream(req.url, { ...this.gotOptions(req), isStream: true, timeout: { connect: this.connectTimeoutMs, response: req.timeoutMs ?? this.timeoutMs, socket: req.timeoutMs ?? this.timeoutMs } });
      let retryAfterMs: number | undefined;
      let why: string;
      try {
        const response = await new Promise<Response>((resolve, reject) => {
          stream.once('response', resolve);
          stream.once('error', reject);
        });
        const requestId = requestIdOf(response.headers);
        this.log.debug(`${req.service} ${req.method} ${site.path} → ${response.statusCode} (streaming)`, { requestId });
        if (response.statusCode < 300) return { stream, headers: response.headers, requestId };
        const body = await collect(stream, 64 * 1024).catch(() => Buffer.alloc(0));
        const res: HttpResponse = { status: response.statusCode, headers: response.headers, body, requestId };
        if (!(response.statusCode === 429 || response.statusCode >= 500) || attempt >= this.retry.attempts) throw statusError(site, res);
        retryAfterMs = parseRetryAfter(headerValue(res.headers, 'retry-after'));
        why = `HTTP ${res.status}`;
      } catch (err) {
        stream.destroy();
        if (!isRequestError(err)) throw err;
        throwIfAborted(this.signal);
        if (attempt >= this.retry.attempts) throw this.networkError(site, req.url, err, attempt);
        why = describeNetworkError(err);
      }
      const delay = retryAfterMs ?? this.backoff(attempt);
      this.log.warn(`${req.service} ${req.method} ${site.path}: ${why}; retrying in ${(delay / 1000).toFixed(1)} s`);
      await this.pause(delay);
    }
  }

  /** Turns an error raised while a download or upload stream was flowing into a project error. */
  streamError(req: Pick<HttpRequest, 'service' | 'method' | 'url'>, err: unknown): Error {
    if (isRequestError(err)) return this.networkError(siteOf(req), req.url, err, 1);
    return err instanceof Error ? err : new Error(String(err));
  }

  private async once(req: HttpRequest): Promise<HttpResponse> {
    const got = await loadGot();
    const res = await got(req.url, {
      ...this.gotOptions(req),
      responseType: 'buffer',
      throwHttpErrors: false,
      timeout: { connect: this.connectTimeoutMs, request: req.timeoutMs ?? this.timeoutMs },
    });
    return { status: res.statusCode, headers: res.headers, body: res.body, requestId: requestIdOf(res.headers) };
  }

  private gotOptions(req: HttpRequest) {
    const headers: Record<string, string> = { 'user-agent': 'vprotect', accept: 'application/json', ...req.headers };
    let body: Buffer | string | Readable | undefined = req.body;
    if (req.json !== undefined) {
      body = JSON.stringify(req.json);
      headers['content-type'] = 'application/json';
    }
    return {
      method: req.method,
      headers,
      body,
      retry: { limit: 0 },
      followRedirect: req.method === 'GET' || req.method === 'HEAD',
      agent: this.agents,
      https: this.tls,
      signal: this.signal,
    } as const;
  }

  private backoff(attempt: number): number {
    const cap = Math.min(this.retry.maxDelayMs, this.retry.baseDelayMs * 2 ** (attempt - 1));
    return Math.round(cap / 2 + (Math.random() * cap) / 2);
  }

  private async pause(ms: number): Promise<void> {
    try {
      await sleep(ms, undefined, { signal: this.signal });
    } catch {
      throwIfAborted(this.signal);
    }
  }

  private networkError(site: CallSite, url: string, err: RequestError, attempts: number): Error {
    let origin = url;
    try {
      origin = new URL(url).origin;
    } catch {
      /* keep the text */
    }
    const tries = attempts > 1 ? ` (after ${attempts} attempts)` : '';
    if (TLS_CODES.test(err.code)) {
      return new UnavailableError(`TLS failure talking to ${site.service} at ${origin}: ${err.code}`, {
        hint: 'give the CA that signed the API certificate with caBundle (or clouds.yaml cacert / OS_CACERT); insecure: true only for tests',
        cause: sanitized(err),
        data: { service: site.service, url: origin, code: err.code },
      });
    }
    return new UnavailableError(`cannot reach ${site.service} at ${origin} (${site.method} ${site.path}): ${describeNetworkError(err)}${tries}`, {
      hint: `check that ${site.service} is running and reachable from this machine, and the URL (authUrl, service catalog, endpointOverrides)`,
      cause: sanitized(err),
      data: { service: site.service, url: origin, code: err.code },
    });
  }
}

/**
 * got's errors carry the request options: the X-Auth-Token header and the body (a Keystone
 * password, user_data). They must never travel on as a `cause` that someone could print.
 */
function sanitized(err: RequestError): Error {
  const e = new Error(`${err.name}: ${err.message}`);
  e.name = err.name;
  Object.assign(e, { code: err.code });
  return e;
}

function describeNetworkError(err: RequestError): string {
  if (err.name === 'TimeoutError') {
    const event = (err as { event?: string }).event;
    return `timed out${event ? ` (${event})` : ''}`;
  }
  return err.code && err.code !== 'ERR_GOT_REQUEST_ERROR' ? err.code : err.message;
}

function siteOf(req: Pick<HttpRequest, 'service' | 'method' | 'url'>): CallSite {
  return { service: req.service, method: req.method, path: pathOf(req.url) };
}

function isOk(status: number, extra: readonly number[] | undefined): boolean {
  return (status >= 200 && status < 300) || (extra?.includes(status) ?? false);
}

function isStream(body: unknown): body is Readable {
  return typeof body === 'object' && body !== null && typeof (body as Readable).pipe === 'function';
}

export function headerValue(headers: Readonly<Record<string, string | string[] | undefined>>, name: string): string | undefined {
  const v = headers[name];
  return Array.isArray(v) ? v[0] : v;
}

function statusError(site: CallSite, res: HttpResponse, extra?: string): Error {
  const apiMessage = [errorMessageOf(res.body, headerValue(res.headers, 'content-type')), extra].filter(Boolean).join('; ') || undefined;
  const failure: ApiFailure = { ...site, status: res.status, requestId: res.requestId, apiMessage };
  if (res.status === 401 || res.status === 403) {
    return new OpenStackForbiddenError(failure, {
      hint: res.status === 403 ? 'the user lacks a role this call needs (admin for other projects, hypervisors, other users\' keypairs)' : 'the token was refused even after re-authenticating',
    });
  }
  return new OpenStackApiError(failure);
}

/**
 * The human part of an error body. OpenStack services disagree on the shape: Nova/Cinder
 * `{"itemNotFound": {"message"}}`, Keystone `{"error": {"message"}}`, Neutron
 * `{"NeutronError": {"message"}}`, Glance and proxies HTML or plain text.
 */
export function errorMessageOf(body: Buffer, contentType: string | undefined): string | undefined {
  const text = body.toString('utf8').trim();
  if (!text) return undefined;
  if (!/html/i.test(contentType ?? '') && (text.startsWith('{') || /json/i.test(contentType ?? ''))) {
    try {
      const doc: unknown = JSON.parse(text);
      const found = findMessage(doc, 0);
      if (found) return shorten(found);
    } catch {
      /* fall through to text */
    }
  }
  if (/^<|html/i.test(text.slice(0, 200)) || /html/i.test(contentType ?? '')) {
    const title = /<title>([^<]*)<\/title>/i.exec(text)?.[1]?.trim();
    const stripped = text.replace(/<(script|style)[^>]*>[\s\S]*?<\/\1>/gi, ' ').replace(/<[^>]+>/g, ' ').replace(/\s+/g, ' ').trim();
    return shorten(`an HTML page${title ? ` "${title}"` : ''}${stripped && stripped !== title ? `: ${stripped}` : ''}`);
  }
  return shorten(text.replace(/\s+/g, ' '));
}

function findMessage(doc: unknown, depth: number): string | undefined {
  if (typeof doc !== 'object' || doc === null || depth > 2) return undefined;
  const o = doc as Record<string, unknown>;
  for (const key of ['message', 'faultstring', 'detail', 'title']) {
    if (typeof o[key] === 'string' && o[key]) return o[key];
  }
  for (const v of Object.values(o)) {
    const m = findMessage(v, depth + 1);
    if (m) return m;
  }
  return undefined;
}

function shorten(s: string, max = 300): string {
  return s.length > max ? `${s.slice(0, max)}…` : s;
}

async function collect(stream: Readable, limit: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of stream) {
    const b = chunk as Buffer;
    if (size < limit) chunks.push(b);
    size += b.length;
  }
  return Buffer.concat(chunks).subarray(0, limit);
}

/** Decodes a JSON body; an empty body (204) gives undefined. Throws UnparsableBody for anything else. */
export function decodeJson(res: HttpResponse): unknown {
  if (res.body.length === 0 || res.status === 204) return undefined;
  const type = headerValue(res.headers, 'content-type') ?? '';
  const text = res.body.toString('utf8');
  if (/html/i.test(type) || /^\s*</.test(text)) {
    throw new UnparsableBody(`expected JSON but got ${errorMessageOf(res.body, type) ?? 'an HTML page'} (HTTP ${res.status})`);
  }
  try {
    return JSON.parse(text) as unknown;
  } catch (err) {
    throw new UnparsableBody(`invalid JSON (${res.body.length} bytes${text.trimEnd().endsWith('}') ? '' : ', looks truncated'}): ${(err as Error).message}`);
  }
}
