/**
 * One SSH connection per hypervisor for all the sessions of a run (a new connection costs
 * ~0.4 s): sessions borrow it and the last one to close it closes the pool.
 */
import type { HypervisorConfig } from '../../src/inventory/types.js';
import type { Environment } from '../../src/inventory/secrets.js';
import type { Logger } from '../../src/log.js';
import { SshPool, type SshConnection } from '../../src/transport/ssh.js';

let shared: { pool: SshPool; users: number } | undefined;

export interface BorrowedConnection {
  conn: SshConnection;
  release(): Promise<void>;
}

export async function borrowConnection(hv: HypervisorConfig, env: Environment, log: Logger): Promise<BorrowedConnection> {
  if (!shared) shared = { pool: new SshPool({ env, log, connectTimeoutMs: 20_000 }), users: 0 };
  const entry = shared;
  entry.users++;
  let released = false;
  const release = async () => {
    if (released) return;
    released = true;
    entry.users--;
    if (entry.users === 0 && shared === entry) {
      shared = undefined;
      await entry.pool.close();
    }
  };
  try {
    return { conn: await entry.pool.connection(hv), release };
  } catch (err) {
    await release();
    throw err;
  }
}
