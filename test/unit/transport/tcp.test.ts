import { describe, expect, it } from 'vitest';
import { ConfigError, UnavailableError } from '../../../src/errors.js';
import { netcatEndpoint, parsePortRange, PortAllocator } from '../../../src/transport/tcp.js';

describe('netcat port ranges', () => {
  it('parses inclusive ranges and refuses nonsense', () => {
    expect(parsePortRange('10809-10839')).toEqual({ first: 10809, last: 10839 });
    expect(parsePortRange(' 5 - 5 ')).toEqual({ first: 5, last: 5 });
    for (const bad of ['10839-10809', '0-10', '1-70000', '10809', 'a-b', '']) expect(() => parsePortRange(bad)).toThrow(ConfigError);
  });

  it('hands out distinct ports, skips busy ones, wraps, and runs out clearly', () => {
    const a = new PortAllocator({ first: 100, last: 103 });
    expect(a.take(new Set([100]))).toBe(101);
    expect(a.take()).toBe(102);
    expect(a.take(new Set([103]))).toBe(100);
    expect(() => a.take(new Set([103]))).toThrow(UnavailableError);
    a.release(101);
    expect(a.take(new Set([103]))).toBe(101);
  });

  it('is only enabled by the inventory, on netcat.address or the SSH address', () => {
    expect(netcatEndpoint({ name: 'hv', address: '10.0.0.1' })).toBeUndefined();
    expect(netcatEndpoint({ name: 'hv', address: '10.0.0.1', netcat: { ports: '1-2' } })).toEqual({ address: '10.0.0.1', ports: { first: 1, last: 2 } });
    expect(netcatEndpoint({ name: 'hv', address: '10.0.0.1', netcat: { ports: '1-2', address: '192.168.5.1' } })?.address).toBe('192.168.5.1');
  });
});
