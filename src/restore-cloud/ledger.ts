/**
 * What a `restore --to-cloud` run has made in the cloud, in the order it was made, so that a
 * failed or interrupted run can remove it again (in reverse: the server before the volumes it
 * holds, the image and keypairs last) — or say exactly what is left and how to remove it.
 * An id is recorded as soon as the cloud answers the create call, before any wait, so that a
 * resource that never reaches its final state is not forgotten.
 */
import { errorMessage } from '../errors.js';
import type { Cloud } from '../openstack/cloud.js';
import { deleteImage, deleteKeypair, deleteServer, deleteVolume } from '../openstack/restore.js';
import type { WaitOptions } from '../openstack/wait.js';

export type Made =
  | { kind: 'server'; id: string; name: string }
  | { kind: 'volume'; id: string; name: string; disk: string }
  | { kind: 'image'; id: string; name: string }
  | { kind: 'keypair'; name: string; userId: string };

export interface Leftover {
  resource: Made;
  /** Why it could not be removed. */
  reason: string;
  /** The openstack CLI command that removes it. */
  command: string;
}

export interface RollbackReport {
  removed: Made[];
  left: Leftover[];
}

export function describeMade(m: Made): string {
  return m.kind === 'keypair' ? `keypair ${m.name} of user ${m.userId}` : `${m.kind} ${m.name} (${m.id})`;
}

/** The openstack CLI command that removes `m` (in `projectId` when it is not the user's own). */
export function removalCommand(m: Made, projectId: string | undefined): string {
  const project = projectId ? ` --os-project-id ${projectId}` : '';
  switch (m.kind) {
    case 'server':
      return `openstack${project} server delete --wait ${m.id}`;
    case 'volume':
      return `openstack${project} volume delete ${m.id}`;
    case 'image':
      return `openstack${project} image delete ${m.id}`;
    case 'keypair':
      return `openstack keypair delete --user ${m.userId} ${m.name}`;
  }
}

export class Ledger {
  private readonly items: Made[] = [];

  add(m: Made): void {
    this.items.push(m);
  }

  /** Forgets a resource the run removed on purpose (the Glance image after boot). */
  forget(kind: Made['kind'], id: string): void {
    const i = this.items.findIndex((m) => m.kind === kind && (m.kind === 'keypair' ? m.name : m.id) === id);
    if (i >= 0) this.items.splice(i, 1);
  }

  get made(): readonly Made[] {
    return this.items;
  }

  /**
   * Removes everything, newest first. `cloud` must not be bound to an aborted signal (after
   * Ctrl-C the caller passes a fresh session); undefined means no session could be had, and
   * everything is reported as left. A failure to remove one resource does not stop the others.
   */
  async rollback(cloud: Cloud | undefined, opts: { projectId?: string | undefined; wait?: WaitOptions; noSession?: string } = {}): Promise<RollbackReport> {
    const removed: Made[] = [];
    const left: Leftover[] = [];
    const wait: WaitOptions = { timeoutMs: 300_000, ...opts.wait };
    const volumesHeld = new Set<string>();
    for (const m of [...this.items].reverse()) {
      if (!cloud) {
        left.push({ resource: m, reason: opts.noSession ?? 'no session to the cloud', command: removalCommand(m, opts.projectId) });
        continue;
      }
      try {
        switch (m.kind) {
          case 'server':
            await deleteServer(cloud, m.id, wait);
            break;
          case 'volume':
            if (volumesHeld.size) throw new Error('the server that uses it could not be deleted');
            await deleteVolume(cloud, m.id, wait);
            break;
          case 'image':
            await deleteImage(cloud, m.id);
            break;
          case 'keypair':
            await deleteKeypair(cloud, m.name, m.userId);
            break;
        }
        removed.push(m);
      } catch (err) {
        if (m.kind === 'server') volumesHeld.add(m.id);
        left.push({ resource: m, reason: errorMessage(err), command: removalCommand(m, opts.projectId) });
      }
    }
    this.items.length = 0;
    for (const l of left) this.items.push(l.resource);
    return { removed, left };
  }
}
