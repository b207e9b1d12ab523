/**
 * JSON Schema of the inventory (draft 2020-12 subset that ajv checks). Annotations that the
 * validator and `inventory show` read:
 * - `x-secret: true` marks a value that must never be printed (redacted in `show`, never quoted
 *   in errors);
 * - `x-expected` is the human wording used when a `oneOf`/`anyOf` alternative fails, instead of
 *   ajv's list of every branch that did not match.
 * Strategy options are validated by each strategy's own schema (src/strategy/options.ts).
 */

const name = { type: 'string', pattern: '^[A-Za-z0-9][A-Za-z0-9._-]*$', 'x-expected': 'a name of letters, digits, ".", "_" or "-"' };
const nonEmpty = { type: 'string', minLength: 1 };
const port = { type: 'integer', minimum: 1, maximum: 65535 };
const count = { type: 'integer', minimum: 0 };
const filePath = { type: 'string', minLength: 1 };

/** A secret: inline (discouraged), from an environment variable, or from a file (first line). */
const secret = {
  'x-secret': true,
  'x-expected': 'a string, {env: VARIABLE} or {file: PATH}',
  anyOf: [
    { type: 'string', minLength: 1 },
    { type: 'object', required: ['env'], additionalProperties: false, properties: { env: { type: 'string', pattern: '^[A-Za-z_][A-Za-z0-9_]*$' } } },
    { type: 'object', required: ['file'], additionalProperties: false, properties: { file: filePath } },
  ],
};

/** A file that may also be given inline (ceph.conf, keyring). */
const pathOrInline = (secretInline: boolean) => ({
  type: 'object',
  'x-expected': '{path: FILE} or {inline: TEXT}',
  additionalProperties: false,
  minProperties: 1,
  maxProperties: 1,
  properties: {
    path: filePath,
    inline: secretInline ? { type: 'string', minLength: 1, 'x-secret': true } : { type: 'string', minLength: 1 },
  },
});

const cloud = {
  type: 'object',
  additionalProperties: false,
  properties: {
    cloud: { ...nonEmpty, description: 'take settings from this entry of clouds.yaml (values given here override it)' },
    authUrl: { type: 'string', pattern: '^https?://', 'x-expected': 'an http:// or https:// URL of Keystone v3' },
    username: { ...nonEmpty, description: 'user name, or "domain\\\\user"' },
    userDomain: nonEmpty,
    password: secret,
    project: nonEmpty,
    projectDomain: nonEmpty,
    applicationCredential: {
      type: 'object',
      additionalProperties: false,
      required: ['id', 'secret'],
      properties: { id: nonEmpty, secret },
    },
    region: nonEmpty,
    interface: { enum: ['public', 'internal', 'admin'] },
    caBundle: filePath,
    insecure: { type: 'boolean' },
    downloadImageFromGlance: { type: 'boolean' },
    endpointOverrides: {
      type: 'object',
      additionalProperties: { type: 'string', pattern: '^https?://' },
      propertyNames: { enum: ['identity', 'compute', 'image', 'volumev3', 'block-storage', 'network', 'placement'] },
    },
  },
};

const hypervisor = {
  type: 'object',
  additionalProperties: false,
  required: ['name', 'address'],
  properties: {
    name: { ...nonEmpty, description: "the name Nova reports as hypervisor_hostname" },
    address: nonEmpty,
    port: port,
    user: nonEmpty,
    keyFile: filePath,
    keyPassphrase: secret,
    password: secret,
    hostKey: {
      type: 'object',
      'x-expected': '{fingerprint: "SHA256:..."} or {knownHostsFile: PATH}',
      additionalProperties: false,
      minProperties: 1,
      maxProperties: 1,
      properties: {
        fingerprint: { type: 'string', pattern: '^SHA256:[A-Za-z0-9+/]{43}=?$', 'x-expected': 'an OpenSSH SHA256 fingerprint such as "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s"' },
        knownHostsFile: filePath,
      },
    },
    vmUser: nonEmpty,
    libvirtUri: nonEmpty,
    maxConcurrentJobs: { type: 'integer', minimum: 1 },
    netcat: {
      type: 'object',
      additionalProperties: false,
      required: ['ports'],
      properties: {
        ports: { type: 'string', pattern: '^[0-9]+-[0-9]+$', 'x-expected': 'a port range such as "10809-10839"' },
        address: nonEmpty,
      },
    },
  },
};

