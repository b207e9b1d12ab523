import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { AuthError, ExitCode, UnavailableError } from '../../../src/errors.js';
import { Session } from '../../../src/openstack/auth.js';
import { BadResponseError, isNotFound, OpenStackApiError, OpenStackForbiddenError } from '../../../src/openstack/errors.js';
import { parseRetryAfter } from '../../../src/openstack/http.js';
import { ServiceClient } from '../../../src/openstack/service.js';
import type { ConnectionSettings } from '../../../src/openstack/settings.js';
import { FAST_RETRY, FakeCloud, fixture, recordingLogger, send } from './fake-cloud.js';

let cloud: FakeCloud;
let log: ReturnType<typeof recordingLogger>;
beforeEach(async () => {
  cloud = await FakeCloud.start();
  log = recordingLogger();
});
afterEach(() => cloud.close());

const settings = (over: Partial<ConnectionSettings> = {}): ConnectionSettings => ({
  name: 'test',
  source: 'test',
  authUrl: cloud.authUrl,
  auth: { kind: 'password', username: 'backup', userDomain: { name: 'acme' }, password: 'lab-backup-pass' },
  project: { name: 'acme-prod', domain: { name: 'acme' } },
  interface: 'public',
  insecure: false,
  endpointOverrides: {},
  ...over,
});

async function compute(opts: { timeoutMs?: number } = {}): Promise<ServiceClient> {
  const session = await Session.open(settings(), { log, retry: FAST_RETRY, ...opts });
  return new ServiceClient(session, 'compute', { microversionName: 'compute' });
}

/** Answers `first` for the first n requests, then the recorded server. */
function flaky(n: number, first: Parameters<FakeCloud['route']>[2]) {
  let calls = 0;
  cloud.route('GET', /\/compute\/v2\.1\/servers\/x$/, async (req, res) => {
    if (++calls <= n) return first(req, res);
    send(res, 200, fixture('nova-server-detail-2.93-admin.json'));
  });
}
const getServer = (c: ServiceClient) => c.get('/servers/x', (d) => d.get('server').str('name'));

