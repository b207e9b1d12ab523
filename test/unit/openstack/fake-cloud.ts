/**
 * A small OpenStack on node:http for unit tests: Keystone issuing tokens whose catalog points
 * back at this server, and routes that tests fill with recorded responses (fixtures/, real
 * answers of the lab's Zed services) or with deliberate misbehaviour (HTML pages, truncated
 * JSON, 500s, 429 with Retry-After, slow answers, dropped connections).
 */
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from '../../../src/log.js';

export const fixture = (name: string): any => JSON.parse(readFileSync(new URL(`./fixtures/${name}`, import.meta.url), 'utf8'));

export interface FakeRequest {
  method: string;
  path: string;
  query: URLSearchParams;
  headers: http.IncomingHttpHeaders;
  body: string;
}

export type Handler = (req: FakeRequest, res: http.ServerResponse) => void | Promise<void>;

export const PROJECT_ID = '631c151a6c5440bf876f97d43a8b3e9c';

export interface FakeUser {
  name: string;
  domain: string;
  password: string;
  project: string;
  projectDomain: string;
  roles: string[];
}

export class FakeCloud {
  readonly requests: FakeRequest[] = [];
  readonly validTokens = new Set<string>();
  tokenLifetimeMs = 3_600_000;
  users: FakeUser[] = [
    { name: 'backup', domain: 'acme', password: 'lab-backup-pass', project: 'acme-prod', projectDomain: 'acme', roles: ['admin', 'member', 'reader'] },
    { name: 'alice', domain: 'Default', password: 'alice-pass', project: 'demo', projectDomain: 'Default', roles: ['member'] },
  ];
  private routes: { method: string; pattern: RegExp; handler: Handler }[] = [];
  private server!: http.Server;
  url = '';

  static async start(): Promise<FakeCloud> {
    const c = new FakeCloud();
    c.server = http.createServer((req, res) => void c.handle(req, res));
    await new Promise<void>((r) => c.server.listen(0, '127.0.0.1', r));
    c.url = `http://127.0.0.1:${(c.server.address() as AddressInfo).port}`;
    c.route('POST', /^\/v3\/auth\/tokens$/, (req, res) => c.issueToken(req, res));
    return c;
  }

  get authUrl(): string {
    return `${this.url}/v3`;
  }

  /** Later routes win, so a test can override a default. */
  route(method: string, pattern: RegExp, handler: Handler): this {
    this.routes.unshift({ method, pattern, handler });
    return this;
  }

  /** A route that needs a valid token and answers `body` (or what it returns for the request) as JSON. */
  json(method: string, pattern: RegExp, body: (req: FakeRequest) => unknown, status?: number): this;
  json(method: string, pattern: RegExp, body: unknown, status?: number): this;
  json(method: string, pattern: RegExp, body: unknown, status = 200): this {
    return this.route(method, pattern, (req, res) => {
      if (!this.authorised(req, res)) return;
      send(res, status, typeof body === 'function' ? (body as (r: FakeRequest) => unknown)(req) : body);
    });
  }

  authorised(req: FakeRequest, res: http.ServerResponse): boolean {
    const t = req.headers['x-auth-token'];
    if (typeof t === 'string' && this.validTokens.has(t)) return true;
    send(res, 401, { error: { code: 401, message: 'The request you have made requires authentication.', title: 'Unauthorized' } });
    return false;
  }

  count(method: string, pattern: RegExp): number {
    return this.requests.filter((r) => r.method === method && pattern.test(r.path)).length;
  }

  private issueToken(req: FakeRequest, res: http.ServerResponse): void {
    const auth = JSON.parse(req.body).auth;
    const pw = auth.identity.password?.user;
    const dom = (d: { id?: string; name?: string } | undefined) => d?.name ?? (d?.id === 'default' ? 'Default' : d?.id);
    const scope = auth.scope?.project;
    const user = this.users.find(
      (u) =>
        pw &&
        u.name === pw.name &&
        dom(pw.domain) === u.domain &&
        u.password === pw.password &&
        (!scope || scope.id === PROJECT_ID || (scope.name === u.project && dom(scope.domain) === u.projectDomain)),
    );
    const appCred = auth.identity.application_credential;
    if (!user && !(appCred && appCred.id === 'appcred-id' && appCred.secret === 'appcred-secret')) {
      send(res, 401, { error: { code: 401, message: 'The request you have made requires authentication.', title: 'Unauthorized' } });
      return;
    }
    const value = `tok-${randomUUID()}`;
    this.validTokens.add(value);
    const doc = fixture('keystone-token-backup-acme.json').body;
    const now = Date.now();
    doc.token.issued_at = new Date(now).toISOString();
    doc.token.expires_at = new Date(now + this.tokenLifetimeMs).toISOString();
    if (user) {
      doc.token.user.name = user.name;
      doc.token.roles = user.roles.map((r) => ({ id: r, name: r }));
    }
    const base: Record<string, string> = {
      compute: `${this.url}/compute/v2.1`,
      image: `${this.url}/image`,
      'block-storage': `${this.url}/volume/v3/${PROJECT_ID}`,
      volumev3: `${this.url}/volume/v3/${PROJECT_ID}`,
      network: `${this.url}/network`,
      identity: `${this.url}/v3/`,
      placement: `${this.url}/placement`,
    };
    for (const s of doc.token.catalog) for (const e of s.endpoints) e.url = base[s.type] ?? e.url;
    send(res, 201, doc, { 'x-subject-token': value, 'x-openstack-request-id': `req-${randomUUID()}` });
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const u = new URL(req.url ?? '/', this.url);
    const fr: FakeRequest = { method: req.method ?? 'GET', path: u.pathname, query: u.searchParams, headers: req.headers, body: Buffer.concat(chunks).toString('utf8') };
    this.requests.push(fr);
    const route = this.routes.find((r) => r.method === fr.method && r.pattern.test(fr.path));
    if (!route) {
      send(res, 404, { itemNotFound: { code: 404, message: `fake cloud has no route for ${fr.method} ${fr.path}` } });
      return;
    }
    try {
      await route.handler(fr, res);
    } catch (err) {
      if (!res.headersSent) send(res, 500, { error: String(err) });
    }
  }

  close(): Promise<void> {
    this.server.closeAllConnections();
    return new Promise((r) => this.server.close(() => r()));
  }
}

export function send(res: http.ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = body === undefined ? '' : typeof body === 'string' ? body : JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'x-openstack-request-id': `req-${randomUUID()}`, ...headers });
  res.end(text);
}

/** A logger that keeps every line, to assert what was (and was not) logged. */
export function recordingLogger(): Logger & { lines: string[] } {
  const lines: string[] = [];
  const rec = (level: string) => (m: string, f?: Record<string, unknown>) => void lines.push(`${level} ${m} ${f ? JSON.stringify(f) : ''}`);
  return { lines, debug: rec('debug'), info: rec('info'), warn: rec('warn'), error: rec('error') };
}

/** Fast retries for tests: same logic, millisecond delays. */
export const FAST_RETRY = { attempts: 3, baseDelayMs: 5, maxDelayMs: 20, maxRetryAfterMs: 5_000 };
