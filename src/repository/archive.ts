/**
 * `export`/`import` of one point as a tar stream (tar-stream): `<point>/manifest.json` (the
 * point's own manifest), `<point>/metadata/*`, and per disk `<point>/disks/<key>.raw` (the whole
 * logical disk, whatever level the point had) followed by `<point>/disks/<key>.blockmap`, which
 * import checks the data against. Import writes a new full point (sparse again) in a repository.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import type { Readable, Writable } from 'node:stream';
import tar from 'tar-stream';
import { DataCorruptError, throwIfAborted } from '../errors.js';
import { BlockMapBuilder } from './block-map.js';
import { openDiskReader } from './chain-reader.js';
import { zeros, type Extent } from './extents.js';
import { diskFiles, MANIFEST } from './layout.js';
import { parseManifest, type PointManifest } from './manifest.js';
import type { PointWriter } from './point-writer.js';
import type { PointInfo, Repository } from './repository.js';

function waitDrain(w: Writable): Promise<void> {
  return new Promise((resolve) => w.once('drain', () => resolve()));
}

async function writeEntry(pack: tar.Pack, name: string, size: number, body: (sink: Writable) => Promise<void>): Promise<void> {
  let done!: () => void;
  let failed!: (e: unknown) => void;
  const finished = new Promise<void>((res, rej) => {
    done = res;
    failed = rej;
  });
  const sink = pack.entry({ name, size, mode: 0o644, mtime: new Date() }, (err) => (err ? failed(err) : done())) as unknown as Writable;
  await body(sink);
  sink.end();
  await finished;
}

export async function exportPoint(repo: Repository, point: PointInfo, out: Writable, opts: { signal?: AbortSignal } = {}): Promise<{ disks: number; bytes: number }> {
  const pack = tar.pack();
  const piped = pipeline(pack as unknown as Readable, out);
  let bytes = 0;
  try {
    const prefix = `${point.pointId}/`;
    const manifest = await readFile(join(point.dir, MANIFEST));
    await writeEntry(pack, prefix + MANIFEST, manifest.length, async (s) => void s.write(manifest));
    for (const name of point.manifest.metadata) {
      const data = await readFile(join(point.dir, diskFiles.metadata(name)));
      await writeEntry(pack, prefix + diskFiles.metadata(name), data.length, async (s) => void s.write(data));
    }
    for (const disk of point.manifest.disks) {
      const reader = await openDiskReader(repo, point, disk.key);
      const lines: string[] = [];
      const map = new BlockMapBuilder(repo.blockSize, (d) => lines.push(`${d.toString('hex')}\n`));
      try {
        await writeEntry(pack, prefix + diskFiles.raw(disk.key), reader.size, async (sink) => {
          // No reuseBuffers: the tar stream queues the chunks written to it.
          for await (const e of reader.extents({ signal: opts.signal })) {
            if (e.data) map.data(e.offset, e.data);
            for (let done = 0; done < e.length; ) {
              const n = Math.min(e.length - done, 1 << 20);
              const chunk = e.data ? e.data.subarray(done, done + n) : zeros(n);
              if (!sink.write(chunk)) await waitDrain(sink);
              done += n;
            }
          }
        });
      } finally {
        await reader.close();
      }
      map.finish(reader.size);
      bytes += reader.size;
      const text = Buffer.from(lines.join(''), 'latin1');
      await writeEntry(pack, prefix + diskFiles.blockMap(disk.key), text.length, async (s) => void s.write(text));
    }
    pack.finalize();
    await piped;
    return { disks: point.manifest.disks.length, bytes };
  } catch (err) {
    pack.destroy(err as Error);
    await piped.catch(() => {});
    throw err;
  }
}

async function readAll(stream: AsyncIterable<unknown>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of stream) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

async function* streamExtents(stream: AsyncIterable<Buffer>, signal?: AbortSignal, map?: BlockMapBuilder): AsyncGenerator<Extent> {
  let offset = 0;
  for await (const chunk of stream) {
    throwIfAborted(signal);
    map?.data(offset, chunk);
    yield { offset, length: chunk.length, data: chunk };
    offset += chunk.length;
  }
}

/** Reads an export and writes it as a new full point of the same VM; returns its manifest. */
export async function importArchive(repo: Repository, input: Readable, opts: { signal?: AbortSignal; what?: string } = {}): Promise<PointManifest> {
  const what = opts.what ?? 'the archive';
  const extract = tar.extract();
  input.pipe(extract as unknown as Writable);
  let manifest: PointManifest | undefined;
  let writer: PointWriter | undefined;
  const disksDone = new Set<string>();
  const mapsChecked = new Set<string>();
  const computedMaps = new Map<string, string>();
  try {
    for await (const entry of extract) {
      const name = entry.header.name;
      const slash = name.indexOf('/');
      const rel = slash >= 0 ? name.slice(slash + 1) : name;
      if (!manifest) {
        if (rel !== MANIFEST) throw new DataCorruptError(`${what}: does not start with a point manifest (first entry ${name})`);
        manifest = parseManifest((await readAll(entry)).toString('utf8'), `${what}: ${name}`);
        writer = await repo.beginPoint({
          vmId: manifest.vmId,
          vmName: manifest.vmName,
          level: 'full',
          source: { ...(manifest.source ?? {}), importedFrom: { pointId: manifest.pointId, chainId: manifest.chainId } },
          strategy: manifest.strategy,
          consistency: manifest.consistency,
          command: 'import',
          signal: opts.signal,
        });
        continue;
      }
      const meta = /^metadata\/(.+)$/.exec(rel);
      const raw = /^disks\/(.+)\.raw$/.exec(rel);
      const map = /^disks\/(.+)\.blockmap$/.exec(rel);
      if (meta) {
        await writer!.addMetadata(meta[1]!, await readAll(entry));
      } else if (raw) {
        const entryDisk = manifest.disks.find((d) => d.key === raw[1]);
        if (!entryDisk) throw new DataCorruptError(`${what}: disk ${raw[1]} is not in the manifest`);
        // The archive's block map uses the exporting repository's block size; when ours differs,
        // build one of that size while the data passes (otherwise ours is compared directly).
        const own = manifest.blockSize === repo.blockSize;
        const lines: string[] = [];
        const builder = own ? undefined : new BlockMapBuilder(manifest.blockSize, (d) => lines.push(`${d.toString('hex')}\n`));
        const size = entry.header.size ?? 0;
        await writer!.writeDisk(
          { key: entryDisk.key, size, sourceFormat: entryDisk.sourceFormat, sourceAnchor: entryDisk.sourceAnchor ?? undefined },
          streamExtents(entry as AsyncIterable<Buffer>, opts.signal, builder),
        );
        builder?.finish(size);
        if (builder) computedMaps.set(entryDisk.key, lines.join(''));
        disksDone.add(entryDisk.key);
      } else if (map) {
        const theirs = (await readAll(entry)).toString('latin1');
        const ours = computedMaps.get(map[1]!) ?? (await readFile(join(writer!.dir, diskFiles.blockMap(map[1]!)), 'latin1'));
        if (theirs !== ours) throw new DataCorruptError(`${what}: the data of disk ${map[1]} does not match the block map in the archive`);
        mapsChecked.add(map[1]!);
      } else {
        await readAll(entry); // unknown entries are skipped (newer exporters may add some)
      }
    }
    if (!manifest || !writer) throw new DataCorruptError(`${what}: empty archive`);
    for (const d of manifest.disks) {
      if (!disksDone.has(d.key) || !mapsChecked.has(d.key)) throw new DataCorruptError(`${what}: disk ${d.key} or its block map is missing (truncated archive?)`);
    }
    return await writer.commit();
  } catch (err) {
    await writer?.abort();
    input.unpipe(extract as unknown as Writable);
    throw err instanceof DataCorruptError || (err as { code?: string }).code === undefined ? wrapTarError(err, what) : err;
  }
}

function wrapTarError(err: unknown, what: string): unknown {
  if (err instanceof Error && !(err instanceof DataCorruptError) && /tar|header|unexpected end/i.test(err.message)) {
    return new DataCorruptError(`${what}: not a readable tar stream (${err.message})`, { cause: err });
  }
  return err;
}
