/**
 * Waiting for OpenStack's long operations: poll a resource until it reaches a wanted state,
 * fail at once (with the resource's fault) when it reaches an error state, and fail with the
 * last seen state when the time is up. Polling starts at 0.5 s (most lab operations finish in
 * 0.6–5 s) and slows down to 5 s for the long ones (uploads, big volumes).
 */
import { throwIfAborted } from '../errors.js';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from '../log.js';
import { isNotFound, OperationFailedError } from './errors.js';

export interface WaitOptions {
  timeoutMs?: number | undefined;
  /** First poll interval; grows by half each time up to maxIntervalMs. */
  intervalMs?: number | undefined;
  maxIntervalMs?: number | undefined;
  signal?: AbortSignal | undefined;
  log?: Logger | undefined;
}

export interface StatusWait<T> extends WaitOptions {
  /** "volume 8f8f…", for messages. */
  what: string;
  poll: () => Promise<T>;
  status: (value: T) => string;
  until: readonly string[];
  /** How the wanted state reads in messages; default: the `until` states. */
  untilText?: string | undefined;
  /** States that end the wait with an error; default: anything containing "error", and "killed"/"deleted". */
  failOn?: ((status: string) => boolean) | undefined;
  /** The resource's own explanation of a failure (Nova fault message), if any. */
  fault?: ((value: T) => string | undefined) | undefined;
}

export const DEFAULT_WAIT_MS = 180_000;

const defaultFail = (s: string) => /error/i.test(s) || /^(killed|deleted|deactivated)$/i.test(s);

export async function waitForStatus<T>(w: StatusWait<T>): Promise<T> {
  const timeout = w.timeoutMs ?? DEFAULT_WAIT_MS;
  const deadline = Date.now() + timeout;
  const until = w.until.map((s) => s.toLowerCase());
  const fails = w.failOn ?? defaultFail;
  let interval = w.intervalMs ?? 500;
  const wanted = w.untilText ?? w.until.join(' or ');
  let last: string | undefined;
  for (;;) {
    throwIfAborted(w.signal);
    const value = await w.poll();
    const status = w.status(value);
    if (status !== last) w.log?.debug(`${w.what}: ${status}`);
    last = status;
    if (until.includes(status.toLowerCase())) return value;
    if (fails(status)) {
      const fault = w.fault?.(value);
      throw new OperationFailedError(`${w.what} went to status "${status}" while waiting for ${wanted}${fault ? `: ${fault}` : ''}`, {
        hint: 'the service logs (nova-compute, cinder-volume, glance-api) have the reason; clean up the failed resource before retrying',
        data: { status, wanted: w.until },
      });
    }
    if (Date.now() + interval > deadline) {
      throw new OperationFailedError(`timed out after ${Math.round(timeout / 1000)} s waiting for ${w.what} to become ${wanted} (still "${status}")`, {
        hint: 'the cloud may be overloaded, or the operation stuck; check the resource with the openstack CLI',
        data: { status, wanted: w.until },
      });
    }
    await pause(interval, w.signal);
    interval = Math.min(w.maxIntervalMs ?? 5_000, interval * 1.5);
  }
}

/** Waits until `poll` answers 404; `status` reports progress meanwhile (for error states). */
export async function waitForDeletion<T>(w: Omit<StatusWait<T>, 'until'>): Promise<void> {
  try {
    await waitForStatus({ ...w, until: [], untilText: 'deleted', failOn: w.failOn ?? ((s) => /error/i.test(s)) });
  } catch (err) {
    if (isNotFound(err)) return;
    throw err;
  }
}

async function pause(ms: number, signal: AbortSignal | undefined): Promise<void> {
  try {
    await sleep(ms, undefined, { signal });
  } catch {
    throwIfAborted(signal);
  }
}
