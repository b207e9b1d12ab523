/** Neutron v2.0: ports, networks and security groups (with rules), typed. */
import type { Session } from './auth.js';
import type { RawDocument, Reader } from './json.js';
import { ServiceClient } from './service.js';

export interface Port {
  id: string;
  name: string | undefined;
  networkId: string;
  macAddress: string | undefined;
  fixedIps: { subnetId: string | undefined; ipAddress: string }[];
  securityGroupIds: string[];
  deviceId: string | undefined;
  deviceOwner: string | undefined;
  status: string | undefined;
  raw: RawDocument;
}

export interface SecurityGroupRule {
  id: string;
  direction: string;
  etherType: string | undefined;
  protocol: string | undefined;
  portRangeMin: number | undefined;
  portRangeMax: number | undefined;
  remoteIpPrefix: string | undefined;
  remoteGroupId: string | undefined;
}

export interface SecurityGroup {
  id: string;
  name: string;
  projectId: string | undefined;
  rules: SecurityGroupRule[];
  raw: RawDocument;
}

export interface Network {
  id: string;
  name: string;
  projectId: string | undefined;
  shared: boolean;
  external: boolean;
  status: string | undefined;
  raw: RawDocument;
}

export function parsePort(r: Reader): Port {
  return {
    id: r.str('id'),
    name: r.optStr('name'),
    networkId: r.str('network_id'),
    macAddress: r.optStr('mac_address'),
    fixedIps: r.optList('fixed_ips').map((f) => ({ subnetId: f.optStr('subnet_id'), ipAddress: f.str('ip_address') })),
    securityGroupIds: r.strList('security_groups'),
    deviceId: r.optStr('device_id'),
    deviceOwner: r.optStr('device_owner'),
    status: r.optStr('status'),
    raw: r.raw(),
  };
}

export function parseSecurityGroup(r: Reader): SecurityGroup {
  return {
    id: r.str('id'),
    name: r.str('name'),
    projectId: r.optStr('project_id') ?? r.optStr('tenant_id'),
    rules: r.optList('security_group_rules').map((x) => ({
      id: x.str('id'),
      direction: x.str('direction'),
      etherType: x.optStr('ethertype'),
      protocol: x.optStr('protocol'),
      portRangeMin: x.optNum('port_range_min'),
      portRangeMax: x.optNum('port_range_max'),
      remoteIpPrefix: x.optStr('remote_ip_prefix'),
      remoteGroupId: x.optStr('remote_group_id'),
    })),
    raw: r.raw(),
  };
}

export function parseNetwork(r: Reader): Network {
  return {
    id: r.str('id'),
    name: r.optStr('name') ?? '',
    projectId: r.optStr('project_id') ?? r.optStr('tenant_id'),
    shared: r.bool('shared', false),
    external: r.bool('router:external', false),
    status: r.optStr('status'),
    raw: r.raw(),
  };
}

export class NeutronClient {
  readonly api: ServiceClient;

  constructor(session: Session) {
    this.api = new ServiceClient(session, 'network');
  }

  listPorts(filter: { deviceId?: string; networkId?: string; projectId?: string } = {}): Promise<Port[]> {
    return this.api.all('/ports', { itemsKey: 'ports', parse: parsePort, query: { device_id: filter.deviceId, network_id: filter.networkId, project_id: filter.projectId } });
  }

  getSecurityGroup(id: string): Promise<SecurityGroup> {
    return this.api.get(`/security-groups/${encodeURIComponent(id)}`, (d) => parseSecurityGroup(d.get('security_group')));
  }

  listSecurityGroups(filter: { projectId?: string; name?: string } = {}): Promise<SecurityGroup[]> {
    return this.api.all('/security-groups', { itemsKey: 'security_groups', parse: parseSecurityGroup, query: { project_id: filter.projectId, name: filter.name } });
  }

  listNetworks(filter: { name?: string; id?: string } = {}): Promise<Network[]> {
    return this.api.all('/networks', { itemsKey: 'networks', parse: parseNetwork, query: { name: filter.name, id: filter.id } });
  }

  createPort(spec: { networkId: string; fixedIps?: { ipAddress: string; subnetId?: string }[]; securityGroupIds?: string[]; macAddress?: string; name?: string }): Promise<Port> {
    const port: Record<string, unknown> = { network_id: spec.networkId };
    if (spec.name) port['name'] = spec.name;
    if (spec.fixedIps) port['fixed_ips'] = spec.fixedIps.map((f) => ({ ip_address: f.ipAddress, subnet_id: f.subnetId }));
    if (spec.securityGroupIds) port['security_groups'] = spec.securityGroupIds;
    if (spec.macAddress) port['mac_address'] = spec.macAddress;
    return this.api.json('POST', '/ports', { json: { port } }, (d) => parsePort(d.get('port')));
  }

  async deletePort(id: string): Promise<void> {
    await this.api.send('DELETE', `/ports/${encodeURIComponent(id)}`);
  }
}
