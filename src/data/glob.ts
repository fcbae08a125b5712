// File globs for corpus sources (Node 20 has no fs.glob): `*` and `?` within one path component,
// `**` for any number of folders, `[abc]` classes and `{a,b}` alternatives. Names starting with
// a dot are matched only by a component that starts with a dot.
import { readdirSync, statSync } from 'node:fs';
import { join, sep } from 'node:path';

const MAGIC = /[*?[{]/;

export function hasGlobMagic(pattern: string): boolean {
  return MAGIC.test(pattern);
}

/** The regular expression of one path component of a glob. */
function componentRegex(part: string): RegExp {
  let re = '';
  let braces = 0;
  for (let i = 0; i < part.length; i++) {
    const c = part[i]!;
    if (c === '*') re += '[^/]*';
    else if (c === '?') re += '[^/]';
    else if (c === '[') {
      const close = part.indexOf(']', i + 1);
      if (close < 0) { re += '\\['; continue; }
      let body = part.slice(i + 1, close);
      if (body.startsWith('!')) body = `^${body.slice(1)}`;
      re += `[${body.replace(/\\/g, '\\\\')}]`;
      i = close;
    } else if (c === '{') { re += '(?:'; braces++; }
    else if (c === '}' && braces > 0) { re += ')'; braces--; }
    else if (c === ',' && braces > 0) re += '|';
    else re += c.replace(/[.+^$()|\\]/g, '\\$&');
  }
  return new RegExp(`^${re}$`);
}

/** Files (not folders) matching an absolute glob, sorted; a pattern without magic is returned as is. */
export function expandGlob(pattern: string): string[] {
  if (!hasGlobMagic(pattern)) return [pattern];
  const parts = pattern.split(/[\\/]/);
  const first = parts.findIndex((p) => MAGIC.test(p));
  const root = parts.slice(0, first).join(sep) || sep;
  const out = new Set<string>();
  walk(root, parts.slice(first), out);
  return [...out].sort();
}

function isDir(path: string): boolean {
  try { return statSync(path).isDirectory(); } catch { return false; }
}

function isFile(path: string): boolean {
  try { return statSync(path).isFile(); } catch { return false; }
}

function list(dir: string): string[] {
  try { return readdirSync(dir).sort(); } catch { return []; }
}

function walk(dir: string, rest: string[], out: Set<string>): void {
  if (rest.length === 0) {
    if (isFile(dir)) out.add(dir);
    return;
  }
  const [head, ...tail] = rest as [string, ...string[]];
  if (head === '**') {
    walk(dir, tail, out);
    for (const name of list(dir)) {
      if (name.startsWith('.')) continue;
      const child = join(dir, name);
      if (isDir(child)) walk(child, rest, out);
    }
    return;
  }
  if (!MAGIC.test(head)) {
    walk(join(dir, head), tail, out);
    return;
  }
  const re = componentRegex(head);
  for (const name of list(dir)) {
    if (name.startsWith('.') && !head.startsWith('.')) continue;
    if (re.test(name)) walk(join(dir, name), tail, out);
  }
}
