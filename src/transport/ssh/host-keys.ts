/**
 * SSH host-key checking without OpenSSH: a SHA256 fingerprint pin, or an OpenSSH known_hosts
 * file (plain and hashed `|1|salt|hash` entries, `[host]:port` for non-22 ports, `*`/`?`
 * wildcards, `!negation`, `@revoked`). An unknown or changed key is refused — never trusted
 * on first use — because a backup tool that talks to the wrong host leaks every disk.
 */
import { createHash, createHmac } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { AuthError, ConfigError } from '../../errors.js';

/** The key type named inside an SSH public key blob ("ssh-ed25519", "ssh-rsa", …). */
export function keyBlobType(blob: Buffer): string {
  if (blob.length < 4) return 'unknown';
  const len = blob.readUInt32BE(0);
  if (len > 64 || 4 + len > blob.length) return 'unknown';
  return blob.toString('latin1', 4, 4 + len);
}

/** OpenSSH's `SHA256:…` fingerprint of a public key blob (base64, no padding). */
export function sha256Fingerprint(blob: Buffer): string {
  return `SHA256:${createHash('sha256').update(blob).digest('base64').replace(/=+$/, '')}`;
}

export interface KnownHostEntry {
  marker: '' | '@revoked' | '@cert-authority';
  /** The raw host field: comma-separated patterns, or one `|1|salt|hash`. */
  hosts: string;
  keyType: string;
  key: Buffer;
  line: number;
}

/** Parses known_hosts text; comment, blank and malformed lines are skipped. */
export function parseKnownHosts(text: string): KnownHostEntry[] {
  const entries: KnownHostEntry[] = [];
  text.split(/\r?\n/).forEach((raw, i) => {
    const line = raw.trim();
    if (!line || line.startsWith('#')) return;
    const fields = line.split(/\s+/);
    let marker: KnownHostEntry['marker'] = '';
    if (fields[0] === '@revoked' || fields[0] === '@cert-authority') marker = fields.shift() as KnownHostEntry['marker'];
    const [hosts, keyType, keyText] = fields;
    if (!hosts || !keyType || !keyText) return;
    const key = Buffer.from(keyText, 'base64');
    if (key.length === 0) return;
    entries.push({ marker, hosts, keyType, key, line: i + 1 });
  });
  return entries;
}

/** The name OpenSSH looks up: `host` on port 22, `[host]:port` otherwise. */
export function knownHostsName(host: string, port: number): string {
  return port === 22 ? host : `[${host}]:${port}`;
}

function wildcardToRegExp(pattern: string): RegExp {
  const body = pattern.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.');
  return new RegExp(`^${body}$`, 'i');
}

/** Does the entry's host field name `host`:`port`? Negated patterns veto a match. */
export function hostMatches(hostsField: string, host: string, port: number): boolean {
  const name = knownHostsName(host, port);
  if (hostsField.startsWith('|1|')) {
    const [, , salt, hash] = hostsField.split('|');
    if (!salt || !hash) return false;
    const mac = createHmac('sha1', Buffer.from(salt, 'base64')).update(name).digest('base64');
    return mac === hash;
  }
  let matched = false;
  for (const raw of hostsField.split(',')) {
    const negated = raw.startsWith('!');
    const pattern = negated ? raw.slice(1) : raw;
    if (!pattern) continue;
    if (wildcardToRegExp(pattern).test(name)) {
      if (negated) return false;
      matched = true;
    }
  }
  return matched;
}

export type HostKeyVerdict =
  | { ok: true }
  | { ok: false; reason: 'unknown' | 'changed' | 'revoked' | 'mismatch'; message: string; hint: string };

/** How to check one host's key; built from the inventory's `hostKey`. */
export interface HostKeyPolicy {
  /** Host key algorithms to offer, most preferred first; undefined: ssh2's defaults. */
  readonly algorithms: string[] | undefined;
  check(blob: Buffer): HostKeyVerdict;
  /** For messages: "fingerprint SHA256:…" or "known_hosts /path". */
  readonly description: string;
}

