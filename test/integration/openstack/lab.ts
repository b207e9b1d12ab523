/**
 * The lab's OpenStack as these tests see it: test/helpers/lab.ts checks that it runs (and
 * fails the test with "start it with `npm run lab:up`" when not); this adds the typed
 * description that openstack-up.sh writes to $LAB/openstack.json.
 */
import { readFileSync } from 'node:fs';
import { LAB_DIR, requireLab } from '../../helpers/lab.js';

export interface LabUser {
  username: string;
  password: string;
  userDomain: string;
  project: string;
  projectDomain: string;
  projectId?: string;
  userId: string;
  keypair?: string;
}

export interface LabOpenStack {
  authUrl: string;
  region: string;
  admin: LabUser;
  backup: LabUser & { userDomainId: string };
  alice: LabUser & { keypair: string; privateKeyFile: string };
  appCredential: { id: string; name: string; file: string };
  cloudsYaml: string;
  openrc: Record<'admin' | 'backup' | 'alice', string>;
  image: { id: string; name: string; diskFormat: string; size: number; sha256: string };
  flavors: Record<string, string>;
  volumeType: { id: string; name: string; backend: string; rbdPool: string };
  computes: { host: string; hypervisorHostname: string; availabilityZone: string; imagesType: 'qcow2' | 'rbd'; rbdPool?: string; instancesPath: string }[];
  network: { networkId: string; networkName: string };
}

/** The lab's description; throws (the test fails) when the lab is not up. */
export function labOpenStack(): LabOpenStack {
  requireLab('openstack');
  return JSON.parse(readFileSync(`${LAB_DIR}/openstack.json`, 'utf8')) as LabOpenStack;
}

export function appCredentialSecret(lab: LabOpenStack): string {
  return (JSON.parse(readFileSync(lab.appCredential.file, 'utf8')) as { secret: string }).secret;
}

/** The variables an openrc file exports (`export A=1 B="2"` lines; `unset` lines ignored). */
export function readOpenrc(file: string): Record<string, string> {
  const env: Record<string, string> = {};
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    if (!/^\s*(export\s+)?OS_/.test(line)) continue;
    for (const m of line.matchAll(/(OS_[A-Z_]+)=("[^"]*"|'[^']*'|\S+)/g)) env[m[1]!] = m[2]!.replace(/^(["'])(.*)\1$/, '$2');
  }
  return env;
}
