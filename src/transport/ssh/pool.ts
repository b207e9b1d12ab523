/**
 * SSH connections by hypervisor: one shared, persistent connection per host (opened on first
 * use, reopened when it died), and a per-host limit on concurrent jobs (`maxConcurrentJobs`)
 * so a run does not swamp one hypervisor while others idle.
 */
import { readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { ConfigError } from '../../errors.js';
import { resolveSecret, type Environment } from '../../inventory/secrets.js';
import type { HypervisorConfig } from '../../inventory/types.js';
import { Semaphore } from '../semaphore.js';
import { SshConnection, type SshConnectOptions, type SshTarget } from './connection.js';
import { fingerprintPolicy, knownHostsPolicy, readKnownHosts } from './host-keys.js';

export interface SshPoolOptions extends SshConnectOptions {
  /** Where Secret references ({env: NAME}) are resolved; the CLI passes process.env. */
  env: Environment;
  /** known_hosts used when a hypervisor has no hostKey (default ~/.ssh/known_hosts). */
  defaultKnownHostsFile?: string;
  /** Jobs per hypervisor when it sets no maxConcurrentJobs (default 2). */
  defaultMaxJobs?: number;
}

/** Turns an inventory hypervisor into a connectable target (reads the key, resolves secrets). */
export function sshTarget(hv: HypervisorConfig, env: Environment, defaultKnownHostsFile?: string): SshTarget {
  const where = `hypervisor ${hv.name}`;
  const port = hv.port ?? 22;
  let hostKey;
  if (hv.hostKey && 'fingerprint' in hv.hostKey) hostKey = fingerprintPolicy(hv.hostKey.fingerprint, where);
  else {
    const file = hv.hostKey?.knownHostsFile ?? defaultKnownHostsFile ?? join(homedir(), '.ssh', 'known_hosts');
    hostKey = knownHostsPolicy(readKnownHosts(file, where), file, hv.address, port, where);
  }
  let privateKey: Buffer | undefined;
  if (hv.keyFile) {
    try {
      privateKey = readFileSync(hv.keyFile);
    } catch (err) {
      throw new ConfigError(`${where}: cannot read key file ${hv.keyFile}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
    }
  }
  return {
    name: hv.name,
    host: hv.address,
    port,
    username: hv.user ?? 'root',
    ...(privateKey ? { privateKey, keyFile: hv.keyFile } : {}),
    ...(hv.keyPassphrase !== undefined ? { passphrase: resolveSecret(hv.keyPassphrase, env, `${where} keyPassphrase`) } : {}),
    ...(hv.password !== undefined ? { password: resolveSecret(hv.password, env, `${where} password`) } : {}),
    hostKey,
  };
}

export class SshPool {
  private readonly connections = new Map<string, Promise<SshConnection>>();
  private readonly jobs = new Map<string, Semaphore>();
  private closed = false;

  constructor(private readonly options: SshPoolOptions) {}

  /** The shared connection to `hv`, opened (or reopened after a failure) on demand. */
  async connection(hv: HypervisorConfig): Promise<SshConnection> {
    if (this.closed) throw new ConfigError('the SSH pool is closed');
    const existing = this.connections.get(hv.name);
    if (existing) {
      const conn = await existing.catch(() => undefined);
      if (conn?.alive) return conn;
      if (this.connections.get(hv.name) !== existing) return this.connection(hv); // someone reconnected meanwhile
      this.connections.delete(hv.name);
    }
    const opening = (async () => SshConnection.connect(sshTarget(hv, this.options.env, this.options.defaultKnownHostsFile), this.options))();
    this.connections.set(hv.name, opening);
    try {
      return await opening;
    } catch (err) {
      // A failed attempt is not cached: the next call tries again.
      if (this.connections.get(hv.name) === opening) this.connections.delete(hv.name);
      throw err;
    }
  }

  /**
   * Runs `job` with the host's connection once a job slot on that host is free
   * (hv.maxConcurrentJobs, default 2). The slot is released when the job settles.
   */
  async withHost<T>(hv: HypervisorConfig, job: (conn: SshConnection) => Promise<T>, signal?: AbortSignal): Promise<T> {
    let slots = this.jobs.get(hv.name);
    if (!slots) {
      slots = new Semaphore(hv.maxConcurrentJobs ?? this.options.defaultMaxJobs ?? 2);
      this.jobs.set(hv.name, slots);
    }
    return slots.use(async () => job(await this.connection(hv)), signal);
  }

  /** Closes every connection. */
  async close(): Promise<void> {
    this.closed = true;
    const all = [...this.connections.values()];
    this.connections.clear();
    await Promise.all(all.map(async (p) => (await p.catch(() => undefined))?.close()));
  }
}
