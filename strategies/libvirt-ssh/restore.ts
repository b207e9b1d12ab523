/**
 * Restore to a hypervisor, over the same SSH connection as the backups:
 *
 * - HypervisorFileTarget (a RestoreTarget): one disk to a file on the hypervisor, raw (sparse)
 *   or qcow2. Only data crosses the wire: a stream of "<offset> <length>\n<bytes>" runs that a
 *   POSIX shell loop writes with dd at their offsets (one SSH exec for the whole disk, one dd per
 *   run; nearby runs are joined so the dd count stays small). qcow2 is converted on the host.
 * - restoreDomain: every disk of a point, then the saved domain XML defined under a new name
 *   (new UUID, disks pointing at the restored files, per-domain log files renamed), and
 *   optionally started.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Writable } from 'node:stream';
import { ConfigError, UsageError, errorMessage, throwIfAborted } from '../../src/errors.js';
import type { HypervisorConfig } from '../../src/inventory/types.js';
import type { Environment } from '../../src/inventory/secrets.js';
import { silentLogger, type EventSink, type Logger } from '../../src/log.js';
import { openDiskReader, type DiskReader } from '../../src/repository/chain-reader.js';
import { splitZeroRuns } from '../../src/repository/extents.js';
import type { PointInfo, Repository } from '../../src/repository/repository.js';
import type { RestoreContext, RestoreResult, RestoreTarget } from '../../src/repository/restore.js';
import { borrowConnection } from './connections.js';
import { rewriteDomainForRestore } from './domain-xml.js';
import { Hypervisor } from './hypervisor.js';

/** Zero gaps shorter than this between two data runs are sent as zeros (one dd instead of two). */
const JOIN_GAP = 256 * 1024;
/** A run is flushed when it reaches this size (bounded memory). */
const MAX_RUN = 16 * 1024 * 1024;

/** The remote side: reads runs from stdin and writes each at its offset. */
const WRITER_SCRIPT = [
  'set -e',
  'f="$1"',
  'while read -r off len; do',
  '  [ "$len" = 0 ] && exit 0',
  '  dd iflag=fullblock,count_bytes count="$len" bs=4M of="$f" seek="$off" oflag=seek_bytes conv=notrunc status=none',
  'done',
  'echo "stream ended without its end marker" >&2; exit 1',
].join('\n');

function writeAll(stream: Writable, data: Buffer | string): Promise<void> {
  return new Promise((resolve, reject) => {
    const ok = stream.write(data, (err) => {
      if (err) reject(err);
      else if (ok) resolve();
    });
    if (!ok) stream.once('drain', resolve);
  });
}

export class HypervisorFileTarget implements RestoreTarget {
  constructor(
    private readonly hv: Hypervisor,
    readonly path: string,
    readonly format: 'raw' | 'qcow2' = 'qcow2',
  ) {}

  describe(): string {
    return `${this.format} file ${this.path} on ${this.hv.name}`;
  }

  async restore(reader: DiskReader, ctx: RestoreContext): Promise<RestoreResult> {
    const hv = this.hv;
    if (await hv.exists(this.path)) throw new UsageError(`${this.path} already exists on ${hv.name}; restore will not overwrite it`);
    const raw = this.format === 'raw' ? `${this.path}.partial` : `${this.path}.raw-partial`;
    await hv.run(['sh', '-c', 'rm -f "$1" && truncate -s "$2" "$1"', 'sh', raw, String(reader.size)], { signal: null });
    try {
      const proc = await hv.conn.execStream(['sh', '-c', WRITER_SCRIPT, 'sh', raw], ctx.signal ? { signal: ctx.signal } : {});
      proc.stdout.resume();
      let dataBytes = 0;
      let run: { offset: number; parts: Buffer[]; length: number } | undefined;
      const flush = async () => {
        if (!run) return;
        await writeAll(proc.stdin, `${run.offset} ${run.length}\n`);
        for (const p of run.parts) await writeAll(proc.stdin, p);
        run = undefined;
      };
      try {
        for await (const e of reader.extents(ctx.signal ? { signal: ctx.signal } : {})) {
          for (const r of splitZeroRuns(e)) {
            if (!r.data) continue;
            dataBytes += r.length;
            const end = run ? run.offset + run.length : 0;
            if (run && r.offset - end <= JOIN_GAP && run.length + (r.offset - end) + r.length <= MAX_RUN) {
              if (r.offset > end) run.parts.push(Buffer.alloc(r.offset - end));
              run.parts.push(Buffer.from(r.data)); // copy: the reader may reuse its buffers
              run.length += r.offset - end + r.length;
            } else {
              await flush();
              run = { offset: r.offset, parts: [Buffer.from(r.data)], length: r.length };
            }
          }
          ctx.events?.({ type: 'progress', id: `restore:${reader.key}`, label: `restore ${reader.key}`, done: e.offset + e.length, total: reader.size });
        }
        await flush();
        await writeAll(proc.stdin, '0 0\n');
        proc.stdin.end();
      } catch (err) {
        proc.kill();
        throw err;
      }
      const r = await proc.done;
      if (r.code !== 0) throw new ConfigError(`writing ${raw} on ${hv.name} failed: ${r.stderr.trim() || `exit status ${r.code ?? r.signal}`}`);
      throwIfAborted(ctx.signal);
      if (this.format === 'qcow2') {
        await hv.run(['qemu-img', 'convert', '-q', '-f', 'raw', '-O', 'qcow2', '-o', 'compat=1.1', raw, `${this.path}.partial`], { timeoutMs: 3_600_000 });
        await hv.remove(raw);
      }
      await hv.run(['mv', '-f', `${this.path}.partial`, this.path], { signal: null });
      ctx.events?.({ type: 'progress-end', id: `restore:${reader.key}` });
      return { target: this.describe(), size: reader.size, dataBytes };
    } catch (err) {
      await hv.remove(raw, `${this.path}.partial`).catch(() => undefined);
      throw err;
    }
  }
}

