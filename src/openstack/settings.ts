/**
 * Where the connection settings of a cloud come from, resolved into one ConnectionSettings:
 *
 * - an inventory entry (`clouds.<name>`), optionally starting from a clouds.yaml entry
 *   (`cloud: NAME`), whose explicit fields then override clouds.yaml;
 * - `--os-cloud NAME` / `OS_CLOUD`: a clouds.yaml entry alone;
 * - `OS_*` variables alone (an openrc file), when no cloud is named anywhere.
 *
 * clouds.yaml is found the way openstacksdk finds it: OS_CLIENT_CONFIG_FILE, ./clouds.yaml,
 * ~/.config/openstack/clouds.yaml, /etc/openstack/clouds.yaml; secure.yaml next to it is merged.
 * A clouds.yaml entry without a password takes OS_PASSWORD, as the openstack CLI does; other
 * OS_* variables never override a named cloud, so a sourced openrc of one cloud cannot
 * silently redirect another cloud's backups.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parse } from 'yaml';
import { ConfigError } from '../errors.js';
import { resolveSecret, type Environment } from '../inventory/secrets.js';
import type { CloudConfig } from '../inventory/types.js';

export type DomainRef = { id: string } | { name: string };

export type AuthMethod =
  | { kind: 'password'; username: string; userDomain: DomainRef; password: string }
  | { kind: 'applicationCredential'; id: string; secret: string };

export type EndpointInterface = 'public' | 'internal' | 'admin';

export interface ConnectionSettings {
  /** Name used in messages: the inventory's cloud name, the clouds.yaml entry, or "OS_* environment". */
  name: string;
  /** Where the settings came from, for error messages. */
  source: string;
  authUrl: string;
  auth: AuthMethod;
  /** Project scope; absent for application credentials (they carry their own scope). */
  project?: { id: string } | { name: string; domain: DomainRef } | undefined;
  region?: string | undefined;
  interface: EndpointInterface;
  caBundle?: string | undefined;
  insecure: boolean;
  /** Service type (compute, image, volumev3, block-storage, network, identity, placement) → URL. */
  endpointOverrides: Record<string, string>;
}

export interface ResolveOptions {
  env: Environment;
  /** Directory for ./clouds.yaml; defaults to the current directory. */
  cwd?: string | undefined;
  /** `--os-cloud`: a clouds.yaml entry that replaces whatever the inventory names. */
  osCloud?: string | undefined;
}

/** Settings for an inventory cloud entry. */
export function settingsFromInventory(name: string, cloud: CloudConfig, opts: ResolveOptions): ConnectionSettings {
  const where = `clouds.${name}`;
  const fromYaml = opts.osCloud ?? cloud.cloud;
  const base: Partial<Layer> = fromYaml ? cloudsYamlLayer(fromYaml, opts) : {};
  const own: Partial<Layer> = {
    authUrl: cloud.authUrl,
    region: cloud.region,
    interface: cloud.interface,
    caBundle: cloud.caBundle,
    insecure: cloud.insecure,
    endpointOverrides: cloud.endpointOverrides,
    projectName: cloud.project,
    projectDomain: cloud.projectDomain !== undefined ? { name: cloud.projectDomain } : undefined,
  };
  if (cloud.username !== undefined) {
    own.username = cloud.username;
    if (cloud.userDomain !== undefined) own.userDomain = { name: cloud.userDomain };
    own.appCredId = undefined;
    own.appCredSecret = undefined;
  }
  if (cloud.password !== undefined) own.password = resolveSecret(cloud.password, opts.env, `${where}.password`);
  if (cloud.applicationCredential) {
    own.appCredId = cloud.applicationCredential.id;
    own.appCredSecret = resolveSecret(cloud.applicationCredential.secret, opts.env, `${where}.applicationCredential.secret`);
    own.username = undefined;
    own.password = undefined;
  }
  // A project named in the inventory replaces a project id from clouds.yaml.
  if (cloud.project !== undefined) delete base.projectId;
  const source = fromYaml ? `inventory ${where} with clouds.yaml entry "${fromYaml}"` : `inventory ${where}`;
  return finish(name, source, merge(base, own), opts.env);
}

/** Settings when the inventory names no cloud: --os-cloud / OS_CLOUD, else the OS_* variables. */
export function settingsFromEnvironment(opts: ResolveOptions): ConnectionSettings {
  const named = opts.osCloud ?? opts.env['OS_CLOUD'];
  if (named) return finish(named, `clouds.yaml entry "${named}"`, cloudsYamlLayer(named, opts), opts.env);
  if (!opts.env['OS_AUTH_URL']) {
    throw new ConfigError('no cloud to connect to', [], {
      hint: 'add a clouds section to the inventory, pass --os-cloud NAME (clouds.yaml), or source an openrc file (OS_AUTH_URL, OS_USERNAME, ...)',
    });
  }
  return finish('env', 'OS_* environment variables', envLayer(opts.env), opts.env);
}

