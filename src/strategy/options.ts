/**
 * Options each strategy accepts under a policy's `strategyOptions`. Kept apart from the
 * strategies' code so that validating an inventory loads no SSH, NBD or Ceph module.
 */
export const strategyOptionSchemas = {
  'libvirt-ssh': {
    type: 'object',
    additionalProperties: false,
    properties: {
      mode: { enum: ['auto', 'checkpoint', 'snapshot'], description: 'incremental mechanism; auto = checkpoint where the disk is qcow2, else snapshot' },
      transport: { enum: ['ssh', 'netcat'], description: 'ssh = NBD through an SSH-forwarded socket; netcat = direct TCP (unencrypted, trusted networks)' },
      dataChannel: { enum: ['auto', 'stream', 'nbd'], description: 'ssh transport: auto = one-way stream (python3 helper on the hypervisor) for fulls and large incrementals, NBD when it cannot start; stream = always, and a stream that cannot start fails the disk; nbd = NBD through a forwarded socket only' },
      python: { type: 'string', pattern: '^[A-Za-z0-9_./+-]+$', description: 'interpreter of the stream helper on the hypervisor (default python3)' },
      atomic: { type: 'boolean', description: 'snapshot all disks of a VM in one atomic operation' },
      excludeDisks: { type: 'array', items: { type: 'string', minLength: 1 }, description: 'disk targets (vdb, sdc) not to back up' },
      parallelDisks: { type: 'integer', minimum: 1, maximum: 16, description: 'not built yet: disks are read one after the other (a value above 1 logs a warning)' },
      workDir: { type: 'string', pattern: '^/', description: 'directory on the hypervisor for per-run scratch files, NBD sockets and the run journal (default /var/tmp/vprotect)' },
    },
  },
  'ceph-rbd': {
    type: 'object',
    additionalProperties: false,
    properties: {
      cluster: { type: 'string', minLength: 1, description: 'name of an entry in cephClusters' },
      runOn: { enum: ['backup-node', 'hypervisor'], description: 'where the rbd commands run' },
      reader: { enum: ['export-diff', 'nbd'] },
    },
  },
  'cinder-attach': {
    type: 'object',
    additionalProperties: false,
    properties: {
      incremental: { enum: ['auto', 'ceph-diff', 'block-hash'], description: 'how changed blocks are found' },
      cephCluster: { type: 'string', minLength: 1 },
      downloadImage: { type: 'boolean', description: 'also keep the Glance image of image-booted servers' },
    },
  },
} as const;

export type StrategyOptionsName = keyof typeof strategyOptionSchemas;
