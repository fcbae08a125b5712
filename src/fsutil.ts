// Writes that never lose a user's data:
// - a file or folder is written under a temporary name beside the target, then renamed over it,
//   so nothing is ever half-written;
// - a folder is replaced only when it holds v4tune's marker for that kind of output (or is empty,
//   or the caller passes the user's --overwrite), never when it is or contains an input;
// - temporaries are removed when the process exits (Ctrl-C included), and what a killed run
//   left behind is removed by the next write of the same target (or reported, when another live
//   process or another host owns it);
// - two processes never write one target at once: a live writer's temporary is the lock.
import { existsSync, mkdirSync, readdirSync, readFileSync, realpathSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { basename, dirname, join, relative, resolve, isAbsolute } from 'node:path';
import { randomBytes } from 'node:crypto';
import { InputError, V4tuneError } from './errors.js';

/** The marker file every output folder v4tune writes carries (its kind and writer). */
export const OUTPUT_MARKER = '.v4tune-output.json';

/** What an output folder holds; a folder is replaced only by an output of the same kind. */
export type OutputKind = 'model' | 'merged' | 'quantized' | 'dataset' | 'adapter' | 'checkpoint';

export interface OutputClaim {
  kind: OutputKind;
  /** the user asked to replace a folder v4tune did not write (`--overwrite`) */
  overwrite?: boolean;
  /** paths this run reads: the output may be neither one of them nor a folder containing one */
  inputs?: readonly string[];
  /** the flag that allows replacing a foreign folder, named in the refusal (default --overwrite) */
  flag?: string;
  /** where notes go (a leftover temporary removed); default stderr */
  note?: (line: string) => void;
}

const HOST = hostname().replace(/[^A-Za-z0-9.]/g, '_') || 'host';
const TEMP_RE = /^\.tmp-(.*)-(\d+)@([A-Za-z0-9._]+)-([0-9a-f]{8})$/;
const liveTemps = new Set<string>();
let exitHookInstalled = false;

/** Remove this process's temporaries when it exits, however it exits short of SIGKILL. */
function trackTemp(path: string): void {
  liveTemps.add(path);
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const t of liveTemps) rmSync(t, { recursive: true, force: true });
  });
}

function untrackTemp(path: string): void {
  liveTemps.delete(path);
}

