/**
 * A point's disk streamed into a new Glance image (raw: every byte, holes as zeros, since an
 * HTTP body has no holes). The chain reader checks each block as it reads; the upload
 * primitive hashes what it sends and compares with Glance's md5 and sha512, so the image is
 * known to hold exactly the point's disk. Memory stays bounded: the stream pulls extents as
 * the HTTP request drains them.
 */
import { Readable } from 'node:stream';
import type { EventSink } from '../log.js';
import type { Cloud } from '../openstack/cloud.js';
import type { Image, ImageSpec } from '../openstack/glance.js';
import { uploadImage, type Digests } from '../openstack/restore.js';
import type { WaitOptions } from '../openstack/wait.js';
import type { DiskReader } from '../repository/chain-reader.js';
import { zeros } from '../repository/extents.js';

const ZERO_PIECE = 1 << 20;
const PROGRESS_STEP = 64 << 20;

async function* rawBytes(reader: DiskReader, stats: { dataBytes: number }, signal: AbortSignal | undefined, events: EventSink | undefined, id: string): AsyncGenerator<Buffer> {
  let reported = 0;
  for await (const e of reader.extents(signal ? { signal } : {})) {
    if (e.data) {
      stats.dataBytes += e.length;
      yield e.data;
    } else {
      for (let done = 0; done < e.length; done += ZERO_PIECE) yield zeros(Math.min(ZERO_PIECE, e.length - done));
    }
    const end = e.offset + e.length;
    if (events && end - reported >= PROGRESS_STEP) {
      reported = end;
      events({ type: 'progress', id, label: `upload ${reader.key}`, done: end, total: reader.size });
    }
  }
  events?.({ type: 'progress-end', id });
}

export async function uploadDisk(
  cloud: Cloud,
  reader: DiskReader,
  spec: ImageSpec,
  opts: { signal?: AbortSignal | undefined; events?: EventSink | undefined; onCreated?: (id: string) => void; wait?: WaitOptions },
): Promise<{ image: Image; digests: Digests; dataBytes: number }> {
  const stats = { dataBytes: 0 };
  const data = Readable.from(rawBytes(reader, stats, opts.signal, opts.events, `upload:${reader.key}`), { objectMode: false, highWaterMark: 8 << 20 });
  // Ctrl-C: stop reading the chain; the upload then fails and uploadImage deletes the image.
  const stop = () => data.destroy(new Error('interrupted'));
  opts.signal?.addEventListener('abort', stop, { once: true });
  try {
    const r = await uploadImage(cloud, { minDiskGb: Math.ceil(reader.size / 1024 ** 3), ...spec }, data, { size: reader.size, ...(opts.onCreated ? { onCreated: opts.onCreated } : {}) }, { ...opts.wait, signal: opts.signal });
    return { ...r, dataBytes: stats.dataBytes };
  } finally {
    opts.signal?.removeEventListener('abort', stop);
    data.destroy();
  }
}
