/** Keystone v3 reads that sync and capture need: project and user names for ids (admin). */
import type { Session } from './auth.js';
import type { Reader } from './json.js';
import { ServiceClient } from './service.js';

export interface Project {
  id: string;
  name: string;
  domainId: string | undefined;
  enabled: boolean;
}

export interface User {
  id: string;
  name: string;
  domainId: string | undefined;
}

const parseProject = (r: Reader): Project => ({ id: r.str('id'), name: r.str('name'), domainId: r.optStr('domain_id'), enabled: r.bool('enabled', true) });
const parseUser = (r: Reader): User => ({ id: r.str('id'), name: r.str('name'), domainId: r.optStr('domain_id') });

export class IdentityClient {
  readonly api: ServiceClient;

  constructor(session: Session) {
    this.api = new ServiceClient(session, 'identity');
  }

  listProjects(filter: { name?: string; domainId?: string } = {}): Promise<Project[]> {
    return this.api.all('/projects', { itemsKey: 'projects', parse: parseProject, query: { name: filter.name, domain_id: filter.domainId } });
  }

  getProject(id: string): Promise<Project> {
    return this.api.get(`/projects/${encodeURIComponent(id)}`, (d) => parseProject(d.get('project')));
  }

  getUser(id: string): Promise<User> {
    return this.api.get(`/users/${encodeURIComponent(id)}`, (d) => parseUser(d.get('user')));
  }
}
