// One writer per run folder: `<folder>/.v4tune.lock` holds the writer's pid, host, command and
// start time. A second process is refused naming the holder; a lock whose process is gone (same
// host) is stale: it is reported and taken over. Locks are re-entrant within one process
// (`run` holds the run folder's lock while its train stage takes it again) and released when
// the process exits, Ctrl-C included.
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, rmdirSync, rmSync, writeSync } from 'node:fs';
import { hostname } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { InputError } from './errors.js';
import { pidAlive } from './fsutil.js';

export const LOCK_FILE = '.v4tune.lock';

interface LockInfo {
  pid: number;
  host: string;
  command: string;
  started: string;
}

const held = new Map<string, number>();
const createdDirs = new Set<string>();
let exitHookInstalled = false;

function readLock(path: string): LockInfo | null {
  try {
    const v = JSON.parse(readFileSync(path, 'utf8')) as Partial<LockInfo>;
    if (typeof v.pid !== 'number' || typeof v.host !== 'string') return null;
    return { pid: v.pid, host: v.host, command: String(v.command ?? '?'), started: String(v.started ?? '?') };
  } catch {
    return null;
  }
}

function createLock(path: string, what: string): boolean {
  let fd: number;
  try {
    fd = openSync(path, 'wx');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw e;
  }
  const info: LockInfo = { pid: process.pid, host: hostname(), command: what, started: new Date().toISOString() };
  writeSync(fd, `${JSON.stringify(info)}\n`);
  closeSync(fd);
  return true;
}

/** A held lock; release() is idempotent. */
export interface RunLock {
  readonly path: string;
  release(): void;
}

/**
 * Lock `dir` for `what` (e.g. "v4tune train recipe.yaml"). Throws InputError (exit 2) naming
 * the holder when another live process holds it; `note` hears about a stale lock taken over.
 */
export function lockRunFolder(dir: string, what: string, note?: (line: string) => void): RunLock {
  const path = resolve(join(dir, LOCK_FILE));
  // a run refused before it wrote anything leaves no folder behind
  if (!existsSync(dir) && !held.has(path)) {
    mkdirSync(dir, { recursive: true });
    createdDirs.add(path);
  }
  const count = held.get(path);
  if (count !== undefined) {
    held.set(path, count + 1);
    return releaser(path);
  }
  for (let attempt = 0; !createLock(path, what); attempt++) {
    const holder = readLock(path);
    if (attempt >= 2) throw new InputError(`${path}: cannot take the run folder's lock (it keeps changing hands)`);
    if (holder === null) {
      // unreadable: a writer between create and write, or a broken file; give it a moment once
      if (attempt === 0) { Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 100); continue; }
      rmSync(path, { force: true });
      (note ?? warn)(`${path}: removed an unreadable lock file`);
      continue;
    }
    if (holder.host !== hostname()) {
      throw new InputError(`${dir}: in use by ${holder.command} (pid ${holder.pid} on host ${holder.host}, since ${holder.started}); if it is not running, delete ${path}`);
    }
    if (holder.pid !== process.pid && pidAlive(holder.pid)) {
      throw new InputError(`${dir}: in use by ${holder.command} (pid ${holder.pid}, since ${holder.started}); wait for it to finish, or stop it`);
    }
    rmSync(path, { force: true });
    (note ?? warn)(`${path}: stale lock of ${holder.command} (pid ${holder.pid}, since ${holder.started}, no longer running) taken over`);
  }
  held.set(path, 1);
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    process.on('exit', () => {
      for (const p of held.keys()) rmSync(p, { force: true });
    });
  }
  return releaser(path);
}

function releaser(path: string): RunLock {
  let done = false;
  return {
    path,
    release: () => {
      if (done) return;
      done = true;
      const n = held.get(path) ?? 0;
      if (n > 1) {
        held.set(path, n - 1);
        return;
      }
      held.delete(path);
      rmSync(path, { force: true });
      if (createdDirs.delete(path)) {
        const dir = dirname(path);
        if (readdirSync(dir).length === 0) rmdirSync(dir);
      }
    },
  };
}

/** Run `fn` holding `dir`'s lock. */
export async function withRunLock<T>(dir: string, what: string, fn: () => Promise<T>, note?: (line: string) => void): Promise<T> {
  const lock = lockRunFolder(dir, what, note);
  try {
    return await fn();
  } finally {
    lock.release();
  }
}

function warn(line: string): void {
  process.stderr.write(`warning: ${line}\n`);
}
