/**
 * Picking a service's URL out of the Keystone catalog: by service type (with the aliases the
 * service-types authority defines), interface and region, with endpoint overrides first.
 * Versions are normalised so that clients can append API paths directly: image → .../v2,
 * network → .../v2.0, compute and volume as the catalog gives them (.../v2.1, .../v3/<project>).
 */
import { ConfigError } from '../errors.js';
import type { EndpointInterface } from './settings.js';

export interface CatalogEndpoint {
  interface: string;
  region: string | undefined;
  url: string;
}

export interface CatalogService {
  type: string;
  name: string;
  endpoints: CatalogEndpoint[];
}

export type ServiceKind = 'compute' | 'image' | 'volume' | 'network' | 'identity' | 'placement';

/** Catalog types per service, preferred first (service-types-authority). */
export const SERVICE_TYPES: Record<ServiceKind, readonly string[]> = {
  compute: ['compute'],
  image: ['image'],
  volume: ['block-storage', 'volumev3', 'volume'],
  network: ['network'],
  identity: ['identity'],
  placement: ['placement'],
};

export interface EndpointChoice {
  interface: EndpointInterface;
  region?: string | undefined;
  overrides: Record<string, string>;
  projectId?: string | undefined;
}

export function resolveEndpoint(catalog: readonly CatalogService[], kind: ServiceKind, choice: EndpointChoice): string {
  const types = SERVICE_TYPES[kind];
  const override = types.map((t) => choice.overrides[t] ?? choice.overrides[t.replace(/-/g, '_')]).find(Boolean) ?? (kind === 'volume' ? choice.overrides['volume'] : undefined);
  if (override) return normalise(kind, substitute(override, choice.projectId));

  const services = types.flatMap((t) => catalog.filter((s) => s.type === t));
  if (!services.length) {
    const have = [...new Set(catalog.map((s) => s.type))].sort().join(', ');
    throw new ConfigError(`the service catalog has no ${kind} service (types ${types.join(', ')})`, [], {
      hint: `the catalog offers: ${have || 'nothing'}; add endpointOverrides.${types[0]} with its URL`,
    });
  }
  const all = services.flatMap((s) => s.endpoints);
  const candidates = all.filter((e) => e.interface === choice.interface && (!choice.region || e.region === choice.region));
  if (!candidates.length) {
    const offered = all.map((e) => `${e.interface}@${e.region ?? '(no region)'}`);
    throw new ConfigError(`the service catalog has no ${choice.interface} ${kind} endpoint${choice.region ? ` in region ${choice.region}` : ''}`, [], {
      hint: `it offers ${[...new Set(offered)].join(', ')}; set interface/region accordingly, or endpointOverrides.${types[0]}`,
    });
  }
  const regions = [...new Set(candidates.map((e) => e.region ?? ''))];
  if (regions.length > 1) {
    throw new ConfigError(`the service catalog has ${kind} endpoints in several regions (${regions.join(', ')})`, [], { hint: 'choose one with region (clouds.yaml region_name, OS_REGION_NAME)' });
  }
  // Several services of one kind (block-storage and volumev3 both pointing at Cinder v3) are
  // fine: the first type in preference order wins.
  return normalise(kind, substitute(candidates[0]!.url, choice.projectId));
}

function substitute(url: string, projectId: string | undefined): string {
  if (!projectId) return url;
  return url.replace(/%\((project_id|tenant_id)\)s|\$\((project_id|tenant_id)\)s/g, projectId);
}

function normalise(kind: ServiceKind, url: string): string {
  const u = url.replace(/\/+$/, '');
  if (kind === 'image' && !/\/v2(\.\d+)?$/.test(u)) return `${u}/v2`;
  if (kind === 'network' && !/\/v2\.0$/.test(u)) return `${u}/v2.0`;
  return u;
}