describe('retries', () => {
  it('retries a GET after 500 and 502 and then succeeds', async () => {
    flaky(2, (_q, res) => send(res, 500, { computeFault: { code: 500, message: 'Unexpected API Error.' } }));
    const c = await compute();
    expect(await getServer(c)).toBe('smoke-vm');
    expect(cloud.count('GET', /servers\/x$/)).toBe(3);
    expect(log.lines.some((l) => l.startsWith('warn') && l.includes('HTTP 500') && l.includes('retrying'))).toBe(true);
  });

  it('honours Retry-After on 429', async () => {
    flaky(1, (_q, res) => send(res, 429, { overLimit: { code: 429, message: 'slow down' } }, { 'retry-after': '1' }));
    const c = await compute();
    const t0 = Date.now();
    expect(await getServer(c)).toBe('smoke-vm');
    expect(Date.now() - t0).toBeGreaterThanOrEqual(950);
  });

  it('does not wait for a Retry-After longer than the limit, and says so', async () => {
    flaky(5, (_q, res) => send(res, 429, { overLimit: { code: 429, message: 'slow down' } }, { 'retry-after': '3600' }));
    const c = await compute();
    const t0 = Date.now();
    const err = await getServer(c).catch((e: unknown) => e);
    expect(Date.now() - t0).toBeLessThan(2000);
    expect(err).toBeInstanceOf(OpenStackApiError);
    expect((err as Error).message).toMatch(/HTTP 429: slow down; the API asked to wait 3600 s/);
  });

  it('gives up after the attempts with the last error, exit code 69', async () => {
    flaky(99, (_q, res) => send(res, 503, '<html><head><title>503 Service Unavailable</title></head><body><h1>Service Unavailable</h1>No server is available</body></html>', { 'content-type': 'text/html' }));
    const c = await compute();
    const err = (await getServer(c).catch((e: unknown) => e)) as OpenStackApiError;
    expect(err).toBeInstanceOf(UnavailableError);
    expect(err.exitCode).toBe(ExitCode.unavailable);
    expect(err.message).toContain('compute GET /compute/v2.1/servers/x failed with HTTP 503: an HTML page "503 Service Unavailable"');
    expect(cloud.count('GET', /servers\/x$/)).toBe(FAST_RETRY.attempts);
  });

  it('never resends a POST after a 500 (it may have acted), but does after 503', async () => {
    let n = 0;
    cloud.route('POST', /\/compute\/v2\.1\/servers$/, (_q, res) => send(res, ++n === 1 ? 503 : 500, { computeFault: { message: 'boom' } }));
    const c = await compute();
    const err = await c.json('POST', '/servers', { json: { server: {} } }, (d) => d).catch((e: unknown) => e);
    expect((err as OpenStackApiError).status).toBe(500);
    expect(cloud.count('POST', /servers$/)).toBe(2);
  });

  it('retries a dropped connection mid-body (truncated response)', async () => {
    flaky(1, (_q, res) => {
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': '5000' });
      res.write('{"server": {"name": "smo');
      res.socket?.destroy();
    });
    const c = await compute();
    expect(await getServer(c)).toBe('smoke-vm');
  });

  it('retries truncated JSON of a complete response and then names it', async () => {
    flaky(99, (_q, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{"server": {"name": "smo');
    });
    const c = await compute();
    const err = (await getServer(c).catch((e: unknown) => e)) as BadResponseError;
    expect(err).toBeInstanceOf(BadResponseError);
    expect(err.exitCode).toBe(69);
    expect(err.message).toMatch(/invalid JSON \(\d+ bytes, looks truncated\)/);
    expect(cloud.count('GET', /servers\/x$/)).toBe(FAST_RETRY.attempts);
  });

  it('names an HTML page where JSON was expected', async () => {
    flaky(99, (_q, res) => send(res, 200, '<!DOCTYPE html><html><head><title>Login - Corporate Proxy</title></head><body>please log in</body></html>', { 'content-type': 'text/html' }));
    const c = await compute();
    const err = (await getServer(c).catch((e: unknown) => e)) as BadResponseError;
    expect(err.message).toContain('expected JSON but got an HTML page "Login - Corporate Proxy"');
    expect(err.hint).toMatch(/proxy/);
  });

  it('times out a slow endpoint, retries, then fails clearly', async () => {
    cloud.route('GET', /\/compute\/v2\.1\/servers\/x$/, async (_q, res) => {
      await new Promise((r) => setTimeout(r, 1500));
      if (!res.destroyed) send(res, 200, fixture('nova-server-detail-2.93-admin.json'));
    });
    const c = await compute({ timeoutMs: 150 });
    const t0 = Date.now();
    const err = (await getServer(c).catch((e: unknown) => e)) as UnavailableError;
    expect(err).toBeInstanceOf(UnavailableError);
    expect(err.message).toMatch(/cannot reach compute at http:\/\/127\.0\.0\.1:\d+ \(GET \/compute\/v2\.1\/servers\/x\): timed out \(request\) \(after 3 attempts\)/);
    expect(Date.now() - t0).toBeLessThan(1400);
  });

  it('a slow endpoint that answers within the timeout is fine', async () => {
    cloud.route('GET', /\/compute\/v2\.1\/servers\/x$/, async (_q, res) => {
      await new Promise((r) => setTimeout(r, 200));
      send(res, 200, fixture('nova-server-detail-2.93-admin.json'));
    });
    const c = await compute({ timeoutMs: 2000 });
    expect(await getServer(c)).toBe('smoke-vm');
  });

  it('maps 404 with the API message and request id, not retried', async () => {
    cloud.route('GET', /\/compute\/v2\.1\/servers\/x$/, (_q, res) =>
      send(res, 404, { itemNotFound: { code: 404, message: 'Instance x could not be found.' } }, { 'x-openstack-request-id': 'req-abc' }),
    );
    const c = await compute();
    const err = await getServer(c).catch((e: unknown) => e);
    expect(isNotFound(err)).toBe(true);
    expect((err as Error).message).toBe('compute GET /compute/v2.1/servers/x failed with HTTP 404: Instance x could not be found. (request req-abc)');
    expect(cloud.count('GET', /servers\/x$/)).toBe(1);
  });

  it('names a document of the wrong shape', async () => {
    cloud.json('GET', /\/compute\/v2\.1\/servers\/x$/, { server: { name: 42 } });
    const c = await compute();
    const err = await getServer(c).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BadResponseError);
    expect((err as Error).message).toContain('server.name should be a string, got number 42');
  });
});

describe('tokens', () => {
  it('renews the token once on 401 and never logs it', async () => {
    cloud.json('GET', /\/compute\/v2\.1\/servers\/x$/, fixture('nova-server-detail-2.93-admin.json'));
    const c = await compute();
    cloud.validTokens.clear(); // Keystone revoked it (password change, restart with new Fernet keys)
    expect(await getServer(c)).toBe('smoke-vm');
    expect(cloud.count('POST', /auth\/tokens/)).toBe(2);
    for (const t of cloud.validTokens) expect(log.lines.join('\n')).not.toContain(t);
    expect(log.lines.join('\n')).not.toContain('lab-backup-pass');
    expect(log.lines.some((l) => l.includes('renewing the Keystone token') && l.includes('401'))).toBe(true);
    expect(log.lines.some((l) => /"requestId":"req-/.test(l))).toBe(true);
  });

  it('a second 401 after renewal is an auth error (77), not a loop', async () => {
    cloud.route('GET', /\/compute\/v2\.1\/servers\/x$/, (_q, res) => send(res, 401, { error: { message: 'nope' } }));
    const c = await compute();
    const err = await getServer(c).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OpenStackForbiddenError);
    expect((err as AuthError).exitCode).toBe(77);
    expect(cloud.count('POST', /auth\/tokens/)).toBe(2);
    expect(cloud.count('GET', /servers\/x$/)).toBe(2);
  });

  it('renews before expiry (clock-skew free: lifetime from Keystone\'s own timestamps)', async () => {
    cloud.json('GET', /\/compute\/v2\.1\/servers\/x$/, fixture('nova-server-detail-2.93-admin.json'));
    cloud.tokenLifetimeMs = 60_000;
    let now = Date.now();
    const session = await Session.open(settings(), { log, retry: FAST_RETRY, now: () => now });
    const c = new ServiceClient(session, 'compute');
    await getServer(c);
    now += 45_000; // 15 s left of 60: more than the 10 s margin
    await getServer(c);
    expect(cloud.count('POST', /auth\/tokens/)).toBe(1);
    now += 6_000; // 9 s left: renew first
    await getServer(c);
    expect(cloud.count('POST', /auth\/tokens/)).toBe(2);
    expect(cloud.count('GET', /servers\/x$/)).toBe(3); // no request was sent with a stale token
  });

  it('concurrent calls share one renewal', async () => {
    cloud.json('GET', /\/compute\/v2\.1\/servers\/x$/, fixture('nova-server-detail-2.93-admin.json'));
    const c = await compute();
    cloud.validTokens.clear();
    await Promise.all(Array.from({ length: 8 }, () => getServer(c)));
    expect(cloud.count('POST', /auth\/tokens/)).toBe(2);
  });
});

describe('authentication errors', () => {
  it('wrong password → AuthError 77 naming user, domain and project', async () => {
    const err = await Session.open(settings({ auth: { kind: 'password', username: 'backup', userDomain: { name: 'acme' }, password: 'wrong' } }), { log, retry: FAST_RETRY }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AuthError);
    expect((err as AuthError).exitCode).toBe(77);
    expect((err as Error).message).toBe(
      `Keystone at ${cloud.authUrl} refused user "backup" in domain "acme", project "acme-prod" in domain "acme" (HTTP 401: The request you have made requires authentication.)`,
    );
    expect((err as Error).message).not.toContain('wrong');
    expect(cloud.count('POST', /auth\/tokens/)).toBe(1);
  });

  it('unreachable Keystone → UnavailableError 69', async () => {
    const url = cloud.authUrl;
    await cloud.close();
    const err = await Session.open(settings({ authUrl: url }), { log, retry: FAST_RETRY }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UnavailableError);
    expect((err as UnavailableError).exitCode).toBe(69);
    expect((err as Error).message).toMatch(/cannot reach identity at http:\/\/127\.0\.0\.1:\d+ \(POST \/v3\/auth\/tokens\): ECONNREFUSED \(after 3 attempts\)/);
    cloud = await FakeCloud.start(); // for afterEach
  });

  it('errors never carry the password or the token, however deep one looks (cause chain, inspect)', async () => {
    const { inspect } = await import('node:util');
    // Keystone times out: the network error is built from got's error, which holds the request body.
    cloud.route('POST', /^\/v3\/auth\/tokens$/, async () => new Promise(() => undefined));
    const err = await Session.open(settings(), { log, retry: FAST_RETRY, timeoutMs: 100 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UnavailableError);
    const text = inspect(err, { depth: 20, showHidden: true }) + JSON.stringify(err);
    expect(text).not.toContain('lab-backup-pass');
    // And a compute call that times out does not leak the token it sent.
    cloud.route('POST', /^\/v3\/auth\/tokens$/, (q, res) => (cloud as any).issueToken(q, res));
    cloud.route('GET', /\/compute\/v2\.1\/servers\/x$/, async () => new Promise(() => undefined));
    const c = await compute({ timeoutMs: 100 });
    const err2 = await getServer(c).catch((e: unknown) => e);
    const text2 = inspect(err2, { depth: 20, showHidden: true });
    for (const t of cloud.validTokens) expect(text2).not.toContain(t);
    expect(text2).toContain('timed out');
  });

  it('a Keystone that answers HTML (wrong URL, portal) is a clear error', async () => {
    cloud.route('POST', /^\/v3\/auth\/tokens$/, (_q, res) => send(res, 200, '<html><title>Welcome to nginx!</title></html>', { 'content-type': 'text/html' }));
    const err = await Session.open(settings(), { log, retry: FAST_RETRY }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UnavailableError);
    expect((err as Error).message).toContain('expected JSON but got an HTML page "Welcome to nginx!"');
  });

  it('application credentials authenticate without a project scope', async () => {
    const s = await Session.open(settings({ auth: { kind: 'applicationCredential', id: 'appcred-id', secret: 'appcred-secret' }, project: undefined }), { log });
    const body = JSON.parse(cloud.requests[0]!.body);
    expect(body.auth.scope).toBeUndefined();
    expect(body.auth.identity.methods).toEqual(['application_credential']);
    expect(s.token.project?.name).toBe('acme-prod');
    s.close();
  });
});

describe('pagination', () => {
  it('follows next links (taking only their query: the host in links is often wrong)', async () => {
    const all = Array.from({ length: 5 }, (_, i) => ({ id: `s${i}`, name: `vm${i}` }));
    cloud.json('GET', /\/compute\/v2\.1\/servers\/detail$/, (req) => {
      const limit = Number(req.query.get('limit'));
      const start = req.query.get('marker') ? all.findIndex((s) => s.id === req.query.get('marker')) + 1 : 0;
      const page = all.slice(start, start + limit);
      const more = start + limit < all.length;
      return { servers: page, ...(more ? { servers_links: [{ rel: 'next', href: `http://wrong-host.invalid/v2.1/servers/detail?all_tenants=1&limit=${limit}&marker=${page.at(-1)!.id}` }] } : {}) };
    });
    const c = await compute();
    const names = await c.all('/servers/detail', { itemsKey: 'servers', pageSize: 2, query: { all_tenants: 1 }, parse: (r) => r.str('name') });
    expect(names).toEqual(['vm0', 'vm1', 'vm2', 'vm3', 'vm4']);
    expect(cloud.count('GET', /servers\/detail$/)).toBe(3);
    expect(cloud.requests.filter((r) => r.path.endsWith('detail')).every((r) => r.query.get('all_tenants') === '1')).toBe(true);
  });

  it('stops on a next link that repeats', async () => {
    cloud.json('GET', /\/compute\/v2\.1\/servers\/detail$/, { servers: [{ name: 'a' }], servers_links: [{ rel: 'next', href: '/servers/detail?marker=a' }] });
    const c = await compute();
    await expect(c.all('/servers/detail', { itemsKey: 'servers', parse: (r) => r.str('name') })).rejects.toThrow(/next-page link repeats/);
  });
});

describe('refresh margin', () => {
  it('10 % of the lifetime, between 10 s and 5 min, at most half of a very short one', async () => {
    const { refreshMargin } = await import('../../../src/openstack/auth.js');
    expect(refreshMargin(3_600_000)).toBe(300_000);
    expect(refreshMargin(600_000)).toBe(60_000);
    expect(refreshMargin(60_000)).toBe(10_000);
    expect(refreshMargin(8_000)).toBe(4_000);
  });
});

describe('Retry-After', () => {
  it('parses seconds and HTTP dates', () => {
    expect(parseRetryAfter('3')).toBe(3000);
    expect(parseRetryAfter('Wed, 21 Oct 2015 07:28:10 GMT', Date.parse('Wed, 21 Oct 2015 07:28:00 GMT'))).toBe(10_000);
    expect(parseRetryAfter('soon')).toBeUndefined();
  });
});