/** True when process `pid` is alive on this host. */
export function pidAlive(pid: number): boolean {
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * `.tmp-<name>-<pid>@<host>-<hex>`: a temporary for `target`, in its folder. It is removed when
 * the process exits unless it was renamed away before (removing a name that is gone is a no-op).
 */
export function tempNameBeside(target: string): string {
  const tmp = join(dirname(target), `.tmp-${basename(target)}-${process.pid}@${HOST}-${randomBytes(4).toString('hex')}`);
  trackTemp(tmp);
  return tmp;
}

/** The temporaries of earlier writes of `target` (by any process) in its folder. */
function tempsOf(target: string): { path: string; pid: number; host: string }[] {
  const dir = dirname(target);
  if (!existsSync(dir)) return [];
  const out: { path: string; pid: number; host: string }[] = [];
  for (const name of readdirSync(dir)) {
    const m = TEMP_RE.exec(name);
    if (m && m[1] === basename(target)) out.push({ path: join(dir, name), pid: Number(m[2]), host: m[3]! });
  }
  return out;
}

/**
 * Before writing `target`: remove what killed writers of it left (on this host), and refuse
 * while a live process (or one on another host, which cannot be checked) is writing it.
 */
export function sweepTemps(target: string, note?: (line: string) => void): void {
  for (const t of tempsOf(target)) {
    if (liveTemps.has(t.path)) continue;
    if (t.host !== HOST) {
      throw new InputError(`${target}: another writer on host ${t.host} (pid ${t.pid}) left ${t.path}; if no v4tune runs there, delete it and run again`);
    }
    if (pidAlive(t.pid)) {
      throw new InputError(`${target}: being written by another v4tune process (pid ${t.pid}, temporary ${basename(t.path)}); wait for it to finish`);
    }
    rmSync(t.path, { recursive: true, force: true });
    (note ?? warnLine)(`removed ${t.path}, left by an interrupted v4tune run (pid ${t.pid})`);
  }
}

function warnLine(line: string): void {
  process.stderr.write(`warning: ${line}\n`);
}

/** Write a file atomically (temp file in the same folder, then rename). */
export function writeFileAtomic(target: string, data: string | Uint8Array): void {
  mkdirSync(dirname(target), { recursive: true });
  if (existsSync(target) && statSync(target).isDirectory()) throw new InputError(`${target}: is a folder; v4tune writes a file there`);
  sweepTemps(target);
  const tmp = tempNameBeside(target);
  try {
    writeFileSync(tmp, data);
    renameSync(tmp, target);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw withPath(e, target);
  } finally {
    untrackTemp(tmp);
  }
}

function real(p: string): string {
  try {
    return realpathSync(p);
  } catch {
    return resolve(p);
  }
}

/** True when `inner` is `outer` or lies inside it (symlinks resolved). */
export function isSameOrInside(inner: string, outer: string): boolean {
  const rel = relative(real(outer), real(inner));
  return rel === '' || (!rel.startsWith('..') && !isAbsolute(rel));
}

/** The kind recorded in a folder's marker, or null when it has none (or it is unreadable). */
export function outputKind(dir: string): OutputKind | null {
  try {
    const m = JSON.parse(readFileSync(join(dir, OUTPUT_MARKER), 'utf8')) as { kind?: unknown };
    return typeof m.kind === 'string' ? (m.kind as OutputKind) : null;
  } catch {
    return null;
  }
}

/**
 * May this run replace `target`? Refused (InputError, exit 2) when the target is or contains an
 * input, or exists with content v4tune did not write as this kind of output and the user did
 * not pass the overwrite flag. Call it before long work, and writeDirAtomic checks it again.
 */
export function claimOutput(target: string, claim: OutputClaim): void {
  for (const input of claim.inputs ?? []) {
    if (existsSync(input) && isSameOrInside(input, target)) {
      throw new InputError(`${target}: the output folder ${real(input) === real(target) ? 'is' : 'contains'} ${input}, an input of this run; choose another output folder`);
    }
  }
  if (!existsSync(target)) return;
  if (!statSync(target).isDirectory()) throw new InputError(`${target}: output path exists and is a file, not a folder`);
  const entries = readdirSync(target);
  if (entries.length === 0) return;
  const kind = outputKind(target);
  if (kind === claim.kind || claim.overwrite) return;
  const shown = entries.slice(0, 3).join(', ') + (entries.length > 3 ? ', …' : '');
  const what = kind === null ? 'was not written by v4tune' : `holds a v4tune ${kind}, not a ${claim.kind}`;
  throw new InputError(`${target}: folder exists and ${what} (${entries.length} entries: ${shown}); v4tune will not replace it — choose another output folder, or pass ${claim.flag ?? '--overwrite'} to replace it`);
}

/**
 * Build a whole output folder atomically: `fill` writes into a fresh temporary folder beside
 * `target`; on success the marker is added and the old target (if any) is replaced by it, on
 * failure it is removed. The target is claimed first (see claimOutput).
 */
export async function writeDirAtomic<T>(target: string, fill: (tmpDir: string) => Promise<T> | T, claim: OutputClaim): Promise<T> {
  claimOutput(target, claim);
  mkdirSync(dirname(target), { recursive: true });
  sweepTemps(target, claim.note);
  const tmp = tempNameBeside(target);
  mkdirSync(tmp);
  try {
    const result = await fill(tmp);
    writeFileSync(join(tmp, OUTPUT_MARKER), `${JSON.stringify({ kind: claim.kind, writer: 'v4tune' })}\n`);
    claimOutput(target, claim);
    const old = existsSync(target) ? tempNameBeside(target) : null;
    if (old) renameSync(target, old);
    renameSync(tmp, target);
    if (old) {
      rmSync(old, { recursive: true, force: true });
      untrackTemp(old);
    }
    return result;
  } catch (e) {
    rmSync(tmp, { recursive: true, force: true });
    throw withPath(e, target);
  } finally {
    untrackTemp(tmp);
  }
}

const ERRNO_WORDS: Record<string, string> = {
  ENOSPC: 'no space left on the device',
  EDQUOT: 'disk quota exceeded',
  EROFS: 'the file system is read-only',
  EACCES: 'permission denied',
  EPERM: 'operation not permitted',
  EISDIR: 'is a folder',
  ENOTDIR: 'a part of the path is not a folder',
  ENOENT: 'no such file or folder',
  EEXIST: 'already exists',
  EMFILE: 'too many open files',
  EIO: 'input/output error',
};

/** An fs error as one V4tuneError naming the path (its own, else `where`); others pass through. */
export function withPath(e: unknown, where: string): unknown {
  const err = e as NodeJS.ErrnoException;
  if (e instanceof V4tuneError || !(e instanceof Error) || typeof err.code !== 'string' || !(err.code in ERRNO_WORDS)) return e;
  const path = typeof err.path === 'string' ? err.path : where;
  return new V4tuneError(`${path}: cannot write: ${ERRNO_WORDS[err.code]} (${err.code})`);
}

/** A JSON file's value; unreadable or malformed JSON is one InputError naming the file. */
export function readJsonFile(path: string): unknown {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new InputError(`${path}: cannot read (${(e as NodeJS.ErrnoException).code ?? String(e)})`);
  }
  try {
    return JSON.parse(text) as unknown;
  } catch (e) {
    throw new InputError(`${path}: not valid JSON (${(e as Error).message})`);
  }
}
