// File globs for corpus sources (Node 20 has no fs.glob): `*` and `?` within one path component,
// `**` for any number of folders, `[abc]` classes and `{a,b}` alternatives. Names starting with
// a dot are matched only by a component that starts with a dot.
// Safety: the walk starts at the glob's root (the folders before its first wildcard), which must
// not be `/` nor lie in /proc, /sys or /dev; it never enters a folder twice (symbolic-link cycles
// end), and a link that leads outside the root is not followed.
import { readdirSync, realpathSync, statSync } from 'node:fs';
import { join, resolve, sep } from 'node:path';
import { InputError } from '../errors.js';

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

const REFUSED_ROOTS = ['/proc', '/sys', '/dev'];

function inside(path: string, root: string): boolean {
  return path === root || path.startsWith(root.endsWith(sep) ? root : root + sep);
}

/** Refuse a glob root that is `/` or lies in a kernel file system. */
function checkRoot(pattern: string, root: string): string {
  let real = resolve(root);
  try { real = realpathSync(real); } catch { /* a missing root matches nothing */ }
  for (const p of [resolve(root), real]) {
    if (p === sep) throw new InputError(`${pattern}: a glob rooted at / is refused (it would walk the whole disk); start it at the corpus folder`);
    const k = REFUSED_ROOTS.find((r) => inside(p, r));
    if (k) throw new InputError(`${pattern}: a glob rooted in ${k} is refused (a kernel file system, not a corpus)`);
  }
  return real;
}

interface Walk {
  /** The root's real path: links leading outside it are not followed. */
  root: string;
  /** Folders entered by `**`, by device, inode and pattern position. */
  visited: Set<string>;
  out: Set<string>;
}

/** Files (not folders) matching an absolute glob, sorted; a pattern without magic is returned as is. */
export function expandGlob(pattern: string): string[] {
  if (!hasGlobMagic(pattern)) return [pattern];
  const parts = pattern.split(/[\\/]/);
  const first = parts.findIndex((p) => MAGIC.test(p));
  const root = parts.slice(0, first).join(sep) || sep;
  const w: Walk = { root: checkRoot(pattern, root), visited: new Set(), out: new Set() };
  walk(w, root, parts.slice(first));
  return [...w.out].sort();
}

/** Whether `path` may be entered or taken: its real path lies in the root. */
function withinRoot(w: Walk, path: string): boolean {
  try { return inside(realpathSync(path), w.root); } catch { return false; }
}

/** Mark a folder entered at a pattern position; false when it was before (a link cycle or a second link to it). */
function enter(w: Walk, dir: string, at: number): boolean {
  let key: string;
  try { const st = statSync(dir); key = `${st.dev}:${st.ino}:${at}`; } catch { return false; }
  if (w.visited.has(key)) return false;
  w.visited.add(key);
  return true;
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

function walk(w: Walk, dir: string, rest: string[]): void {
  if (rest.length === 0) {
    if (isFile(dir) && withinRoot(w, dir)) w.out.add(dir);
    return;
  }
  const [head, ...tail] = rest as [string, ...string[]];
  if (head === '**') {
    if (!withinRoot(w, dir) || !enter(w, dir, rest.length)) return;
    walk(w, dir, tail);
    for (const name of list(dir)) {
      if (name.startsWith('.')) continue;
      const child = join(dir, name);
      if (isDir(child)) walk(w, child, rest);
    }
    return;
  }
  if (!MAGIC.test(head)) {
    walk(w, join(dir, head), tail);
    return;
  }
  if (!withinRoot(w, dir)) return;
  const re = componentRegex(head);
  for (const name of list(dir)) {
    if (name.startsWith('.') && !head.startsWith('.')) continue;
    if (re.test(name)) walk(w, join(dir, name), tail);
  }
}