interface Layer {
  authUrl: string;
  username: string;
  userDomain: DomainRef;
  password: string;
  appCredId: string;
  appCredSecret: string;
  projectName: string;
  projectId: string;
  projectDomain: DomainRef;
  defaultDomain: DomainRef;
  region: string;
  interface: string;
  caBundle: string;
  insecure: boolean;
  endpointOverrides: Record<string, string>;
}

/**
 * `over` wins where it has a value. Credential fields it sets to undefined explicitly are
 * cleared, so an inventory that gives an application credential is not mixed with a
 * clouds.yaml password (and the other way round).
 */
function merge(base: Partial<Layer>, over: Partial<Layer>): Partial<Layer> {
  const out: Record<string, unknown> = { ...base };
  const clearable = new Set(['username', 'password', 'appCredId', 'appCredSecret', 'userDomain']);
  for (const [k, v] of Object.entries(over)) {
    if (v !== undefined) out[k] = v;
    else if (clearable.has(k)) delete out[k];
  }
  if (base.endpointOverrides || over.endpointOverrides) out['endpointOverrides'] = { ...base.endpointOverrides, ...over.endpointOverrides };
  return out as Partial<Layer>;
}

/** `domain\user` → user in domain (DESIGN.md §6); otherwise the user as given. */
export function splitDomainUser(username: string): { user: string; domain?: string } {
  const i = username.indexOf('\\');
  if (i <= 0) return { user: username };
  return { domain: username.slice(0, i), user: username.slice(i + 1) };
}

const DEFAULT_DOMAIN: DomainRef = { id: 'default' };

function finish(name: string, source: string, l: Partial<Layer>, env: Environment): ConnectionSettings {
  const problem = (msg: string, hint?: string) => new ConfigError(`cloud "${name}" (${source}): ${msg}`, [], hint ? { hint } : {});
  if (!l.authUrl) throw problem('no auth URL', 'set authUrl (clouds.yaml auth.auth_url, OS_AUTH_URL)');
  const authUrl = normaliseAuthUrl(l.authUrl);
  const iface = (l.interface ?? 'public').replace(/URL$/, '');
  if (iface !== 'public' && iface !== 'internal' && iface !== 'admin') throw problem(`interface "${l.interface}" is not public, internal or admin`);
  let auth: AuthMethod;
  if (l.appCredId) {
    if (!l.appCredSecret) throw problem('application credential without a secret');
    auth = { kind: 'applicationCredential', id: l.appCredId, secret: l.appCredSecret };
  } else if (l.username) {
    const split = splitDomainUser(l.username);
    const password = l.password ?? env['OS_PASSWORD'];
    if (!password) throw problem(`no password for user "${l.username}"`, 'set password (a secret reference), clouds.yaml auth.password, or OS_PASSWORD');
    const userDomain: DomainRef = split.domain ? { name: split.domain } : (l.userDomain ?? l.defaultDomain ?? DEFAULT_DOMAIN);
    auth = { kind: 'password', username: split.user, userDomain, password };
  } else {
    throw problem('no credentials', 'give username + password, or applicationCredential');
  }
  let project: ConnectionSettings['project'];
  if (auth.kind === 'password') {
    if (l.projectId) project = { id: l.projectId };
    else if (l.projectName) project = { name: l.projectName, domain: l.projectDomain ?? l.defaultDomain ?? DEFAULT_DOMAIN };
    else throw problem('no project to scope to', 'set project (and projectDomain), clouds.yaml auth.project_name, or OS_PROJECT_NAME');
  }
  return {
    name,
    source,
    authUrl,
    auth,
    project,
    region: l.region,
    interface: iface,
    caBundle: l.caBundle,
    insecure: l.insecure === true,
    endpointOverrides: l.endpointOverrides ?? {},
  };
}

/** Keystone v3 base URL: accepts ".../v3", ".../v3/", or the bare host (":5000" → ":5000/v3"). */
export function normaliseAuthUrl(url: string): string {
  const trimmed = url.replace(/\/+$/, '');
  if (/\/v3$/.test(trimmed)) return trimmed;
  if (/\/v2\.0$/.test(trimmed)) return trimmed.replace(/\/v2\.0$/, '/v3');
  return `${trimmed}/v3`;
}

function domainRef(id: string | undefined, name: string | undefined): DomainRef | undefined {
  if (id) return { id };
  if (name) return { name };
  return undefined;
}

