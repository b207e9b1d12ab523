/**
 * Keystone v3 authentication and the Session that every client uses: it holds the token, renews
 * it before it expires (and once on a 401), and resolves service endpoints from the catalog.
 *
 * The token value only ever goes into the X-Auth-Token header; it is not a field of anything
 * that gets logged or returned to the CLI.
 */
import { AuthError, UnavailableError } from '../errors.js';
import type { Logger } from '../log.js';
import { resolveEndpoint, type CatalogService, type ServiceKind } from './catalog.js';
import { OpenStackApiError, OpenStackForbiddenError } from './errors.js';
import { decodeJson, headerValue, HttpTransport, type TransportOptions } from './http.js';
import { Reader } from './json.js';
import type { ConnectionSettings, DomainRef } from './settings.js';

export interface NamedRef {
  id: string;
  name: string;
}

export interface Token {
  /** Local clock time after which the token must not be used (expiry minus the refresh margin). */
  renewAt: number;
  expiresAt: Date;
  issuedAt: Date;
  user: NamedRef & { domain: NamedRef };
  project: (NamedRef & { domain: NamedRef }) | undefined;
  roles: string[];
  catalog: CatalogService[];
  methods: string[];
}

interface IssuedToken extends Token {
  value: string;
}

/**
 * Renew when 10 % of the lifetime is left: at least 10 s before expiry (Keystone truncates
 * issued_at to whole seconds, and an application-credential auth took 1.1 s in the loaded
 * lab), at most 5 min, and never later than half-way for very short tokens.
 */
export function refreshMargin(lifetimeMs: number): number {
  return Math.min(300_000, Math.max(10_000, lifetimeMs * 0.1), lifetimeMs / 2);
}

function domainJson(d: DomainRef): Record<string, string> {
  return 'id' in d ? { id: d.id } : { name: d.name };
}

function domainText(d: DomainRef): string {
  return 'id' in d ? `domain id "${d.id}"` : `domain "${d.name}"`;
}

export function authRequestBody(settings: ConnectionSettings, project = settings.project): unknown {
  const a = settings.auth;
  const identity =
    a.kind === 'password'
      ? { methods: ['password'], password: { user: { name: a.username, domain: domainJson(a.userDomain), password: a.password } } }
      : { methods: ['application_credential'], application_credential: { id: a.id, secret: a.secret } };
  const scope = project === undefined ? undefined : 'id' in project ? { project: { id: project.id } } : { project: { name: project.name, domain: domainJson(project.domain) } };
  return { auth: scope ? { identity, scope } : { identity } };
}

/** "user "backup" in domain "acme", project "acme-prod" in domain "acme"": who failed, without secrets. */
export function whoText(settings: ConnectionSettings, project = settings.project): string {
  const a = settings.auth;
  const who = a.kind === 'password' ? `user "${a.username}" in ${domainText(a.userDomain)}` : `application credential ${a.id}`;
  const scope = !project ? '' : 'id' in project ? `, project id ${project.id}` : `, project "${project.name}" in ${domainText(project.domain)}`;
  return `${who}${scope}`;
}

export function parseToken(doc: unknown, value: string, receivedAt = Date.now()): IssuedToken {
  const t = Reader.of(doc).get('token');
  const ref = (r: Reader): NamedRef => ({ id: r.str('id'), name: r.str('name') });
  const issuedAt = new Date(t.str('issued_at'));
  const expiresAt = new Date(t.str('expires_at'));
  // Lifetime from Keystone's own two timestamps, counted from our receipt: immune to clock skew.
  const lifetime = Math.max(0, expiresAt.getTime() - issuedAt.getTime());
  const user = t.get('user');
  const project = t.has('project') ? t.get('project') : undefined;
  return {
    value,
    issuedAt,
    expiresAt,
    renewAt: receivedAt + lifetime - refreshMargin(lifetime),
    user: { ...ref(user), domain: ref(user.get('domain')) },
    project: project ? { ...ref(project), domain: ref(project.get('domain')) } : undefined,
    roles: t.optList('roles').map((r) => r.str('name')),
    methods: t.strList('methods'),
    catalog: t.optList('catalog').map((s) => ({
      type: s.str('type'),
      name: s.optStr('name') ?? '',
      endpoints: s.list('endpoints').map((e) => ({ interface: e.str('interface'), region: e.optStr('region_id') ?? e.optStr('region'), url: e.str('url') })),
    })),
  };
}

export interface SessionOptions extends Omit<TransportOptions, 'caBundle' | 'insecure'> {
  /** Share the transport of another session (rescoping) instead of creating one. */
  transport?: HttpTransport | undefined;
  now?: () => number;
}

export class Session {
  readonly settings: ConnectionSettings;
  readonly transport: HttpTransport;
  readonly log: Logger;
  private current: IssuedToken;
  private renewing: Promise<IssuedToken> | undefined;
  private readonly now: () => number;
  private readonly ownsTransport: boolean;

