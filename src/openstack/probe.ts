/**
 * What sync needs from the hypervisors themselves, behind a seam so that src/openstack does
 * not depend on the SSH transport: whether a hypervisor answers (TCP connect plus the SSH
 * banner), and — when a command runner is given (the CLI wires it to the ssh2 pool,
 * src/transport/ssh) — the disks of a libvirt domain as libvirt sees them, which is the only
 * exact source for where a Nova ephemeral disk lives (qcow2 file under instances_path, or RBD
 * `vms/<uuid>_disk` with images_type=rbd): the API does not say.
 */
import net from 'node:net';
import type { HypervisorConfig } from '../inventory/types.js';

export interface Reachability {
  reachable: boolean;
  /** "ssh" when a command ran, "tcp" when only the port and banner were checked. */
  method: 'ssh' | 'tcp';
  detail: string;
}

export interface DomainDisk {
  /** Guest target: vda, sdb. */
  target: string;
  device: string;
  type: string;
  /** File path, block device, or "pool/image" for RBD. */
  source: string | undefined;
  protocol: string | undefined;
  /** qcow2, raw (the driver type). */
  format: string | undefined;
  /** The Cinder volume id for volumes (libvirt <serial>). */
  serial: string | undefined;
}

export interface HypervisorProbe {
  check(hv: HypervisorConfig): Promise<Reachability>;
  /** Undefined when this probe cannot look inside the hypervisor. */
  domainDisks(hv: HypervisorConfig, domain: string): Promise<DomainDisk[] | undefined>;
}

/** Connects to address:port and reads the server's identification line. */
export function tcpCheck(host: string, port: number, timeoutMs = 5_000): Promise<Reachability> {
  return new Promise((resolve) => {
    const socket = net.connect({ host, port });
    let banner = '';
    const done = (r: Reachability) => {
      socket.destroy();
      resolve(r);
    };
    socket.setTimeout(timeoutMs, () => done({ reachable: false, method: 'tcp', detail: `no answer from ${host}:${port} within ${timeoutMs / 1000} s` }));
    socket.on('error', (err: NodeJS.ErrnoException) => done({ reachable: false, method: 'tcp', detail: `${host}:${port}: ${err.code ?? err.message}` }));
    socket.on('data', (d) => {
      banner += d.toString('latin1');
      const line = banner.split(/\r?\n/)[0] ?? '';
      if (banner.includes('\n')) {
        done(
          line.startsWith('SSH-')
            ? { reachable: true, method: 'tcp', detail: `${host}:${port} answers ${line.trim()}` }
            : { reachable: false, method: 'tcp', detail: `${host}:${port} answers, but not as an SSH server ("${line.slice(0, 40)}")` },
        );
      }
    });
  });
}

/** The probe without SSH: reachability only. */
export const tcpProbe: HypervisorProbe = {
  check: (hv) => tcpCheck(hv.address, hv.port ?? 22),
  domainDisks: async () => undefined,
};

/** Runs argv on a hypervisor (no shell string is built here). */
export type RemoteExec = (hv: HypervisorConfig, argv: readonly string[]) => Promise<{ code: number | undefined; stdout: string; stderr: string }>;

/** A probe that runs `virsh` on the hypervisor through `exec` (the SSH pool). */
export function commandProbe(exec: RemoteExec): HypervisorProbe {
  return {
    async check(hv) {
      try {
        const r = await exec(hv, ['true']);
        return r.code === 0 ? { reachable: true, method: 'ssh', detail: `ssh ${hv.user ?? 'root'}@${hv.address}:${hv.port ?? 22} works` } : { reachable: false, method: 'ssh', detail: `ssh works but "true" exited ${r.code}` };
      } catch (err) {
        return { reachable: false, method: 'ssh', detail: (err as Error).message };
      }
    },
    async domainDisks(hv, domain) {
      const r = await exec(hv, ['virsh', '-c', hv.libvirtUri ?? 'qemu:///system', 'dumpxml', domain]);
      if (r.code !== 0) throw new Error(`virsh dumpxml ${domain} on ${hv.name} failed: ${r.stderr.trim().split('\n').pop() ?? `exit ${r.code}`}`);
      return parseDomainDisks(r.stdout);
    },
  };
}

const attr = (tag: string, name: string) => new RegExp(`\\b${name}=(['"])(.*?)\\1`).exec(tag)?.[2];

/** The <disk> elements of a libvirt domain XML (enough of them for sync; not a general XML parser). */
export function parseDomainDisks(xml: string): DomainDisk[] {
  const out: DomainDisk[] = [];
  for (const m of xml.matchAll(/<disk\b([^>]*)>([\s\S]*?)<\/disk>/g)) {
    const open = m[1]!;
    const body = m[2]!;
    // Only the top-level <source>, not one inside <backingStore>.
    const top = body.replace(/<backingStore\b[\s\S]*?<\/backingStore>/g, '');
    const source = /<source\b[^>]*>/.exec(top)?.[0] ?? '';
    const target = /<target\b[^>]*>/.exec(top)?.[0] ?? '';
    const driver = /<driver\b[^>]*>/.exec(top)?.[0] ?? '';
    out.push({
      type: attr(open, 'type') ?? 'file',
      device: attr(open, 'device') ?? 'disk',
      target: attr(target, 'dev') ?? '',
      source: attr(source, 'file') ?? attr(source, 'dev') ?? attr(source, 'name'),
      protocol: attr(source, 'protocol'),
      format: attr(driver, 'type'),
      serial: /<serial>([^<]*)<\/serial>/.exec(top)?.[1],
    });
  }
  return out;
}
