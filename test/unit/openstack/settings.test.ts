import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ConfigError } from '../../../src/errors.js';
import { authRequestBody, whoText } from '../../../src/openstack/auth.js';
import { resolveEndpoint, type CatalogService } from '../../../src/openstack/catalog.js';
import { parseToken } from '../../../src/openstack/auth.js';
import { normaliseAuthUrl, settingsFromEnvironment, settingsFromInventory, splitDomainUser } from '../../../src/openstack/settings.js';
import { fixture } from './fake-cloud.js';

function dirWith(files: Record<string, string>): string {
  const dir = mkdtempSync(join(tmpdir(), 'vprotect-clouds-'));
  for (const [name, text] of Object.entries(files)) writeFileSync(join(dir, name), text);
  return dir;
}

const CLOUDS = `
clouds:
  acme:
    auth:
      auth_url: http://127.0.0.1:5000
      username: backup
      user_domain_name: acme
      project_name: acme-prod
      project_domain_name: acme
    region_name: RegionOne
    interface: internal
    cacert: /etc/ssl/acme.pem
    block_storage_endpoint_override: http://cinder.example/v3/%(project_id)s
  appcred:
    auth_type: v3applicationcredential
    auth:
      auth_url: http://127.0.0.1:5000/v3/
      application_credential_id: appcred-id
      application_credential_secret: appcred-secret
    verify: false
`;
const SECURE = `
clouds:
  acme:
    auth:
      password: from-secure-yaml
`;

describe('connection settings', () => {
  it('splits domain\\user', () => {
    expect(splitDomainUser('acme\\backup')).toEqual({ domain: 'acme', user: 'backup' });
    expect(splitDomainUser('backup')).toEqual({ user: 'backup' });
  });

  it('normalises the auth URL to v3', () => {
    expect(normaliseAuthUrl('http://k:5000')).toBe('http://k:5000/v3');
    expect(normaliseAuthUrl('http://k:5000/v3/')).toBe('http://k:5000/v3');
    expect(normaliseAuthUrl('http://k:5000/v2.0')).toBe('http://k:5000/v3');
  });

  it('inventory with domain\\user and a secret from the environment', () => {
    const s = settingsFromInventory('prod', { authUrl: 'http://k:5000/v3', username: 'acme\\backup', password: { env: 'PW' }, project: 'acme-prod', projectDomain: 'acme' }, { env: { PW: 'pw' } });
    expect(s.auth).toEqual({ kind: 'password', username: 'backup', userDomain: { name: 'acme' }, password: 'pw' });
    expect(s.project).toEqual({ name: 'acme-prod', domain: { name: 'acme' } });
    expect(whoText(s)).toBe('user "backup" in domain "acme", project "acme-prod" in domain "acme"');
    expect(authRequestBody(s)).toEqual({
      auth: {
        identity: { methods: ['password'], password: { user: { name: 'backup', domain: { name: 'acme' }, password: 'pw' } } },
        scope: { project: { name: 'acme-prod', domain: { name: 'acme' } } },
      },
    });
  });

  it('user and project without a domain are in the default domain (id "default")', () => {
    const s = settingsFromInventory('p', { authUrl: 'http://k/v3', username: 'admin', password: 'x', project: 'admin' }, { env: {} });
    expect(s.auth).toMatchObject({ userDomain: { id: 'default' } });
    expect(s.project).toEqual({ name: 'admin', domain: { id: 'default' } });
  });

  it('clouds.yaml entry with secure.yaml, referenced from the inventory, inventory fields win', () => {
    const cwd = dirWith({ 'clouds.yaml': CLOUDS, 'secure.yaml': SECURE });
    const s = settingsFromInventory('prod', { cloud: 'acme', interface: 'public' }, { env: { HOME: '/nonexistent' }, cwd });
    expect(s.authUrl).toBe('http://127.0.0.1:5000/v3');
    expect(s.auth).toEqual({ kind: 'password', username: 'backup', userDomain: { name: 'acme' }, password: 'from-secure-yaml' });
    expect(s.region).toBe('RegionOne');
    expect(s.interface).toBe('public');
    expect(s.caBundle).toBe('/etc/ssl/acme.pem');
    expect(s.endpointOverrides).toEqual({ 'block-storage': 'http://cinder.example/v3/%(project_id)s' });
    expect(s.source).toBe('inventory clouds.prod with clouds.yaml entry "acme"');
  });

  it('--os-cloud picks a clouds.yaml entry; OS_CLIENT_CONFIG_FILE points at the file', () => {
    const dir = dirWith({ 'my-clouds.yaml': CLOUDS });
    const s = settingsFromEnvironment({ env: { OS_CLIENT_CONFIG_FILE: join(dir, 'my-clouds.yaml') }, osCloud: 'appcred', cwd: '/nonexistent' });
    expect(s.auth).toEqual({ kind: 'applicationCredential', id: 'appcred-id', secret: 'appcred-secret' });
    expect(s.project).toBeUndefined();
    expect(s.insecure).toBe(true);
  });

  it('a clouds.yaml entry without a password takes OS_PASSWORD, other OS_* do not override it', () => {
    const cwd = dirWith({ 'clouds.yaml': CLOUDS });
    const s = settingsFromEnvironment({ env: { OS_CLOUD: 'acme', OS_PASSWORD: 'env-pw', OS_AUTH_URL: 'http://other/v3', OS_USERNAME: 'someone' }, cwd });
    expect(s.auth).toMatchObject({ username: 'backup', password: 'env-pw' });
    expect(s.authUrl).toBe('http://127.0.0.1:5000/v3');
  });

  it('OS_* variables alone, as an openrc sets them', () => {
    const s = settingsFromEnvironment({
      env: {
        OS_AUTH_URL: 'http://127.0.0.1:5000/v3',
        OS_USERNAME: 'backup',
        OS_PASSWORD: 'p',
        OS_USER_DOMAIN_NAME: 'acme',
        OS_PROJECT_NAME: 'acme-prod',
        OS_PROJECT_DOMAIN_NAME: 'acme',
        OS_REGION_NAME: 'RegionOne',
        OS_INTERFACE: 'internal',
      },
    });
    expect(s.auth).toEqual({ kind: 'password', username: 'backup', userDomain: { name: 'acme' }, password: 'p' });
    expect(s.project).toEqual({ name: 'acme-prod', domain: { name: 'acme' } });
    expect(s.interface).toBe('internal');
    expect(s.name).toBe('env');
  });

  it('OS_ENDPOINT_TYPE=internalURL (old openrc) means internal', () => {
    const s = settingsFromEnvironment({ env: { OS_AUTH_URL: 'http://k/v3', OS_USERNAME: 'u', OS_PASSWORD: 'p', OS_PROJECT_NAME: 'x', OS_ENDPOINT_TYPE: 'internalURL' } });
    expect(s.interface).toBe('internal');
  });

  it('clear errors: unknown clouds.yaml entry, no password, nothing at all', () => {
    const cwd = dirWith({ 'clouds.yaml': CLOUDS });
    expect(() => settingsFromEnvironment({ env: {}, osCloud: 'nope', cwd })).toThrow(/has no cloud "nope"/);
    try {
      settingsFromEnvironment({ env: {}, osCloud: 'nope', cwd });
    } catch (e) {
      expect((e as ConfigError).hint).toBe('it defines: acme, appcred');
    }
    expect(() => settingsFromEnvironment({ env: {}, osCloud: 'acme', cwd })).toThrow(/no password for user "backup"/);
    expect(() => settingsFromEnvironment({ env: {} })).toThrow(ConfigError);
  });

  it('an application credential in the inventory replaces a clouds.yaml password', () => {
    const cwd = dirWith({ 'clouds.yaml': CLOUDS, 'secure.yaml': SECURE });
    const s = settingsFromInventory('prod', { cloud: 'acme', applicationCredential: { id: 'i', secret: 's' } }, { env: {}, cwd });
    expect(s.auth).toEqual({ kind: 'applicationCredential', id: 'i', secret: 's' });
    expect(s.project).toBeUndefined();
  });
});

