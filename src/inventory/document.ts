/**
 * A parsed YAML document that can tell where any path in it is (file, line, column), so every
 * inventory problem points at the exact spot.
 */
import { isMap, isPair, isScalar, isSeq, LineCounter, parseDocument, type Document, type Node } from 'yaml';
import type { ConfigProblem } from '../errors.js';

export type PathSegment = string | number;

/** `policies[1].retention.keepDaily`; keys that are not plain identifiers are quoted. */
export function formatPath(path: readonly PathSegment[]): string {
  let out = '';
  for (const seg of path) {
    if (typeof seg === 'number') out += `[${seg}]`;
    else if (/^[A-Za-z_][A-Za-z0-9_-]*$/.test(seg)) out += out === '' ? seg : `.${seg}`;
    else out += `[${JSON.stringify(seg)}]`;
  }
  return out;
}

export class SourceDocument {
  readonly file: string;
  readonly doc: Document.Parsed;
  private readonly lines = new LineCounter();

  constructor(file: string, text: string) {
    this.file = file;
    this.doc = parseDocument(text, { lineCounter: this.lines, prettyErrors: true, uniqueKeys: true });
  }

  /** YAML syntax errors (and duplicate keys), as problems. */
  syntaxProblems(): ConfigProblem[] {
    return this.doc.errors.map((e) => {
      const at = e.linePos?.[0] ?? { line: 0, col: 0 };
      // yaml's messages end with a code excerpt after a blank line: keep the first sentence only.
      const message = e.message.split('\n')[0]!.replace(/ at line \d+, column \d+:?$/, '');
      return { file: this.file, line: at.line, column: at.col, path: '', message };
    });
  }

  /**
   * Position of the value at `path`; when it does not exist (a missing key), the position of the
   * nearest existing ancestor. With `key: true`, the position of the mapping key instead of its value.
   */
  positionOf(path: readonly PathSegment[], opts: { key?: boolean } = {}): { line: number; column: number } {
    let node: unknown = this.doc.contents;
    let best: unknown = node;
    for (let i = 0; i < path.length; i++) {
      const seg = path[i]!;
      const last = i === path.length - 1;
      if (isMap(node)) {
        const pair = node.items.find((p) => isPair(p) && keyString(p.key) === String(seg));
        if (!pair) break;
        node = last && opts.key ? pair.key : pair.value;
      } else if (isSeq(node) && typeof seg === 'number') {
        node = node.items[seg];
      } else {
        break;
      }
      if (node == null) break;
      best = node;
    }
    const range = (best as Node | null)?.range;
    if (!range) return { line: 1, column: 1 };
    const pos = this.lines.linePos(range[0]);
    return { line: pos.line, column: pos.col };
  }

  problem(path: readonly PathSegment[], message: string, opts: { key?: boolean } = {}): ConfigProblem {
    const { line, column } = this.positionOf(path, opts);
    return { file: this.file, line, column, path: formatPath(path), message };
  }
}

function keyString(key: unknown): string | undefined {
  if (isScalar(key)) return String(key.value);
  if (typeof key === 'string' || typeof key === 'number') return String(key);
  return undefined;
}

/** `file:line:column: path: message` — the one format every config problem is printed in. */
export function formatProblem(p: ConfigProblem): string {
  const where = p.line > 0 ? `${p.file}:${p.line}:${p.column}` : p.file;
  return p.path ? `${where}: ${p.path}: ${p.message}` : `${where}: ${p.message}`;
}