export interface RestoreDomainRequest {
  repo: Repository;
  point: PointInfo;
  hypervisor: HypervisorConfig;
  env: Environment;
  /** Name of the new domain (must not exist on the hypervisor). */
  name: string;
  /** Directory on the hypervisor for the disk files and per-domain files. */
  dir: string;
  format?: 'raw' | 'qcow2';
  start?: boolean;
  /** Only these disks (default: every disk of the point). */
  disks?: string[];
  log?: Logger;
  events?: EventSink;
  signal?: AbortSignal;
}

export interface RestoreDomainResult {
  domain: string;
  uuid: string;
  hypervisor: string;
  disks: { key: string; path: string; size: number; dataBytes: number }[];
  started: boolean;
}

export async function restoreDomain(req: RestoreDomainRequest): Promise<RestoreDomainResult> {
  const log = req.log ?? silentLogger;
  const format = req.format ?? 'qcow2';
  const { point } = req;
  if (!point.manifest.metadata.includes('domain.xml')) {
    throw new UsageError(`point ${point.pointId} has no domain.xml (not a libvirt-ssh backup); restore its disks with --to-file`);
  }
  const savedXml = await readFile(join(point.dir, 'metadata', 'domain.xml'), 'utf8');
  const keys = req.disks ?? point.manifest.disks.map((d) => d.key);
  for (const k of keys) if (!point.manifest.disks.some((d) => d.key === k)) throw new UsageError(`point ${point.pointId} has no disk ${k}`);
  const borrowed = await borrowConnection(req.hypervisor, req.env, log);
  const hv = new Hypervisor(borrowed.conn, req.hypervisor, log, req.signal);
  const created: string[] = [];
  try {
    if ((await hv.domainState(req.name)) !== undefined) throw new UsageError(`a domain named ${req.name} already exists on ${hv.name}`, { hint: 'choose another name with --define-as' });
    await hv.run(['mkdir', '-p', req.dir]);
    const disks: RestoreDomainResult['disks'] = [];
    const paths: Record<string, { path: string; format: 'qcow2' | 'raw' }> = {};
    for (const key of keys) {
      const path = `${req.dir.replace(/\/+$/, '')}/${req.name}.${key}.${format}`;
      const reader = await openDiskReader(req.repo, point, key);
      try {
        log.info(`restoring ${key} of ${point.pointId} to ${path} on ${hv.name}`);
        const r = await new HypervisorFileTarget(hv, path, format).restore(reader, { ...(req.signal ? { signal: req.signal } : {}), ...(req.events ? { events: req.events } : {}) });
        created.push(path);
        disks.push({ key, path, size: r.size, dataBytes: r.dataBytes });
        paths[key] = { path, format };
      } finally {
        await reader.close();
      }
    }
    // qemu runs as vmUser; with dynamic_ownership libvirt relabels the disks at start anyway.
    await hv.exec(['chown', hv.vmUser, ...disks.map((d) => d.path)], { signal: null });
    const xml = rewriteDomainForRestore(savedXml, { name: req.name, disks: paths, fileDir: req.dir });
    const xmlFile = `${req.dir.replace(/\/+$/, '')}/${req.name}.xml`;
    await hv.writeFile(xmlFile, xml, '0600');
    try {
      await hv.virsh(['define', xmlFile]);
    } finally {
      await hv.remove(xmlFile).catch(() => undefined);
    }
    const uuid = (await hv.virsh(['domuuid', req.name])).trim();
    let started = false;
    if (req.start) {
      await hv.virsh(['start', req.name]);
      started = true;
    }
    return { domain: req.name, uuid, hypervisor: hv.name, disks, started };
  } catch (err) {
    if (created.length && (await hv.domainState(req.name).catch(() => undefined)) === undefined) {
      await hv.remove(...created).catch((e: unknown) => log.warn(`could not remove ${created.join(', ')}: ${errorMessage(e)}`));
    }
    throw err;
  } finally {
    await borrowed.release();
  }
}
