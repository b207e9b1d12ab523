/**
 * One connected cloud: the session and its service clients. Nova and Cinder are connected on
 * first use (each negotiates its microversion with one GET), so a command that needs only
 * some services works on a cloud that lacks the others.
 */
import type { Logger } from '../log.js';
import { Session, type SessionOptions } from './auth.js';
import { CinderClient } from './cinder.js';
import { GlanceClient, type Image } from './glance.js';
import { IdentityClient } from './identity.js';
import { NeutronClient } from './neutron.js';
import { NovaClient, type Server } from './nova.js';
import type { ConnectionSettings } from './settings.js';
import { waitForDeletion, waitForStatus, type WaitOptions } from './wait.js';
import type { Snapshot, Volume } from './cinder.js';

export class Cloud {
  readonly session: Session;
  readonly glance: GlanceClient;
  readonly neutron: NeutronClient;
  readonly identity: IdentityClient;
  private novaClient: Promise<NovaClient> | undefined;
  private cinderClient: Promise<CinderClient> | undefined;

  constructor(session: Session) {
    this.session = session;
    this.glance = new GlanceClient(session);
    this.neutron = new NeutronClient(session);
    this.identity = new IdentityClient(session);
  }

  /** Authenticates (AuthError 77 / UnavailableError 69 when that fails). */
  static async connect(settings: ConnectionSettings, opts: SessionOptions): Promise<Cloud> {
    return new Cloud(await Session.open(settings, opts));
  }

  get name(): string {
    return this.session.settings.name;
  }

  get log(): Logger {
    return this.session.log;
  }

  nova(): Promise<NovaClient> {
    this.novaClient ??= NovaClient.connect(this.session);
    return this.novaClient;
  }

  cinder(): Promise<CinderClient> {
    this.cinderClient ??= CinderClient.connect(this.session);
    return this.cinderClient;
  }

  /** The same credentials scoped to another project (restores into that project). */
  async forProject(projectId: string): Promise<Cloud> {
    const s = await this.session.forProject(projectId);
    return s === this.session ? this : new Cloud(s);
  }

  close(): void {
    this.session.close();
  }

  // Waiters for the states the strategies and restore wait on.

  async waitForVolume(id: string, until: string | string[], opts: WaitOptions = {}): Promise<Volume> {
    const cinder = await this.cinder();
    return waitForStatus({ log: this.log, ...opts, what: `volume ${id}`, poll: () => cinder.getVolume(id), status: (v) => v.status, until: [until].flat() });
  }

  async waitForSnapshot(id: string, until: string | string[] = 'available', opts: WaitOptions = {}): Promise<Snapshot> {
    const cinder = await this.cinder();
    return waitForStatus({ log: this.log, ...opts, what: `snapshot ${id}`, poll: () => cinder.getSnapshot(id), status: (s) => s.status, until: [until].flat() });
  }

  async waitForAttachment(id: string, until: string | string[] = 'attached', opts: WaitOptions = {}): Promise<void> {
    const cinder = await this.cinder();
    await waitForStatus({ log: this.log, ...opts, what: `volume attachment ${id}`, poll: () => cinder.getAttachment(id), status: (a) => a.status, until: [until].flat() });
  }

  async waitForServer(id: string, until: string | string[] = 'ACTIVE', opts: WaitOptions = {}): Promise<Server> {
    const nova = await this.nova();
    return waitForStatus({
      log: this.log,
      ...opts,
      what: `server ${id}`,
      poll: () => nova.getServer(id),
      // A server is only done when its task is done too (ACTIVE with task_state "deleting" is not).
      status: (s) => (s.taskState && s.status !== 'ERROR' ? `${s.status}/${s.taskState}` : s.status),
      until: [until].flat(),
      fault: (s) => s.fault,
    });
  }

  async waitForImage(id: string, until: string | string[] = 'active', opts: WaitOptions = {}): Promise<Image> {
    return waitForStatus({ log: this.log, timeoutMs: 1_800_000, ...opts, what: `image ${id}`, poll: () => this.glance.getImage(id), status: (i) => i.status, until: [until].flat() });
  }

  async waitForVolumeDeleted(id: string, opts: WaitOptions = {}): Promise<void> {
    const cinder = await this.cinder();
    await waitForDeletion({ log: this.log, ...opts, what: `volume ${id}`, poll: () => cinder.getVolume(id), status: (v) => v.status });
  }

  async waitForSnapshotDeleted(id: string, opts: WaitOptions = {}): Promise<void> {
    const cinder = await this.cinder();
    // A snapshot with volumes cloned from it (RBD, rbd_flatten_volume_from_snapshot=false)
    // accepts the DELETE, goes "deleting", then back to "available" (lab-notes §7): fail then.
    let deleting = false;
    await waitForDeletion({
      log: this.log,
      ...opts,
      what: `snapshot ${id}`,
      poll: () => cinder.getSnapshot(id),
      status: (s) => s.status,
      failOn: (s) => {
        if (s === 'deleting') deleting = true;
        return /error/i.test(s) || (deleting && s === 'available');
      },
      fault: (s) => (s.status === 'available' ? 'Cinder refused to delete it, most likely because volumes were created from it (delete those first)' : undefined),
    });
  }

  async waitForServerDeleted(id: string, opts: WaitOptions = {}): Promise<void> {
    const nova = await this.nova();
    await waitForDeletion({ log: this.log, ...opts, what: `server ${id}`, poll: () => nova.getServer(id), status: (s) => s.status, fault: (s) => s.fault });
  }
}
