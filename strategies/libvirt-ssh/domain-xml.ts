/**
 * What vprotect needs to know of a libvirt domain, read from `virsh dumpxml`: its identity,
 * its disks (file qcow2/raw, block devices, RBD network disks, CD-ROMs) with their backing
 * chains, and whether it has a guest-agent channel. Also the rewrite of a saved domain XML for
 * a restore under a new name: new UUID, new disk paths, no per-instance leftovers.
 */
import { randomUUID } from 'node:crypto';
import { attr, child, children, parseXml, path, removeAttr, removeChildren, serializeXml, setAttr, setText, textOf, walk, XmlError, type XmlElement } from './xml.js';

export interface BackingFile {
  type: string;
  path?: string;
  format?: string;
}

export interface DomainDisk {
  /** libvirt target dev (vda, sdb): the disk's key in the repository. */
  target: string;
  /** disk | cdrom | floppy | lun */
  device: string;
  /** file | block | network | volume | dir */
  type: string;
  /** Driver format: qcow2, raw, … (undefined when libvirt probes it, which it should not). */
  format: string | undefined;
  /** type=file: the file; type=block: the device. */
  path?: string;
  /** type=network protocol=rbd: pool/image, monitors, cephx user. */
  rbd?: { pool: string; image: string; snapshot?: string; hosts: { name: string; port?: string }[]; user?: string; secretUuid?: string };
  /** Other network protocols (iscsi, nbd, gluster …), by name. */
  protocol?: string;
  readonly: boolean;
  shareable: boolean;
  /** The backing chain below the source, top first (Nova's _base file, kept overlays). */
  backing: BackingFile[];
}

export interface DomainInfo {
  name: string;
  uuid: string;
  /** libvirt's id attribute: present while the domain runs. */
  running: boolean;
  disks: DomainDisk[];
  /** A virtio channel named org.qemu.guest_agent.0 (the agent itself may still be absent). */
  guestAgentChannel: boolean;
}

export function parseDomainXml(xml: string): DomainInfo {
  const root = parseXml(xml, 'domain XML');
  if (root.name !== 'domain') throw new XmlError(`domain XML: the root element is <${root.name}>, not <domain>`);
  const name = textOf(child(root, 'name'))?.trim();
  const uuid = textOf(child(root, 'uuid'))?.trim();
  if (!name || !uuid) throw new XmlError('domain XML: no <name> or <uuid>');
  const id = attr(root, 'id');
  return {
    name,
    uuid,
    running: id !== undefined && id !== '-1',
    disks: path(root, 'devices', 'disk').map(parseDisk),
    guestAgentChannel: path(root, 'devices', 'channel').some((c) => attr(child(c, 'target'), 'name') === 'org.qemu.guest_agent.0'),
  };
}

function parseDisk(d: XmlElement): DomainDisk {
  const type = attr(d, 'type') ?? 'file';
  const device = attr(d, 'device') ?? 'disk';
  const target = attr(child(d, 'target'), 'dev');
  if (!target) throw new XmlError('domain XML: a <disk> without <target dev=…>');
  const source = child(d, 'source');
  const disk: DomainDisk = {
    target,
    device,
    type,
    format: attr(child(d, 'driver'), 'type'),
    readonly: child(d, 'readonly') !== undefined,
    shareable: child(d, 'shareable') !== undefined,
    backing: backingChain(d),
  };
  if (type === 'file') {
    const p = attr(source, 'file');
    if (p) disk.path = p;
  } else if (type === 'block') {
    const p = attr(source, 'dev');
    if (p) disk.path = p;
  } else if (type === 'network') {
    const protocol = attr(source, 'protocol') ?? 'unknown';
    disk.protocol = protocol;
    const nameAttr = attr(source, 'name');
    if (protocol === 'rbd' && nameAttr) {
      const [poolImage, snapshot] = nameAttr.split('@') as [string, string | undefined];
      const slash = poolImage.indexOf('/');
      const auth = child(d, 'auth');
      disk.rbd = {
        pool: slash < 0 ? 'rbd' : poolImage.slice(0, slash),
        image: slash < 0 ? poolImage : poolImage.slice(slash + 1),
        ...(snapshot ? { snapshot } : {}),
        hosts: children(source, 'host').map((h) => ({ name: attr(h, 'name') ?? '', ...(attr(h, 'port') ? { port: attr(h, 'port')! } : {}) })),
        ...(attr(auth, 'username') ? { user: attr(auth, 'username')! } : {}),
        ...(attr(child(auth, 'secret'), 'uuid') ? { secretUuid: attr(child(auth, 'secret'), 'uuid')! } : {}),
      };
    }
  }
  return disk;
}