  private constructor(settings: ConnectionSettings, transport: HttpTransport, token: IssuedToken, now: () => number, owns: boolean) {
    this.settings = settings;
    this.transport = transport;
    this.log = transport.log;
    this.current = token;
    this.now = now;
    this.ownsTransport = owns;
  }

  /** Authenticates; throws AuthError (77) for refused credentials, UnavailableError (69) when Keystone is unreachable. */
  static async open(settings: ConnectionSettings, opts: SessionOptions): Promise<Session> {
    const transport = opts.transport ?? new HttpTransport({ ...opts, caBundle: settings.caBundle, insecure: settings.insecure });
    const now = opts.now ?? Date.now;
    try {
      const token = await authenticate(transport, settings, settings.project, now);
      return new Session(settings, transport, token, now, opts.transport === undefined);
    } catch (err) {
      if (opts.transport === undefined) transport.close();
      throw err;
    }
  }

  /** Information about the current token (never the token itself). */
  get token(): Token {
    const { value: _value, ...info } = this.current;
    return info;
  }

  get isAdmin(): boolean {
    return this.current.roles.includes('admin');
  }

  get projectId(): string | undefined {
    return this.current.project?.id;
  }

  /** A token value for one request: renewed first when it is about to expire. */
  async authToken(): Promise<string> {
    if (this.now() >= this.current.renewAt) await this.renew('it is about to expire');
    return this.current.value;
  }

  /** Called when a request with `value` got 401: renew unless someone already has. */
  async tokenRejected(value: string): Promise<void> {
    if (this.current.value === value) await this.renew('the API refused it (401)');
  }

  private async renew(why: string): Promise<void> {
    this.renewing ??= (async () => {
      this.log.debug(`renewing the Keystone token of cloud ${this.settings.name}: ${why}`);
      try {
        return await authenticate(this.transport, this.settings, this.scopeOfCurrent(), this.now);
      } finally {
        this.renewing = undefined;
      }
    })();
    this.current = await this.renewing;
  }

  private scopeOfCurrent(): ConnectionSettings['project'] {
    if (this.settings.auth.kind === 'applicationCredential') return undefined;
    return this.current.project ? { id: this.current.project.id } : this.settings.project;
  }

  /** The base URL of a service, per catalog, interface, region and overrides. */
  endpoint(kind: ServiceKind): string {
    if (kind === 'identity' && !this.settings.endpointOverrides['identity']) return this.settings.authUrl;
    return resolveEndpoint(this.current.catalog, kind, {
      interface: this.settings.interface,
      region: this.settings.region,
      overrides: this.settings.endpointOverrides,
      projectId: this.current.project?.id,
    });
  }

  /**
   * A session scoped to another project with the same credentials (restoring into another
   * project: Nova and Cinder create resources in the token's project). Shares the connections.
   */
  async forProject(projectId: string): Promise<Session> {
    if (projectId === this.current.project?.id) return this;
    if (this.settings.auth.kind === 'applicationCredential') {
      throw new AuthError(`an application credential is bound to its own project and cannot act in project ${projectId}`, {
        hint: 'restore into the credential\'s project, or use a user with a role in the target project',
      });
    }
    const project = { id: projectId };
    const token = await authenticate(this.transport, { ...this.settings }, project, this.now);
    return new Session({ ...this.settings, project }, this.transport, token, this.now, false);
  }

  close(): void {
    if (this.ownsTransport) this.transport.close();
  }
}

async function authenticate(transport: HttpTransport, settings: ConnectionSettings, project: ConnectionSettings['project'], now: () => number): Promise<IssuedToken> {
  const url = `${settings.authUrl}/auth/tokens`;
  try {
    return await transport.request(
      // Asking for a token twice is harmless, so it is retried like a GET.
      { service: 'identity', method: 'POST', url, json: authRequestBody(settings, project), idempotent: true },
      (res) => {
        const doc = decodeJson(res);
        const value = headerValue(res.headers, 'x-subject-token');
        if (!value) throw new UnavailableError(`Keystone at ${settings.authUrl} answered without an X-Subject-Token header`);
        return parseToken(doc, value, now());
      },
    );
  } catch (err) {
    if (err instanceof OpenStackForbiddenError || (err instanceof OpenStackApiError && err.status === 404 && settings.project)) {
      const api = err.failure.apiMessage ? `: ${err.failure.apiMessage}` : '';
      throw new AuthError(`Keystone at ${settings.authUrl} refused ${whoText(settings, project)} (HTTP ${err.status}${api})`, {
        hint:
          settings.auth.kind === 'password'
            ? 'check the user name and its domain (userDomain, or "domain\\user"), the password, and that the user has a role on the project (and projectDomain)'
            : 'check the application credential id and secret, and that it has not expired',
        cause: err,
        data: { cloud: settings.name, source: settings.source, status: err.status },
      });
    }
    if (err instanceof OpenStackApiError && err.status === 404) {
      throw new UnavailableError(`no Keystone v3 at ${settings.authUrl} (HTTP 404 for /auth/tokens)`, { hint: 'authUrl should end in /v3 (e.g. https://keystone.example.com:5000/v3)', cause: err });
    }
    throw err;
  }
}