function envLayer(env: Environment): Partial<Layer> {
  const e = (k: string) => env[k] || undefined;
  return {
    authUrl: e('OS_AUTH_URL'),
    username: e('OS_USERNAME'),
    password: e('OS_PASSWORD'),
    userDomain: domainRef(e('OS_USER_DOMAIN_ID'), e('OS_USER_DOMAIN_NAME')),
    appCredId: e('OS_APPLICATION_CREDENTIAL_ID'),
    appCredSecret: e('OS_APPLICATION_CREDENTIAL_SECRET'),
    projectName: e('OS_PROJECT_NAME') ?? e('OS_TENANT_NAME'),
    projectId: e('OS_PROJECT_ID') ?? e('OS_TENANT_ID'),
    projectDomain: domainRef(e('OS_PROJECT_DOMAIN_ID'), e('OS_PROJECT_DOMAIN_NAME')),
    defaultDomain: domainRef(e('OS_DEFAULT_DOMAIN_ID') ?? e('OS_DEFAULT_DOMAIN'), e('OS_DEFAULT_DOMAIN_NAME')),
    region: e('OS_REGION_NAME'),
    interface: e('OS_INTERFACE') ?? e('OS_ENDPOINT_TYPE'),
    caBundle: e('OS_CACERT'),
    insecure: ['1', 'true', 'yes'].includes((e('OS_INSECURE') ?? '').toLowerCase()) || undefined,
  };
}

/** The clouds.yaml file(s) in openstacksdk's order; the first that exists wins. */
export function cloudsYamlCandidates(env: Environment, cwd: string | undefined, file = 'clouds.yaml'): string[] {
  const home = env['HOME'];
  const xdg = env['XDG_CONFIG_HOME'] ?? (home ? join(home, '.config') : undefined);
  const list: string[] = [];
  if (file === 'clouds.yaml' && env['OS_CLIENT_CONFIG_FILE']) list.push(env['OS_CLIENT_CONFIG_FILE']);
  list.push(resolve(cwd ?? '.', file));
  if (xdg) list.push(join(xdg, 'openstack', file));
  list.push(join('/etc/openstack', file));
  return list;
}

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);

function readYaml(file: string): Obj {
  let doc: unknown;
  try {
    doc = parse(readFileSync(file, 'utf8'));
  } catch (err) {
    throw new ConfigError(`cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  return isObj(doc) ? doc : {};
}

function deepMerge(a: Obj, b: Obj): Obj {
  const out: Obj = { ...a };
  for (const [k, v] of Object.entries(b)) out[k] = isObj(v) && isObj(out[k]) ? deepMerge(out[k] as Obj, v) : v;
  return out;
}

export function cloudsYamlLayer(name: string, opts: ResolveOptions): Partial<Layer> {
  const candidates = cloudsYamlCandidates(opts.env, opts.cwd);
  const file = candidates.find((f) => existsSync(f));
  if (!file) {
    throw new ConfigError(`clouds.yaml entry "${name}" requested, but no clouds.yaml was found`, [], { hint: `looked in ${candidates.join(', ')}` });
  }
  const clouds = readYaml(file)['clouds'];
  const found = isObj(clouds) ? clouds[name] : undefined;
  if (!isObj(found)) {
    const known = isObj(clouds) ? Object.keys(clouds).join(', ') : '';
    throw new ConfigError(`${file} has no cloud "${name}"`, [], { hint: known ? `it defines: ${known}` : 'it defines no clouds' });
  }
  let entry: Obj = found;
  const secureFile = cloudsYamlCandidates(opts.env, opts.cwd, 'secure.yaml').find((f) => existsSync(f));
  if (secureFile) {
    const secure = readYaml(secureFile)['clouds'];
    if (isObj(secure) && isObj(secure[name])) entry = deepMerge(entry, secure[name] as Obj);
  }
  const s = (o: Obj, k: string) => (typeof o[k] === 'string' && o[k] !== '' ? (o[k] as string) : undefined);
  const auth = isObj(entry['auth']) ? entry['auth'] : {};
  const overrides: Record<string, string> = {};
  for (const [k, v] of Object.entries(entry)) {
    const m = /^(.+)_endpoint_override$/.exec(k);
    if (m && typeof v === 'string') overrides[m[1]!.replace(/_/g, '-')] = v;
  }
  const verify = entry['verify'];
  return {
    authUrl: s(auth, 'auth_url'),
    username: s(auth, 'username') ?? s(auth, 'user_name'),
    password: s(auth, 'password'),
    userDomain: domainRef(s(auth, 'user_domain_id'), s(auth, 'user_domain_name')),
    appCredId: s(auth, 'application_credential_id'),
    appCredSecret: s(auth, 'application_credential_secret'),
    projectName: s(auth, 'project_name') ?? s(auth, 'tenant_name'),
    projectId: s(auth, 'project_id') ?? s(auth, 'tenant_id'),
    projectDomain: domainRef(s(auth, 'project_domain_id'), s(auth, 'project_domain_name')),
    defaultDomain: domainRef(s(auth, 'default_domain_id') ?? s(auth, 'domain_id'), s(auth, 'default_domain_name') ?? s(auth, 'domain_name')),
    region: s(entry, 'region_name'),
    interface: s(entry, 'interface') ?? s(entry, 'endpoint_type'),
    caBundle: s(entry, 'cacert'),
    insecure: verify === false || s(entry, 'insecure') === 'true' || entry['insecure'] === true ? true : undefined,
    endpointOverrides: Object.keys(overrides).length ? overrides : undefined,
  } as Partial<Layer>;
}
