/** Where each thing lives in a repository (docs/FORMAT.md §1). One place, so no path is spelled twice. */
import { join } from 'node:path';

export const REPO_FILE = 'vprotect-repo.json';
export const MANIFEST = 'manifest.json';
export const SUMS = 'SHA256SUMS';
export const MERGE_JOURNAL = 'merge.json';
export const VM_FILE = 'vm.json';
export const OWNER_FILE = 'owner.json';

export const layout = {
  repoFile: (root: string) => join(root, REPO_FILE),
  locksDir: (root: string) => join(root, 'locks'),
  lockDir: (root: string, vmId: string) => join(root, 'locks', `${vmId}.lock`),
  vmsDir: (root: string) => join(root, 'vms'),
  vmDir: (root: string, vmId: string) => join(root, 'vms', vmId),
  vmFile: (root: string, vmId: string) => join(root, 'vms', vmId, VM_FILE),
  chainsDir: (root: string, vmId: string) => join(root, 'vms', vmId, 'chains'),
  chainDir: (root: string, vmId: string, chainId: string) => join(root, 'vms', vmId, 'chains', chainId),
  mergeJournal: (root: string, vmId: string, chainId: string) => join(root, 'vms', vmId, 'chains', chainId, MERGE_JOURNAL),
  pointDir: (root: string, vmId: string, chainId: string, pointId: string) => join(root, 'vms', vmId, 'chains', chainId, pointId),
};

/** Paths of a disk's files, relative to the point directory (as the manifest records them). */
export const diskFiles = {
  raw: (key: string) => `disks/${key}.raw`,
  blockMap: (key: string) => `disks/${key}.blockmap`,
  diff: (key: string) => `disks/${key}.rbdiff`,
  index: (key: string) => `disks/${key}.rbdiff.idx`,
  metadata: (name: string) => `metadata/${name}`,
};
