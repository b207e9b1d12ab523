/**
 * The strategy table (DESIGN.md §5). Each entry loads its module only when used, so that
 * `--help`, inventory validation and repository commands load no SSH, NBD or Ceph code.
 */
import { InternalError } from '../src/errors.js';
import type { StrategyName } from '../src/inventory/types.js';
import type { Strategy } from '../src/strategy/contract.js';

export const strategies: Partial<Record<StrategyName, () => Promise<Strategy>>> = {
  'ceph-rbd': () => import('./ceph-rbd/index.js').then((m) => m.default),
  'libvirt-ssh': () => import('./libvirt-ssh/index.js').then((m) => m.default),
};

export async function loadStrategy(name: StrategyName): Promise<Strategy> {
  const load = strategies[name];
  if (!load) throw new InternalError(`strategy ${name} is not available in this build`);
  return load();
}