const cephCluster = {
  type: 'object',
  additionalProperties: false,
  required: ['user'],
  properties: {
    monitors: { type: 'array', minItems: 1, items: nonEmpty },
    conf: pathOrInline(false),
    keyring: pathOrInline(true),
    user: { ...nonEmpty, description: 'cephx client name without "client.", e.g. "volumes"' },
    pools: { type: 'array', items: nonEmpty },
    usedBy: {
      type: 'array',
      items: {
        type: 'object',
        additionalProperties: false,
        required: ['cloud'],
        properties: { cloud: name, availabilityZone: nonEmpty },
      },
    },
  },
};

const destination = {
  type: 'object',
  required: ['type'],
  properties: { type: { enum: ['local', 'nfs'] } },
  // The discriminator makes ajv check only the branch that `type` names, so its errors are precise.
  discriminator: { propertyName: 'type' },
  oneOf: [
    {
      additionalProperties: false,
      required: ['type', 'path'],
      properties: { type: { const: 'local' }, path: filePath },
    },
    {
      additionalProperties: false,
      required: ['type', 'server', 'export', 'mountPoint'],
      properties: {
        type: { const: 'nfs' },
        server: nonEmpty,
        export: { type: 'string', pattern: '^/' },
        mountPoint: filePath,
        mountOptions: nonEmpty,
        allowMount: { type: 'boolean', description: 'vprotect may mount the export itself when it is not mounted' },
      },
    },
  ],
};

const hook = {
  type: 'object',
  additionalProperties: false,
  required: ['run'],
  properties: {
    run: { anyOf: [nonEmpty, { type: 'array', minItems: 1, items: { type: 'string' } }], 'x-expected': 'a command string or an argv list' },
    where: { enum: ['hypervisor', 'guest', 'local'] },
    timeoutSeconds: { type: 'integer', minimum: 1 },
    onFailure: { enum: ['abort', 'continue'] },
  },
};

const policy = {
  type: 'object',
  additionalProperties: false,
  required: ['name', 'strategy', 'destination'],
  properties: {
    name: name,
    cloud: name,
    select: {
      type: 'object',
      additionalProperties: false,
      properties: {
        projects: { type: 'array', items: nonEmpty },
        nameRegex: nonEmpty,
        tags: { type: 'array', items: nonEmpty },
        metadata: { type: 'object', additionalProperties: { type: 'string' } },
        availabilityZones: { type: 'array', items: nonEmpty },
        hosts: { type: 'array', items: nonEmpty },
        include: { type: 'array', items: nonEmpty },
        exclude: { type: 'array', items: nonEmpty },
      },
    },
    strategy: { enum: ['libvirt-ssh', 'ceph-rbd', 'cinder-attach'] },
    strategyOptions: { type: 'object' },
    destination: name,
    schedules: {
      type: 'array',
      items: {
        type: 'object',
        additionalProperties: false,
        required: ['level', 'when'],
        properties: {
          name: name,
          level: { enum: ['full', 'incremental', 'auto'] },
          when: { ...nonEmpty, description: 'a 5-field cron expression, as cron and systemd timers run vprotect' },
        },
      },
    },
    retention: {
      type: 'object',
      additionalProperties: false,
      properties: {
        keepLast: count,
        keepHourly: count,
        keepDaily: count,
        keepWeekly: count,
        keepMonthly: count,
        keepYearly: count,
        newChainAfter: {
          type: 'object',
          additionalProperties: false,
          properties: { incrementals: { type: 'integer', minimum: 1 }, days: { type: 'integer', minimum: 1 } },
        },
      },
    },
    hooks: {
      type: 'object',
      additionalProperties: false,
      properties: { preSnapshot: { type: 'array', items: hook }, postSnapshot: { type: 'array', items: hook } },
    },
    quiesce: { enum: ['off', 'try', 'require'] },
  },
};

const proxy = {
  type: 'object',
  additionalProperties: false,
  required: ['serverId'],
  properties: {
    cloud: name,
    availabilityZone: nonEmpty,
    serverId: { type: 'string', pattern: '^[0-9a-fA-F-]{32,36}$', 'x-expected': 'a Nova server UUID' },
  },
};

export const inventorySchema = {
  $id: 'https://vprotect.dev/schema/inventory-v1.json',
  type: 'object',
  additionalProperties: false,
  required: ['version'],
  properties: {
    version: { const: 1, 'x-expected': '1 (the inventory format version)' },
    clouds: { type: 'object', propertyNames: name, additionalProperties: cloud },
    hypervisors: { type: 'array', items: hypervisor },
    cephClusters: { type: 'object', propertyNames: name, additionalProperties: cephCluster },
    destinations: { type: 'object', propertyNames: name, additionalProperties: destination },
    proxies: { type: 'array', items: proxy },
    policies: { type: 'array', items: policy },
  },
} as const;

export type SchemaNode = Record<string, unknown>;