/** Checks the key against a pinned `SHA256:…` fingerprint. */
export function fingerprintPolicy(fingerprint: string, where: string): HostKeyPolicy {
  const pinned = normalizeFingerprint(fingerprint);
  if (!pinned) throw new ConfigError(`${where}: host key fingerprint ${JSON.stringify(fingerprint)} is not an OpenSSH SHA256 fingerprint (SHA256:…)`);
  return {
    algorithms: undefined,
    description: `fingerprint ${pinned}`,
    check(blob) {
      const actual = sha256Fingerprint(blob);
      if (actual === pinned) return { ok: true };
      return {
        ok: false,
        reason: 'mismatch',
        message: `${where}: host key ${actual} (${keyBlobType(blob)}) does not match the pinned fingerprint ${pinned}`,
        hint: 'if the host was reinstalled, check its key out of band (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub on the host) and update hostKey.fingerprint',
      };
    },
  };
}

function normalizeFingerprint(text: string): string | undefined {
  const m = /^SHA256:([A-Za-z0-9+/]{43})=?$/.exec(text.trim());
  return m ? `SHA256:${m[1]}` : undefined;
}

/** Host key algorithm names ssh2 can negotiate for a known_hosts key type. */
const ALGORITHMS_FOR_TYPE: Record<string, string[]> = {
  'ssh-ed25519': ['ssh-ed25519'],
  'ecdsa-sha2-nistp256': ['ecdsa-sha2-nistp256'],
  'ecdsa-sha2-nistp384': ['ecdsa-sha2-nistp384'],
  'ecdsa-sha2-nistp521': ['ecdsa-sha2-nistp521'],
  'ssh-rsa': ['rsa-sha2-512', 'rsa-sha2-256', 'ssh-rsa'],
};

/**
 * Checks the key against the known_hosts entries for host:port. Like OpenSSH, only the key
 * types known for the host are offered, so a host that kept its ed25519 key but also has an
 * unlisted ecdsa key is not mistaken for a changed one.
 */
export function knownHostsPolicy(text: string, file: string, host: string, port: number, where: string): HostKeyPolicy {
  const entries = parseKnownHosts(text).filter((e) => hostMatches(e.hosts, host, port));
  const keys = entries.filter((e) => e.marker === '');
  const revoked = entries.filter((e) => e.marker === '@revoked');
  const algorithms = [...new Set(keys.flatMap((e) => ALGORITHMS_FOR_TYPE[e.keyType] ?? []))];
  const name = knownHostsName(host, port);
  return {
    algorithms: algorithms.length > 0 ? algorithms : undefined,
    description: `known_hosts ${file}`,
    check(blob) {
      const type = keyBlobType(blob);
      const fp = sha256Fingerprint(blob);
      if (revoked.some((e) => e.key.equals(blob))) {
        return { ok: false, reason: 'revoked', message: `${where}: host key ${fp} (${type}) is marked @revoked in ${file}`, hint: 'the host presents a revoked key; do not connect until it is re-keyed' };
      }
      if (keys.some((e) => e.key.equals(blob))) return { ok: true };
      if (keys.length > 0) {
        const lines = keys.map((e) => e.line).join(', ');
        return {
          ok: false,
          reason: 'changed',
          message: `${where}: HOST KEY CHANGED — ${name} presented ${fp} (${type}), which differs from the key in ${file} (line ${lines})`,
          hint: 'someone may be intercepting the connection, or the host was reinstalled; verify the new key out of band, then update the known_hosts entry (ssh-keygen -R)',
        };
      }
      return {
        ok: false,
        reason: 'unknown',
        message: `${where}: host ${name} is not in ${file} (it presented ${fp}, ${type})`,
        hint: `add the host's key after checking it out of band: ssh-keyscan -p ${port} ${host} >> ${file}, or pin hostKey.fingerprint`,
      };
    },
  };
}

/** Reads a known_hosts file for knownHostsPolicy; a missing file is a configuration error. */
export function readKnownHosts(file: string, where: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(`${where}: cannot read known_hosts file ${file}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
}

/** The error for a refused key (exit 77: authentication and trust problems). */
export function hostKeyError(verdict: Exclude<HostKeyVerdict, { ok: true }>): AuthError {
  return new AuthError(verdict.message, { hint: verdict.hint, data: { reason: `host-key-${verdict.reason}` } });
}
