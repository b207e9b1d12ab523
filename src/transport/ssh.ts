/**
 * SSH transport: a pool of persistent ssh2 connections by hypervisor, exec with injection-proof
 * argv quoting, streamed output, unix-socket and TCP forwarding, host-key pinning.
 */
export { SshConnection, largeChunks, type ExecOptions, type ExecResult, type RemoteProcess, type SshConnectOptions, type SshTarget } from './ssh/connection.js';
export { SshPool, sshTarget, type SshPoolOptions } from './ssh/pool.js';
export {
  fingerprintPolicy,
  knownHostsPolicy,
  parseKnownHosts,
  hostMatches,
  knownHostsName,
  sha256Fingerprint,
  keyBlobType,
  type HostKeyPolicy,
  type HostKeyVerdict,
} from './ssh/host-keys.js';
export { shellQuote, shellJoin } from './quote.js';
