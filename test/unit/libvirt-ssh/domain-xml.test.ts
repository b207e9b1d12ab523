/** Domain XML as libvirt writes it (recorded from the lab): disks, backing chains, RBD, agent channel; restore rewrite. */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseDomainXml, renamePath, rewriteDomainForRestore } from '../../../strategies/libvirt-ssh/domain-xml.js';
import { parseXml, serializeXml, XmlError } from '../../../strategies/libvirt-ssh/xml.js';

const fixture = (name: string) => readFileSync(join(import.meta.dirname, 'fixtures', name), 'utf8');

describe('xml', () => {
  it('parses and serializes elements, attributes, text, entities and comments', () => {
    const root = parseXml(`<?xml version="1.0"?>\n<!-- c --><a x="1 &amp; 2" y='&lt;'><b>t&gt;u</b><!--k--><c/></a>`);
    expect(root.name).toBe('a');
    expect(root.attrs).toEqual([['x', '1 & 2'], ['y', '<']]);
    expect(serializeXml(root)).toBe(`<a x='1 &amp; 2' y='&lt;'><b>t&gt;u</b><!--k--><c/></a>`);
  });

  it('refuses malformed documents with the line', () => {
    expect(() => parseXml('<a>\n<b></a>')).toThrow(XmlError);
    expect(() => parseXml('<a>\n<b></a>')).toThrow(/line 2: <\/a> closes <b>/);
    expect(() => parseXml('<!DOCTYPE x><a/>')).toThrow(/DOCTYPE/);
    expect(() => parseXml('<a/><b/>')).toThrow(/after the root/);
    expect(() => parseXml('<a x="&bogus;"/>')).toThrow(/unknown entity/);
  });
});

describe('parseDomainXml', () => {
  it('a running Nova-style qcow2 disk on a raw _base file', () => {
    const d = parseDomainXml(fixture('vp-qcow2.live.xml'));
    expect(d).toMatchObject({ name: 'vp-qcow2', running: true, guestAgentChannel: false });
    expect(d.uuid).toMatch(/^[0-9a-f-]{36}$/);
    expect(d.disks).toEqual([
      {
        target: 'vda',
        device: 'disk',
        type: 'file',
        format: 'qcow2',
        path: '/tmp/vprotect-lab/vms/vp-qcow2.qcow2',
        readonly: false,
        shareable: false,
        backing: [{ type: 'file', path: '/tmp/vprotect-lab/vms/_base/vp-qcow2.base.raw', format: 'raw' }],
      },
    ]);
  });

  it('an RBD network disk: pool, image, monitors, cephx user and secret', () => {
    const d = parseDomainXml(fixture('vp-rbd.live.xml'));
    expect(d.disks[0]).toMatchObject({ target: 'vda', type: 'network', protocol: 'rbd', format: 'raw', rbd: { pool: 'vms', image: 'vp-rbd-disk', user: 'volumes', secretUuid: '8a1c3f9e-6d2b-4c1e-9f0a-0b5e1ab0c0de' } });
    expect(d.disks[0]!.rbd!.hosts[0]).toMatchObject({ name: '127.0.0.1' });
  });

  it('an inactive domain with a guest-agent channel', () => {
    const d = parseDomainXml(fixture('vp-agent.inactive.xml'));
    expect(d).toMatchObject({ name: 'vp-agent', running: false, guestAgentChannel: true });
  });

  it('refuses a document that is not a domain', () => {
    expect(() => parseDomainXml('<domaincheckpoint><name>x</name></domaincheckpoint>')).toThrow(/not <domain>/);
    expect(() => parseDomainXml('<domain><name>x</name></domain>')).toThrow(/no <name> or <uuid>/);
  });
});

describe('rewriteDomainForRestore', () => {
  it('new name and UUID, disks on the restored files without backing chain, per-domain files renamed, runtime state dropped', () => {
    const xml = rewriteDomainForRestore(fixture('vp-qcow2.live.xml'), { name: 'vp-qcow2-restored', uuid: '11111111-2222-3333-4444-555555555555', disks: { vda: { path: '/srv/r/vp-qcow2-restored.vda.qcow2', format: 'qcow2' } }, fileDir: '/srv/r' });
    const d = parseDomainXml(xml);
    expect(d).toMatchObject({ name: 'vp-qcow2-restored', uuid: '11111111-2222-3333-4444-555555555555', running: false });
    expect(d.disks).toEqual([expect.objectContaining({ target: 'vda', type: 'file', format: 'qcow2', path: '/srv/r/vp-qcow2-restored.vda.qcow2', backing: [] })]);
    expect(xml).toContain(`<source path='/srv/r/vp-qcow2-restored.serial.log'/>`);
    expect(xml).not.toContain('vp-qcow2.serial.log');
    expect(xml).not.toMatch(/<alias|<seclabel|<domain[^>]* id=/);
  });

  it('an RBD disk becomes a file; disks not restored are dropped; a fresh UUID by default', () => {
    const original = parseDomainXml(fixture('vp-rbd.live.xml'));
    const xml = rewriteDomainForRestore(fixture('vp-rbd.live.xml'), { name: 'n', disks: { vda: { path: '/x/n.vda.raw', format: 'raw' } }, fileDir: '/x' });
    const d = parseDomainXml(xml);
    expect(d.uuid).not.toBe(original.uuid);
    expect(d.disks[0]).toMatchObject({ type: 'file', path: '/x/n.vda.raw', format: 'raw' });
    expect(xml).not.toContain('<auth');
    expect(parseDomainXml(rewriteDomainForRestore(fixture('vp-rbd.live.xml'), { name: 'n', disks: {}, fileDir: '/x' })).disks).toEqual([]);
  });

  it('renamePath keeps the file kind and moves it to the restore directory', () => {
    expect(renamePath('/var/lib/nova/instances/abc/console.log', 'instance-0001', 'copy', '/srv/')).toBe('/srv/copy.console.log');
    expect(renamePath('/vms/vp-a.serial.log', 'vp-a', 'vp-b', '/vms')).toBe('/vms/vp-b.serial.log');
  });
});
