/**
 * One authenticated OpenStack service: URL building, the token header, one renewal on 401,
 * microversion headers, JSON decoding into typed values, and pagination. The per-service
 * clients (nova.ts, cinder.ts, ...) are thin layers of typed calls on top of this.
 */
import type { Readable } from 'node:stream';
import type { Method } from 'got';
import type { Session } from './auth.js';
import type { ServiceKind } from './catalog.js';
import { BadResponseError, OpenStackForbiddenError } from './errors.js';
import { decodeJson, pathOf, type DownloadResponse, type HttpResponse } from './http.js';
import { Reader } from './json.js';

export type Query = Record<string, string | number | boolean | undefined>;

export interface CallOptions {
  query?: Query | undefined;
  json?: unknown;
  body?: Buffer | Readable | undefined;
  headers?: Record<string, string> | undefined;
  idempotent?: boolean | undefined;
  okStatuses?: readonly number[] | undefined;
  timeoutMs?: number | undefined;
  /** Overrides the client's microversion for this call. */
  microversion?: string | undefined;
}

export interface PageOptions<T> {
  query?: Query | undefined;
  /** Key of the item array: "servers", "volumes", "images", ... */
  itemsKey: string;
  parse: (item: Reader) => T;
  /** Page size sent as `limit`; undefined leaves it to the server's default. */
  pageSize?: number | undefined;
  microversion?: string | undefined;
}

export class ServiceClient {
  readonly kind: ServiceKind;
  readonly session: Session;
  /** Set after version discovery; sent on every call of a microversioned service. */
  microversion: string | undefined;
  private readonly microversionName: string | undefined;
  private readonly fixedBase: string | undefined;

  /** `microversionName`: "compute" or "volume" for the OpenStack-API-Version header. */
  constructor(session: Session, kind: ServiceKind, opts: { microversionName?: string; baseUrl?: string } = {}) {
    this.session = session;
    this.kind = kind;
    this.microversionName = opts.microversionName;
    this.fixedBase = opts.baseUrl;
  }

  get baseUrl(): string {
    return this.fixedBase ?? this.session.endpoint(this.kind);
  }

  url(path: string, query?: Query): string {
    const base = /^https?:\/\//.test(path) ? path : `${this.baseUrl}${path.startsWith('/') ? '' : '/'}${path}`;
    const u = new URL(base);
    for (const [k, v] of Object.entries(query ?? {})) if (v !== undefined) u.searchParams.set(k, String(v));
    return u.toString();
  }

  private headers(opts: CallOptions, token: string): Record<string, string> {
    const h: Record<string, string> = { 'x-auth-token': token, ...opts.headers };
    const mv = opts.microversion ?? this.microversion;
    if (this.microversionName && mv) {
      h['openstack-api-version'] = `${this.microversionName} ${mv}`;
      // Nova before 2.27 only reads the legacy header; sending both is what novaclient does.
      if (this.microversionName === 'compute') h['x-openstack-nova-api-version'] = mv;
    }
    return h;
  }

  /**
   * Runs `fn` with a token; on a 401 renews the token once and runs it again — unless the
   * request body is a stream, which was consumed by the first attempt.
   */
  private async authed<T>(fn: (token: string) => Promise<T>, resendable = true): Promise<T> {
    const token = await this.session.authToken();
    try {
      return await fn(token);
    } catch (err) {
      if (!(err instanceof OpenStackForbiddenError) || err.status !== 401) throw err;
      if (!resendable) {
        await this.session.tokenRejected(token);
        throw err;
      }
      await this.session.tokenRejected(token);
      return fn(await this.session.authToken());
    }
  }

  /** A call whose response is decoded by `decode` (JSON → typed). */
  async call<T>(method: Method, path: string, opts: CallOptions, decode: (res: HttpResponse) => T): Promise<T> {
    const url = this.url(path, opts.query);
    return this.authed((token) =>
      this.session.transport.request(
        { service: this.kind, method, url, headers: this.headers(opts, token), json: opts.json, body: opts.body, idempotent: opts.idempotent, okStatuses: opts.okStatuses, timeoutMs: opts.timeoutMs },
        decode,
      ),
      !(opts.body !== undefined && !Buffer.isBuffer(opts.body)),
    );
  }

  /** A JSON call parsed with `parse`; `parse` gets a Reader over the document. */
  json<T>(method: Method, path: string, opts: CallOptions, parse: (doc: Reader) => T): Promise<T> {
    return this.call(method, path, opts, (res) => parse(Reader.of(decodeJson(res))));
  }

