/**
 * Which policy an instance falls under. Rules (documented for inventory authors):
 * - a policy applies to its `cloud`, or to every cloud when it names none;
 * - `exclude` (server ids or names) always wins; `include` (ids or names) selects regardless of
 *   the other filters, and a policy with only `include` selects only those;
 * - the other filters must all match: `projects` (names or ids, any of), `nameRegex`,
 *   `tags` (all of them, as Nova's `tags` filter), `metadata` (every key with that value),
 *   `availabilityZones` and `hosts` (Nova host or hypervisor_hostname, any of);
 * - the first matching policy in inventory order wins; later matches are reported.
 */
import type { PolicyConfig } from '../inventory/types.js';

export interface Selectable {
  id: string;
  name: string;
  projectId: string;
  projectName: string | undefined;
  tags: readonly string[];
  metadata: Readonly<Record<string, string>>;
  availabilityZone: string | undefined;
  host: string | undefined;
  hypervisorHostname: string | undefined;
}

export function policyMatches(vm: Selectable, policy: PolicyConfig, cloud: string): boolean {
  if (policy.cloud !== undefined && policy.cloud !== cloud) return false;
  const s = policy.select ?? {};
  const named = (list: readonly string[] | undefined) => list?.some((x) => x === vm.id || x === vm.name) ?? false;
  if (named(s.exclude)) return false;
  if (named(s.include)) return true;
  const onlyInclude = s.include !== undefined && Object.keys(s).every((k) => k === 'include' || k === 'exclude');
  if (onlyInclude) return false;
  if (s.projects && !s.projects.some((p) => p === vm.projectId || p === vm.projectName)) return false;
  if (s.nameRegex !== undefined && !new RegExp(s.nameRegex).test(vm.name)) return false;
  if (s.tags && !s.tags.every((t) => vm.tags.includes(t))) return false;
  if (s.metadata && !Object.entries(s.metadata).every(([k, v]) => vm.metadata[k] === v)) return false;
  if (s.availabilityZones && !(vm.availabilityZone !== undefined && s.availabilityZones.includes(vm.availabilityZone))) return false;
  if (s.hosts && !s.hosts.some((h) => h === vm.host || h === vm.hypervisorHostname)) return false;
  return true;
}

/** Every policy that selects the instance, in inventory order (the first one wins). */
export function matchingPolicies(vm: Selectable, policies: readonly PolicyConfig[], cloud: string): PolicyConfig[] {
  return policies.filter((p) => policyMatches(vm, p, cloud));
}
