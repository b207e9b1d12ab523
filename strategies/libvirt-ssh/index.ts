/**
 * The libvirt-ssh strategy (DESIGN.md §5): agentless backup of a KVM domain over SSH —
 * checkpoints + pull backup jobs for qcow2, kept overlays for raw, NBD over the SSH connection
 * or a direct TCP channel. See README.md for prerequisites and what stays on the hypervisor.
 */
import type { Strategy } from '../../src/strategy/contract.js';
import { findLeftovers } from './leftovers.js';
import { openSession } from './session.js';

const strategy: Strategy = {
  name: 'libvirt-ssh',
  // Disks come from the domain XML, not from the cloud's view.
  discoversDisks: true,
  open: openSession,
  leftovers: findLeftovers,
};

export default strategy;
export { openSession, LibvirtSshSession } from './session.js';
export { parseDomainXml, rewriteDomainForRestore, type DomainInfo, type DomainDisk } from './domain-xml.js';
