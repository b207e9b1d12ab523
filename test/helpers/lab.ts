/**
 * The test lab (test/lab, `npm run lab:up`) as integration tests see it: `lab.json` plus a
 * liveness check per component. A test that needs a component calls `requireLab(...)` (in
 * beforeAll or at the top of the test): when the component is down the test FAILS with a
 * message saying how to start it — integration tests never skip silently.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

export const LAB_DIR = process.env['VPROTECT_LAB'] ?? '/tmp/vprotect-lab';

export type LabComponent = 'ceph' | 'hypervisor' | 'openstack';

export interface LabSsh {
  host: string;
  port: number;
  user: string;
  keyFile: string;
  rsaKeyFile?: string;
  knownHostsFile: string;
  configFile?: string;
  hostAlias?: string;
  /** "ssh-ed25519 AAAA…" and its SHA256 fingerprint. */
  hostKey?: string;
  hostKeySha256?: string;
  netns?: { host: string; port: number; namespace: string; clientNamespace: string; proxyCommand: string; linkDevice: string };
}

export interface LabDisk {
  target: string;
  format: string;
  path?: string;
  rbd?: string;
  backing?: { path: string; format: string };
}

export interface LabDomain {
  name: string;
  disks: LabDisk[];
}

/** lab.json: each component publishes its part; fields of components that are down are absent. */
export interface Lab {
  lab: string;
  ssh?: LabSsh;
  libvirt?: { uri: string; sshUri?: string; accel?: string; qemuUser?: string };
  vmsDir?: string;
  domains?: LabDomain[];
  diskPattern?: Record<string, unknown>;
  ceph?: Record<string, unknown> & { conf: string; keyring: string; user: string; pools: string[] };
  openstack?: Record<string, unknown>;
  [key: string]: unknown;
}

/** Daemons (pid file names under $LAB/pids) that must be alive for each component. */
const DAEMONS: Record<LabComponent, { required: string[]; prefix?: string }> = {
  ceph: { required: ['ceph-mon', 'ceph-osd'], prefix: 'ceph-' },
  hypervisor: { required: ['sshd'], prefix: undefined },
  openstack: { required: ['os-keystone'], prefix: 'os-' },
};
const HYPERVISOR_OPTIONAL = ['libvirtd', 'virtlogd', 'sshd-netns'];

function notRunning(component: string, why: string): Error {
  return new Error(`lab component "${component}" is not running (${why}): start it with \`npm run lab:up\``);
}

/** A lab pid file holds "<pid> <starttime>"; alive = that process, same start time, not a zombie. */
function daemonAlive(name: string): boolean | undefined {
  const file = join(LAB_DIR, 'pids', `${name}.pid`);
  if (!existsSync(file)) return undefined;
  const [pid, start] = readFileSync(file, 'utf8').trim().split(/\s+/);
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // fields[0] is field 3 (state); field 22 (starttime) is fields[19].
    return fields[0] !== 'Z' && (start === undefined || fields[19] === start);
  } catch {
    return false;
  }
}

/** lab.json as it is now (throws the "start it" message when the lab was never brought up). */
export function loadLab(): Lab {
  const file = join(LAB_DIR, 'lab.json');
  if (!existsSync(file)) throw notRunning('lab', `${file} does not exist`);
  return JSON.parse(readFileSync(file, 'utf8')) as Lab;
}

/**
 * lab.json, after checking that each component is up: its ready marker exists and its
 * daemons are alive. Throws "…is not running: start it with `npm run lab:up`" otherwise.
 */
export function requireLab(...components: LabComponent[]): Lab {
  const lab = loadLab();
  for (const c of components) {
    const marker = join(LAB_DIR, 'state', `${c}.ready`);
    if (!existsSync(marker)) throw notRunning(c, `no ready marker ${marker}`);
    const { required } = DAEMONS[c];
    for (const name of required) {
      const alive = daemonAlive(name);
      if (alive !== true) throw notRunning(c, alive === undefined ? `no pid file for ${name}` : `${name} is dead`);
    }
    const optional = c === 'hypervisor' ? HYPERVISOR_OPTIONAL : [];
    for (const name of optional) {
      if (daemonAlive(name) === false) throw notRunning(c, `${name} is dead`);
    }
  }
  if (components.includes('hypervisor') && !lab.ssh) throw notRunning('hypervisor', 'lab.json has no ssh section');
  return lab;
}

/** The lab's SSH endpoint (hypervisor component). */
export function requireLabSsh(): LabSsh {
  return requireLab('hypervisor').ssh!;
}

/** A lab domain by name, with a clear failure when the lab has no such domain. */
export function labDomain(lab: Lab, name: string): LabDomain {
  const d = lab.domains?.find((x) => x.name === name);
  if (!d) throw new Error(`lab domain ${name} is not defined (domains: ${(lab.domains ?? []).map((x) => x.name).join(', ') || 'none'}): start it with \`npm run lab:up\``);
  return d;
}
