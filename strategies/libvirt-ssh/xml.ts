/**
 * A small XML document model for libvirt's XML (domain, checkpoint, backup job): elements,
 * attributes in order, text, comments. libvirt writes well-formed, namespace-free XML without
 * DTDs, so this is enough to read disks and to rewrite a domain for a restore — and it keeps
 * the project free of an XML dependency. Anything it does not understand (a DOCTYPE, a
 * processing instruction other than the prologue) is an error, never silently dropped.
 */
import { VprotectError } from '../../src/errors.js';

export interface XmlElement {
  name: string;
  attrs: [string, string][];
  children: XmlNode[];
}
export type XmlNode = XmlElement | { text: string } | { comment: string };

export class XmlError extends VprotectError {
  override readonly code: string = 'xml';
}

const ENTITIES: Record<string, string> = { lt: '<', gt: '>', amp: '&', quot: '"', apos: "'" };

function decode(s: string, where: string): string {
  return s.replace(/&(#x[0-9a-fA-F]+|#[0-9]+|[a-z]+);/g, (_m, e: string) => {
    if (e.startsWith('#x')) return String.fromCodePoint(parseInt(e.slice(2), 16));
    if (e.startsWith('#')) return String.fromCodePoint(parseInt(e.slice(1), 10));
    const v = ENTITIES[e];
    if (v === undefined) throw new XmlError(`${where}: unknown entity &${e};`);
    return v;
  });
}

