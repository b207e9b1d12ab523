import { InternalError } from '../errors.js';
import type { ChainInfo, Repository } from './repository.js';
export async function finishMerge(_repo: Repository, chain: ChainInfo, _opts: object): Promise<void> {
  throw new InternalError(`merge of ${chain.chainId} not implemented yet`);
}
