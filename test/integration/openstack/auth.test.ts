/**
 * Authentication against the lab's real Keystone (Zed): both domains, domain\user, clouds.yaml,
 * OS_* variables, application credentials, wrong credentials, token renewal mid-run.
 */
import { describe, expect, it } from 'vitest';
import { AuthError } from '../../../src/errors.js';
import { Cloud } from '../../../src/openstack/cloud.js';
import { settingsFromEnvironment, settingsFromInventory, type ConnectionSettings } from '../../../src/openstack/settings.js';
import { recordingLogger } from '../../unit/openstack/fake-cloud.js';
import { appCredentialSecret, labOpenStack, readOpenrc } from './lab.js';

const lab = labOpenStack();

async function connect(settings: ConnectionSettings, log = recordingLogger()) {
  const cloud = await Cloud.connect(settings, { log });
  return { cloud, log };
}

describe('Keystone of the lab', () => {
  it('password auth in the Default domain (admin) and in domain acme (backup)', async () => {
    const admin = await connect(settingsFromInventory('a', { authUrl: lab.authUrl, username: 'admin', password: lab.admin.password, project: 'admin' }, { env: {} }));
    expect(admin.cloud.session.token.user).toMatchObject({ name: 'admin', domain: { id: 'default' } });
    expect(admin.cloud.session.isAdmin).toBe(true);
    admin.cloud.close();
    const backup = await connect(settingsFromInventory('b', { authUrl: lab.authUrl, username: 'backup', userDomain: 'acme', password: { env: 'PW' }, project: 'acme-prod', projectDomain: 'acme' }, { env: { PW: lab.backup.password } }));
    expect(backup.cloud.session.token.user).toMatchObject({ id: lab.backup.userId, name: 'backup', domain: { name: 'acme' } });
    expect(backup.cloud.session.token.project).toMatchObject({ id: lab.backup.projectId, name: 'acme-prod' });
    backup.cloud.close();
  });

  it('domain\\user', async () => {
    const { cloud } = await connect(settingsFromInventory('b', { authUrl: lab.authUrl, username: 'acme\\backup', password: lab.backup.password, project: 'acme-prod', projectDomain: 'acme' }, { env: {} }));
    expect(cloud.session.token.user.domain.name).toBe('acme');
    cloud.close();
  });

  it('clouds.yaml (--os-cloud and inventory cloud:) and OS_* from the openrc file', async () => {
    const env = { OS_CLIENT_CONFIG_FILE: lab.cloudsYaml };
    for (const settings of [
      settingsFromEnvironment({ env, osCloud: 'lab-backup' }),
      settingsFromInventory('prod', { cloud: 'lab-backup' }, { env }),
      settingsFromEnvironment({ env: readOpenrc(lab.openrc.backup) }),
    ]) {
      const { cloud } = await connect(settings);
      expect(cloud.session.token.project?.name).toBe('acme-prod');
      expect(cloud.session.token.user.name).toBe('backup');
      cloud.close();
    }
  });

  it('application credential, from clouds.yaml and from the inventory', async () => {
    const a = await connect(settingsFromEnvironment({ env: { OS_CLIENT_CONFIG_FILE: lab.cloudsYaml }, osCloud: 'lab-backup-appcred' }));
    expect(a.cloud.session.token.methods).toEqual(['application_credential']);
    expect(a.cloud.session.token.project?.name).toBe('acme-prod');
    a.cloud.close();
    const b = await connect(settingsFromInventory('x', { authUrl: lab.authUrl, applicationCredential: { id: lab.appCredential.id, secret: appCredentialSecret(lab) } }, { env: {} }));
    expect(b.cloud.session.token.user.name).toBe('backup');
    b.cloud.close();
  });

  it('wrong password: AuthError 77 naming the user and domain, secret not in the message', async () => {
    const err = await connect(settingsFromInventory('b', { authUrl: lab.authUrl, username: 'acme\\backup', password: 'not-the-password', project: 'acme-prod', projectDomain: 'acme' }, { env: {} })).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AuthError);
    expect((err as AuthError).exitCode).toBe(77);
    expect((err as Error).message).toContain('refused user "backup" in domain "acme", project "acme-prod" in domain "acme" (HTTP 401');
    expect((err as Error).message).not.toContain('not-the-password');
  });

  it('right password, wrong domain: says which domain failed', async () => {
    const err = await connect(settingsFromInventory('b', { authUrl: lab.authUrl, username: 'backup', password: lab.backup.password, project: 'acme-prod', projectDomain: 'acme' }, { env: {} })).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AuthError);
    expect((err as Error).message).toContain('user "backup" in domain id "default"');
  });

  it('unreachable Keystone: exit 69', async () => {
    const err = await Cloud.connect(settingsFromInventory('b', { authUrl: 'http://127.0.0.1:5999/v3', username: 'admin', password: 'x', project: 'admin' }, { env: {} }), {
      log: recordingLogger(),
      retry: { attempts: 2, baseDelayMs: 10 },
    }).catch((e: unknown) => e);
    expect((err as AuthError).exitCode).toBe(69);
  });

  it('a token revoked mid-run: the real 401 from Keystone triggers one renewal and the call succeeds', async () => {
    const { cloud, log } = await connect(settingsFromEnvironment({ env: { OS_CLIENT_CONFIG_FILE: lab.cloudsYaml }, osCloud: 'lab-backup' }));
    const projectId = cloud.session.projectId!;
    await cloud.identity.getProject(projectId);
    // Revoke our own token (DELETE /v3/auth/tokens). Nova and Cinder cache validations in
    // memcached for minutes, Keystone itself does not, so its own API sees the revocation.
    const token = await cloud.session.authToken();
    await cloud.session.transport.send({ service: 'identity', method: 'DELETE', url: `${lab.authUrl}/auth/tokens`, headers: { 'x-auth-token': token, 'x-subject-token': token } });
    expect((await cloud.identity.getProject(projectId)).name).toBe('acme-prod');
    expect(log.lines.some((l) => l.includes('renewing the Keystone token') && l.includes('401'))).toBe(true);
    expect(await cloud.session.authToken()).not.toBe(token);
    expect(log.lines.join('\n')).not.toContain(token);
    cloud.close();
  });

  it('a short-lived token (capped by an expiring application credential) is renewed before it expires', async () => {
    // Keystone caps a token's expiry at its application credential's expires_at, which gives a
    // real short token lifetime without reconfiguring the shared lab Keystone.
    const owner = await connect(settingsFromEnvironment({ env: { OS_CLIENT_CONFIG_FILE: lab.cloudsYaml }, osCloud: 'lab-backup' }));
    const created = await owner.cloud.identity.api.json(
      'POST',
      `/users/${lab.backup.userId}/application_credentials`,
      { json: { application_credential: { name: `vprotect-expiry-${Date.now()}`, expires_at: new Date(Date.now() + 24_000).toISOString().replace('Z', '') } } },
      (d) => ({ id: d.get('application_credential').str('id'), secret: d.get('application_credential').str('secret') }),
    );
    try {
      const { cloud, log } = await connect(settingsFromInventory('x', { authUrl: lab.authUrl, applicationCredential: created }, { env: {} }));
      const first = cloud.session.token;
      const lifetime = first.expiresAt.getTime() - first.issuedAt.getTime();
      expect(lifetime).toBeLessThan(25_000);
      const nova = await cloud.nova();
      const firstToken = await cloud.session.authToken();
      let renewedAt: number | undefined;
      while (Date.now() < first.expiresAt.getTime() - 200) {
        await nova.listFlavors(); // every call succeeds: no request ever carries an expired token
        if ((await cloud.session.authToken()) !== firstToken) {
          renewedAt = Date.now();
          break;
        }
        await new Promise((r) => setTimeout(r, 250));
      }
      expect(renewedAt).toBeDefined();
      expect(renewedAt!).toBeLessThan(first.expiresAt.getTime());
      expect(log.lines.some((l) => l.includes('renewing the Keystone token') && l.includes('about to expire'))).toBe(true);
      cloud.close();
    } finally {
      await owner.cloud.identity.api.send('DELETE', `/users/${lab.backup.userId}/application_credentials/${created.id}`);
      owner.cloud.close();
    }
  });
});