export function escapeText(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}
export function escapeAttr(s: string): string {
  return escapeText(s).replace(/"/g, '&quot;').replace(/'/g, '&apos;');
}

/** Parses a document and returns its root element. */
export function parseXml(text: string, what = 'XML'): XmlElement {
  let pos = 0;
  const fail = (msg: string): never => {
    const line = text.slice(0, pos).split('\n').length;
    throw new XmlError(`${what}, line ${line}: ${msg}`);
  };
  const skipMisc = () => {
    for (;;) {
      while (pos < text.length && /\s/.test(text[pos]!)) pos++;
      if (text.startsWith('<?', pos)) {
        const end = text.indexOf('?>', pos);
        if (end < 0) fail('unterminated processing instruction');
        pos = end + 2;
      } else if (text.startsWith('<!--', pos)) {
        const end = text.indexOf('-->', pos);
        if (end < 0) fail('unterminated comment');
        pos = end + 3;
      } else return;
    }
  };
  const nameRe = /[A-Za-z_:][-A-Za-z0-9_:.]*/y;
  const readName = (): string => {
    nameRe.lastIndex = pos;
    const m = nameRe.exec(text);
    if (!m) fail('expected a name');
    pos += m![0].length;
    return m![0];
  };
  const element = (): XmlElement => {
    if (text[pos] !== '<') fail('expected an element');
    pos++;
    const name = readName();
    const attrs: [string, string][] = [];
    for (;;) {
      while (/\s/.test(text[pos] ?? '')) pos++;
      if (text.startsWith('/>', pos)) {
        pos += 2;
        return { name, attrs, children: [] };
      }
      if (text[pos] === '>') {
        pos++;
        break;
      }
      const an = readName();
      while (/\s/.test(text[pos] ?? '')) pos++;
      if (text[pos] !== '=') fail(`attribute ${an} without a value`);
      pos++;
      while (/\s/.test(text[pos] ?? '')) pos++;
      const q = text[pos];
      if (q !== '"' && q !== "'") fail(`attribute ${an}: expected a quoted value`);
      const end = text.indexOf(q!, pos + 1);
      if (end < 0) fail(`attribute ${an}: unterminated value`);
      attrs.push([an, decode(text.slice(pos + 1, end), what)]);
      pos = end + 1;
    }
    const children: XmlNode[] = [];
    for (;;) {
      if (pos >= text.length) fail(`element <${name}> is not closed`);
      if (text.startsWith('</', pos)) {
        pos += 2;
        const close = readName();
        if (close !== name) fail(`</${close}> closes <${name}>`);
        while (/\s/.test(text[pos] ?? '')) pos++;
        if (text[pos] !== '>') fail('expected >');
        pos++;
        return { name, attrs, children };
      }
      if (text.startsWith('<!--', pos)) {
        const end = text.indexOf('-->', pos);
        if (end < 0) fail('unterminated comment');
        children.push({ comment: text.slice(pos + 4, end) });
        pos = end + 3;
      } else if (text.startsWith('<![CDATA[', pos)) {
        const end = text.indexOf(']]>', pos);
        if (end < 0) fail('unterminated CDATA');
        children.push({ text: text.slice(pos + 9, end) });
        pos = end + 3;
      } else if (text.startsWith('<!', pos) || text.startsWith('<?', pos)) {
        fail('DOCTYPE and processing instructions are not supported inside a document');
      } else if (text[pos] === '<') {
        children.push(element());
      } else {
        const end = text.indexOf('<', pos);
        children.push({ text: decode(text.slice(pos, end < 0 ? text.length : end), what) });
        pos = end < 0 ? text.length : end;
      }
    }
  };
  skipMisc();
  if (text.startsWith('<!', pos)) fail('DOCTYPE is not supported');
  const root = element();
  skipMisc();
  if (pos < text.length) fail('content after the root element');
  return root;
}

export function serializeXml(node: XmlNode): string {
  if ('text' in node) return escapeText(node.text);
  if ('comment' in node) return `<!--${node.comment}-->`;
  const attrs = node.attrs.map(([k, v]) => ` ${k}='${escapeAttr(v)}'`).join('');
  if (node.children.length === 0) return `<${node.name}${attrs}/>`;
  return `<${node.name}${attrs}>${node.children.map(serializeXml).join('')}</${node.name}>`;
}

export function isElement(n: XmlNode | undefined): n is XmlElement {
  return n !== undefined && 'name' in n;
}

export function attr(el: XmlElement | undefined, name: string): string | undefined {
  return el?.attrs.find(([k]) => k === name)?.[1];
}

export function setAttr(el: XmlElement, name: string, value: string): void {
  const a = el.attrs.find(([k]) => k === name);
  if (a) a[1] = value;
  else el.attrs.push([name, value]);
}

export function removeAttr(el: XmlElement, name: string): void {
  el.attrs = el.attrs.filter(([k]) => k !== name);
}

export function children(el: XmlElement | undefined, name?: string): XmlElement[] {
  if (!el) return [];
  return el.children.filter((c): c is XmlElement => isElement(c) && (name === undefined || c.name === name));
}

export function child(el: XmlElement | undefined, name: string): XmlElement | undefined {
  return children(el, name)[0];
}

/** Child elements along a path: path(domain, 'devices', 'disk'). */
export function path(el: XmlElement | undefined, ...names: string[]): XmlElement[] {
  let cur: XmlElement[] = el ? [el] : [];
  for (const n of names) cur = cur.flatMap((c) => children(c, n));
  return cur;
}

export function textOf(el: XmlElement | undefined): string | undefined {
  if (!el) return undefined;
  return el.children.map((c) => ('text' in c ? c.text : '')).join('');
}

export function setText(el: XmlElement, text: string): void {
  el.children = [{ text }];
}

export function removeChildren(el: XmlElement, predicate: (c: XmlElement) => boolean): void {
  el.children = el.children.filter((c) => !(isElement(c) && predicate(c)));
}

/** Every element of the tree, depth first (for rewriting paths wherever they occur). */
export function* walk(el: XmlElement): Generator<XmlElement> {
  yield el;
  for (const c of children(el)) yield* walk(c);
}

/** Builds an element: el('disk', {name: 'vda'}, el('scratch', {file})). Undefined attributes are left out. */
export function el(name: string, attrs: Record<string, string | undefined> = {}, ...kids: (XmlNode | string)[]): XmlElement {
  return {
    name,
    attrs: Object.entries(attrs).filter((e): e is [string, string] => e[1] !== undefined),
    children: kids.map((k) => (typeof k === 'string' ? { text: k } : k)),
  };
}
