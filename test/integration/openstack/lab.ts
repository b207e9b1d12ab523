/**
 * Minimal access to the lab's OpenStack for these tests (no shared test/helpers/lab.ts existed
 * when they were written). A test that needs the lab fails, never skips, when it is down.
 */
import { existsSync, readFileSync } from 'node:fs';

export const LAB = process.env['VPROTECT_LAB'] ?? '/tmp/vprotect-lab';

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
  const ready = `${LAB}/state/openstack.ready`;
  if (!existsSync(ready) || !existsSync(`${LAB}/openstack.json`)) {
    throw new Error(`the lab's OpenStack is not running (${ready} missing): start it with \`npm run lab:up\``);
  }
  return JSON.parse(readFileSync(`${LAB}/openstack.json`, 'utf8')) as LabOpenStack;
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
