/** The inventory after loading: paths are absolute, secrets are still references (see secrets.ts). */

export type Secret = string | { env: string } | { file: string };
export type PathOrInline = { path: string } | { inline: string };

export interface CloudConfig {
  cloud?: string;
  authUrl?: string;
  username?: string;
  userDomain?: string;
  password?: Secret;
  project?: string;
  projectDomain?: string;
  applicationCredential?: { id: string; secret: Secret };
  region?: string;
  interface?: 'public' | 'internal' | 'admin';
  caBundle?: string;
  insecure?: boolean;
  downloadImageFromGlance?: boolean;
  endpointOverrides?: Record<string, string>;
}

export interface HypervisorConfig {
  name: string;
  address: string;
  port?: number;
  user?: string;
  keyFile?: string;
  keyPassphrase?: Secret;
  password?: Secret;
  hostKey?: { fingerprint: string } | { knownHostsFile: string };
  vmUser?: string;
  libvirtUri?: string;
  maxConcurrentJobs?: number;
  netcat?: { ports: string; address?: string };
}

export interface CephClusterConfig {
  monitors?: string[];
  conf?: PathOrInline;
  keyring?: PathOrInline;
  user: string;
  pools?: string[];
  usedBy?: { cloud: string; availabilityZone?: string }[];
}

export type DestinationConfig =
  | { type: 'local'; path: string }
  | { type: 'nfs'; server: string; export: string; mountPoint: string; mountOptions?: string; allowMount?: boolean };

export interface HookConfig {
  run: string | string[];
  where?: 'hypervisor' | 'guest' | 'local';
  timeoutSeconds?: number;
  onFailure?: 'abort' | 'continue';
}

export type StrategyName = 'libvirt-ssh' | 'ceph-rbd' | 'cinder-attach';
export type BackupLevel = 'full' | 'incremental' | 'auto';

export interface RetentionConfig {
  keepLast?: number;
  keepHourly?: number;
  keepDaily?: number;
  keepWeekly?: number;
  keepMonthly?: number;
  keepYearly?: number;
  newChainAfter?: { incrementals?: number; days?: number };
}

export interface PolicyConfig {
  name: string;
  cloud?: string;
  select?: {
    projects?: string[];
    nameRegex?: string;
    tags?: string[];
    metadata?: Record<string, string>;
    availabilityZones?: string[];
    hosts?: string[];
    include?: string[];
    exclude?: string[];
  };
  strategy: StrategyName;
  strategyOptions?: Record<string, unknown>;
  destination: string;
  schedules?: { name?: string; level: BackupLevel; when: string }[];
  retention?: RetentionConfig;
  hooks?: { preSnapshot?: HookConfig[]; postSnapshot?: HookConfig[] };
  quiesce?: 'off' | 'try' | 'require';
}

export interface ProxyConfig {
  cloud?: string;
  availabilityZone?: string;
  serverId: string;
}

export interface Inventory {
  /** Absolute path of the file it was loaded from. */
  file: string;
  version: 1;
  clouds: Record<string, CloudConfig>;
  hypervisors: HypervisorConfig[];
  cephClusters: Record<string, CephClusterConfig>;
  destinations: Record<string, DestinationConfig>;
  proxies: ProxyConfig[];
  policies: PolicyConfig[];
}