describe('service catalog (recorded Zed token)', () => {
  const token = parseToken(fixture('keystone-token-backup-acme.json').body, 'x');
  const catalog: CatalogService[] = token.catalog;
  const pick = (kind: Parameters<typeof resolveEndpoint>[1], over: Partial<Parameters<typeof resolveEndpoint>[2]> = {}) =>
    resolveEndpoint(catalog, kind, { interface: 'public', overrides: {}, projectId: token.project?.id, ...over });

  it('parses the token', () => {
    expect(token.user).toEqual({ id: '4ba94f72cc9d45239b12468e5f2164e5', name: 'backup', domain: { id: 'abf10ab3ec5346c4865519084cce5bd2', name: 'acme' } });
    expect(token.project?.name).toBe('acme-prod');
    expect(token.roles).toContain('admin');
  });

  it('resolves each service with versions normalised', () => {
    expect(pick('compute')).toBe('http://127.0.0.1:8774/v2.1');
    expect(pick('image')).toBe('http://127.0.0.1:9292/v2');
    expect(pick('volume')).toBe('http://127.0.0.1:8776/v3/631c151a6c5440bf876f97d43a8b3e9c');
    expect(pick('network')).toBe('http://127.0.0.1:9696/v2.0');
    expect(pick('compute', { region: 'RegionOne', interface: 'internal' })).toBe('http://127.0.0.1:8774/v2.1');
  });

  it('overrides win, with the project id substituted', () => {
    expect(pick('volume', { overrides: { volumev3: 'http://c/v3/%(project_id)s' } })).toBe('http://c/v3/631c151a6c5440bf876f97d43a8b3e9c');
    expect(pick('image', { overrides: { image: 'https://glance.example/' } })).toBe('https://glance.example/v2');
  });

  it('a region that is not there is a config error that lists what is', () => {
    try {
      pick('compute', { region: 'RegionTwo' });
      expect.unreachable();
    } catch (e) {
      expect(e).toBeInstanceOf(ConfigError);
      expect((e as ConfigError).message).toBe('the service catalog has no public compute endpoint in region RegionTwo');
      expect((e as ConfigError).hint).toMatch(/public@RegionOne/);
    }
  });
});