function backingChain(d: XmlElement): BackingFile[] {
  const out: BackingFile[] = [];
  let b = child(d, 'backingStore');
  while (b && attr(b, 'type')) {
    const src = child(b, 'source');
    out.push({
      type: attr(b, 'type')!,
      ...(attr(src, 'file') ?? attr(src, 'dev') ? { path: (attr(src, 'file') ?? attr(src, 'dev'))! } : {}),
      ...(attr(child(b, 'format'), 'type') ? { format: attr(child(b, 'format'), 'type')! } : {}),
    });
    b = child(b, 'backingStore');
  }
  return out;
}

export interface RestoreRewrite {
  name: string;
  /** Default: a fresh random UUID. */
  uuid?: string;
  /** target dev → new source file and its format. Disks not listed are removed (excluded or not restored). */
  disks: Record<string, { path: string; format: 'qcow2' | 'raw' }>;
  /** Directory for per-domain files that are not disks (serial/console logs, nvram copies). */
  fileDir: string;
}

/**
 * A saved domain XML made definable as a new domain beside the original: new name and UUID,
 * disks pointing at the restored files (type file, no backing chain), and every other
 * per-domain path renamed — serial/console log files especially, or qemu fails with "Cannot
 * open log file … Device or resource busy" while the original runs. Runtime-only state
 * (id, aliases, seclabels, MAC addresses, graphics ports) is dropped so libvirt picks new ones.
 */
export function rewriteDomainForRestore(xml: string, r: RestoreRewrite): string {
  const root = parseXml(xml, 'saved domain XML');
  if (root.name !== 'domain') throw new XmlError('saved domain XML: not a <domain>');
  const oldName = textOf(child(root, 'name'))?.trim() ?? '';
  removeAttr(root, 'id');
  setText(child(root, 'name')!, r.name);
  const uuidEl = child(root, 'uuid');
  if (uuidEl) setText(uuidEl, r.uuid ?? randomUUID());
  // Nova's metadata names the instance it belongs to: a restored copy is not that instance.
  removeChildren(root, (c) => c.name === 'metadata' || c.name === 'seclabel');
  const devices = child(root, 'devices');
  if (devices) {
    removeChildren(devices, (d) => d.name === 'disk' && d.attrs.some(([k, v]) => k === 'device' && (v === 'disk' || v === 'lun')) && !r.disks[attr(child(d, 'target'), 'dev') ?? '']);
    for (const d of children(devices, 'disk')) {
      const dev = attr(child(d, 'target'), 'dev') ?? '';
      const to = r.disks[dev];
      if (!to) continue;
      setAttr(d, 'type', 'file');
      removeChildren(d, (c) => c.name === 'source' || c.name === 'backingStore' || c.name === 'auth' || c.name === 'mirror');
      const driver = child(d, 'driver');
      if (driver) setAttr(driver, 'type', to.format);
      const at = d.children.findIndex((c) => 'name' in c && c.name === 'target');
      d.children.splice(at < 0 ? 0 : at, 0, { name: 'source', attrs: [['file', to.path]], children: [] });
    }
    for (const e of walk(devices)) {
      if (e.name === 'alias') removeAttr(e, 'name');
      if (e.name === 'mac') removeAttr(e, 'address');
      if (e.name === 'graphics') {
        for (const k of ['port', 'tlsPort', 'websocket']) removeAttr(e, k);
        setAttr(e, 'autoport', 'yes');
      }
      // Per-domain files other than disks: serial/console logs, unix channels, log files.
      if (e.name === 'source' || e.name === 'log') {
        const p = attr(e, 'path');
        if (p?.startsWith('/')) setAttr(e, 'path', renamePath(p, oldName, r.name, r.fileDir));
        const f = e.name === 'log' ? attr(e, 'file') : undefined;
        if (f?.startsWith('/')) setAttr(e, 'file', renamePath(f, oldName, r.name, r.fileDir));
      }
    }
    // Aliases without a name are invalid; drop the empty elements.
    for (const e of walk(devices)) removeChildren(e, (c) => c.name === 'alias' && c.attrs.length === 0);
    // Mac addresses without a value: let libvirt generate new ones.
    for (const e of walk(devices)) removeChildren(e, (c) => c.name === 'mac' && c.attrs.length === 0);
  }
  return serializeXml(root);
}

/** A per-domain file of `oldName` as the same kind of file of `newName`, in `dir`. */
export function renamePath(p: string, oldName: string, newName: string, dir: string): string {
  const base = p.slice(p.lastIndexOf('/') + 1);
  const renamed = oldName && base.includes(oldName) ? base.split(oldName).join(newName) : `${newName}.${base}`;
  return `${dir.replace(/\/+$/, '')}/${renamed}`;
}

/** A disk the strategy can read as a file on the hypervisor (qcow2/raw, file or block device). */
export function isFileDisk(d: DomainDisk): boolean {
  return (d.type === 'file' || d.type === 'block') && d.path !== undefined;
}
