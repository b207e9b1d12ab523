/**
 * Checks that JSON Schema cannot express: references between sections, regular expressions,
 * cron expressions, readable files, resolvable secrets. Each check is defensive about types, so
 * it can run on a document that also has schema problems and every problem is reported at once.
 */
import { accessSync, constants } from 'node:fs';
import type { ConfigProblem } from '../errors.js';
import { cronProblem } from '../util/cron.js';
import type { PathSegment, SourceDocument } from './document.js';
import { schemaProblems } from './schema-problems.js';
import { secretProblem, type Environment } from './secrets.js';
import type { Secret } from './types.js';
import { strategyOptions } from './validators.compiled.js';

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);
const list = (v: unknown): unknown[] => (Array.isArray(v) ? v : []);
const entries = (v: unknown): [string, unknown][] => (isObj(v) ? Object.entries(v) : []);

export function semanticProblems(doc: SourceDocument, inv: unknown, env: Environment, offline: boolean): ConfigProblem[] {
  if (!isObj(inv)) return [];
  const out: ConfigProblem[] = [];
  const at = (path: PathSegment[], message: string, key = false) => out.push(doc.problem(path, message, { key }));

  const cloudNames = entries(inv['clouds']).map(([n]) => n);
  const destinationNames = entries(inv['destinations']).map(([n]) => n);
  const cephNames = entries(inv['cephClusters']).map(([n]) => n);

  const readable = (path: PathSegment[], file: unknown, what: string) => {
    if (offline || typeof file !== 'string' || file === '') return;
    try {
      accessSync(file, constants.R_OK);
    } catch (err) {
      at(path, `cannot read ${what} ${file}: ${describeFsError(err)}`);
    }
  };
  const secret = (path: PathSegment[], value: unknown) => {
    if (offline || !isSecretShape(value)) return;
    const problem = secretProblem(value, env);
    if (problem) at(typeof value === 'string' ? path : [...path, 'env' in value ? 'env' : 'file'], problem);
  };
  const reference = (path: PathSegment[], value: unknown, names: string[], what: string, section: string) => {
    if (typeof value !== 'string' || names.includes(value)) return;
    const known = names.length ? `defined: ${names.join(', ')}` : `none is defined; add it under ${section}:`;
    at(path, `unknown ${what} "${value}" (${known})`);
  };

  for (const [name, cloud] of entries(inv['clouds'])) {
    if (!isObj(cloud)) continue;
    const p: PathSegment[] = ['clouds', name];
    const hasUser = cloud['username'] !== undefined;
    const hasAppCred = cloud['applicationCredential'] !== undefined;
    if (cloud['cloud'] === undefined) {
      if (cloud['authUrl'] === undefined) at(p, 'needs authUrl (or cloud: NAME to take settings from clouds.yaml)');
      if (!hasUser && !hasAppCred) at(p, 'needs username + password, or applicationCredential');
    }
    if (hasUser && hasAppCred) at(p, 'give either username/password or applicationCredential, not both');
    if (hasUser && cloud['password'] === undefined && cloud['cloud'] === undefined) at([...p, 'password'], 'is required with username');
    if (typeof cloud['username'] === 'string' && cloud['username'].includes('\\') && cloud['userDomain'] !== undefined) {
      at([...p, 'userDomain'], 'the user domain is already given in username ("domain\\user"); remove one of them');
    }
    if (cloud['insecure'] === true && cloud['caBundle'] !== undefined) at([...p, 'insecure'], 'give either caBundle or insecure: true, not both');
    readable([...p, 'caBundle'], cloud['caBundle'], 'CA bundle');
    secret([...p, 'password'], cloud['password']);
    if (isObj(cloud['applicationCredential'])) secret([...p, 'applicationCredential', 'secret'], cloud['applicationCredential']['secret']);
  }

  const hypervisorNames = new Map<string, number>();
  list(inv['hypervisors']).forEach((hv, i) => {
    if (!isObj(hv)) return;
    const p: PathSegment[] = ['hypervisors', i];
    if (typeof hv['name'] === 'string') {
      const first = hypervisorNames.get(hv['name']);
      if (first !== undefined) at([...p, 'name'], `duplicate hypervisor name (also hypervisors[${first}])`);
      else hypervisorNames.set(hv['name'], i);
    }
    if (hv['keyFile'] === undefined && hv['password'] === undefined) at(p, 'needs keyFile or password for SSH');
    readable([...p, 'keyFile'], hv['keyFile'], 'SSH key file');
    secret([...p, 'password'], hv['password']);
    secret([...p, 'keyPassphrase'], hv['keyPassphrase']);
    if (isObj(hv['hostKey'])) readable([...p, 'hostKey', 'knownHostsFile'], hv['hostKey']['knownHostsFile'], 'known_hosts file');
    if (isObj(hv['netcat']) && typeof hv['netcat']['ports'] === 'string') {
      const [lo, hi] = hv['netcat']['ports'].split('-').map(Number);
      if (lo === undefined || hi === undefined || lo < 1 || hi > 65535 || lo > hi) at([...p, 'netcat', 'ports'], 'must be a range LOW-HIGH with 1 ≤ LOW ≤ HIGH ≤ 65535');
    }
  });

  for (const [name, ceph] of entries(inv['cephClusters'])) {
    if (!isObj(ceph)) continue;
    const p: PathSegment[] = ['cephClusters', name];
    if (ceph['conf'] === undefined && ceph['monitors'] === undefined) at(p, 'needs monitors or conf');
    if (isObj(ceph['conf'])) readable([...p, 'conf', 'path'], ceph['conf']['path'], 'ceph.conf');
    if (isObj(ceph['keyring'])) readable([...p, 'keyring', 'path'], ceph['keyring']['path'], 'keyring');
    list(ceph['usedBy']).forEach((u, j) => isObj(u) && reference([...p, 'usedBy', j, 'cloud'], u['cloud'], cloudNames, 'cloud', 'clouds'));
  }

  list(inv['proxies']).forEach((proxy, i) => {
    if (isObj(proxy)) reference(['proxies', i, 'cloud'], proxy['cloud'], cloudNames, 'cloud', 'clouds');
  });

  const policyNames = new Map<string, number>();
  list(inv['policies']).forEach((policy, i) => {
    if (!isObj(policy)) return;
    const p: PathSegment[] = ['policies', i];
    if (typeof policy['name'] === 'string') {
      const first = policyNames.get(policy['name']);
      if (first !== undefined) at([...p, 'name'], `duplicate policy name (also policies[${first}])`);
      else policyNames.set(policy['name'], i);
    }
    reference([...p, 'destination'], policy['destination'], destinationNames, 'destination', 'destinations');
    if (policy['cloud'] !== undefined) reference([...p, 'cloud'], policy['cloud'], cloudNames, 'cloud', 'clouds');
    else if (cloudNames.length > 1) at(p, `several clouds are defined (${cloudNames.join(', ')}): say which one with cloud: NAME`);
    const select = policy['select'];
    if (isObj(select) && typeof select['nameRegex'] === 'string') {
      try {
        new RegExp(select['nameRegex']);
      } catch (err) {
        at([...p, 'select', 'nameRegex'], `is not a valid regular expression: ${(err as Error).message.replace(/^Invalid regular expression: /, '')}`);
      }
    }
    list(policy['schedules']).forEach((s, j) => {
      if (!isObj(s) || typeof s['when'] !== 'string') return;
      const problem = cronProblem(s['when']);
      if (problem) at([...p, 'schedules', j, 'when'], problem);
    });
    const strategy = policy['strategy'];
    if (typeof strategy === 'string' && Object.hasOwn(strategyOptions, strategy) && policy['strategyOptions'] !== undefined) {
      const validate = strategyOptions[strategy as keyof typeof strategyOptions];
      out.push(...schemaProblems(doc, validate, policy['strategyOptions'], [...p, 'strategyOptions']));
      const opts = policy['strategyOptions'];
      if (isObj(opts)) {
        for (const key of ['cluster', 'cephCluster']) reference([...p, 'strategyOptions', key], opts[key], cephNames, 'Ceph cluster', 'cephClusters');
      }
    }
  });
  return out;
}

function isSecretShape(v: unknown): v is Secret {
  if (typeof v === 'string') return true;
  return isObj(v) && ((typeof v['env'] === 'string' && Object.keys(v).length === 1) || (typeof v['file'] === 'string' && Object.keys(v).length === 1));
}

function describeFsError(err: unknown): string {
  const code = (err as NodeJS.ErrnoException).code;
  const words: Record<string, string> = { ENOENT: 'no such file', EACCES: 'permission denied', EISDIR: 'is a directory', ENOTDIR: 'a parent is not a directory' };
  return code ? (words[code] ?? code) : String(err);
}