  get<T>(path: string, parse: (doc: Reader) => T, opts: CallOptions = {}): Promise<T> {
    return this.json('GET', path, opts, parse);
  }

  /** A call whose body does not matter (DELETE, actions answering 202). */
  async send(method: Method, path: string, opts: CallOptions = {}): Promise<HttpResponse> {
    return this.call(method, path, opts, (r) => r);
  }

  async download(path: string, opts: CallOptions = {}): Promise<DownloadResponse> {
    const url = this.url(path, opts.query);
    return this.authed((token) => this.session.transport.download({ service: this.kind, method: 'GET', url, headers: { ...this.headers(opts, token), accept: '*/*' }, timeoutMs: opts.timeoutMs }));
  }

  /**
   * All items of a paginated collection. Follows the server's `next` link (Nova/Cinder
   * `<items>_links`, Glance `next`, Keystone `links.next`) but only takes its query: hosts in
   * links are often wrong behind proxies, so requests always go to our own endpoint.
   */
  async *pages<T>(path: string, opts: PageOptions<T>): AsyncGenerator<T[]> {
    let query: Query = { ...opts.query, ...(opts.pageSize ? { limit: opts.pageSize } : {}) };
    const seen = new Set<string>();
    for (;;) {
      const page = await this.get(path, (doc) => ({ items: doc.list(opts.itemsKey).map(opts.parse), next: nextLink(doc, opts.itemsKey) }), {
        query,
        microversion: opts.microversion,
      });
      yield page.items;
      if (!page.next || page.items.length === 0) return;
      const nextQuery = queryOf(page.next);
      const key = JSON.stringify(nextQuery);
      if (seen.has(key)) {
        throw new BadResponseError({ service: this.kind, method: 'GET', path: pathOf(this.url(path, query)) }, 'the next-page link repeats an earlier page');
      }
      seen.add(key);
      query = nextQuery;
    }
  }

  async all<T>(path: string, opts: PageOptions<T>): Promise<T[]> {
    const out: T[] = [];
    for await (const page of this.pages(path, opts)) out.push(...page);
    return out;
  }
}

function nextLink(doc: Reader, itemsKey: string): string | undefined {
  const o = doc.object();
  const links = o[`${itemsKey}_links`];
  if (Array.isArray(links)) {
    for (const l of links) {
      if (typeof l === 'object' && l !== null && !Array.isArray(l) && l['rel'] === 'next' && typeof l['href'] === 'string') return l['href'];
    }
  }
  if (typeof o['next'] === 'string') return o['next'];
  const kLinks = o['links'];
  if (typeof kLinks === 'object' && kLinks !== null && !Array.isArray(kLinks) && typeof kLinks['next'] === 'string') return kLinks['next'];
  return undefined;
}

function queryOf(link: string): Query {
  const u = new URL(link, 'http://relative.invalid');
  return Object.fromEntries(u.searchParams.entries());
}

/** Chooses a microversion: the wanted one, or the server's maximum when that is lower. */
export function chooseMicroversion(wanted: string, serverMax: string | undefined, serverMin?: string): string {
  if (!serverMax) return serverMin && compareVersions(serverMin, wanted) > 0 ? serverMin : wanted;
  return compareVersions(serverMax, wanted) < 0 ? serverMax : wanted;
}

export function compareVersions(a: string, b: string): number {
  const pa = a.split('.').map(Number);
  const pb = b.split('.').map(Number);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (d) return d;
  }
  return 0;
}

/** At least `v`? (for features that need a microversion). */
export function atLeast(current: string | undefined, v: string): boolean {
  return current !== undefined && compareVersions(current, v) >= 0;
}

/**
 * The server's supported microversion range, from its version document: Nova answers
 * `{"version": {...}}` at /v2.1/, Cinder `{"versions": [...]}` at /v3/ (sometimes with 300).
 */
export async function discoverMicroversions(client: ServiceClient, rootUrl: string): Promise<{ min: string; max: string } | undefined> {
  return client.json('GET', rootUrl, { okStatuses: [300] }, (doc) => {
    const o = doc.object();
    const candidates = o['version'] !== undefined ? [doc.get('version')] : doc.optList('versions');
    const current = candidates.find((v) => v.optStr('version')) ?? undefined;
    if (!current) return undefined;
    const max = current.optStr('version');
    const min = current.optStr('min_version');
    return max ? { min: min ?? max, max } : undefined;
  });
}
