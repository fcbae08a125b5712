// Writes that never leave a half-written file or folder behind: write under a temporary name
// beside the target, then rename over it.
import { mkdirSync, readFileSync, renameSync, rmSync, writeFileSync, existsSync, statSync } from 'node:fs';
import { dirname, basename, join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { InputError } from './errors.js';

export function tempNameBeside(target: string): string {
  return join(dirname(target), `.tmp-${basename(target)}-${process.pid}-${randomBytes(4).toString('hex')}`);
}

/** Write a file atomically (temp file in the same folder, then rename). */
export function writeFileAtomic(target: string, data: string | Uint8Array): void {
  mkdirSync(dirname(target), { recursive: true });
  const tmp = tempNameBeside(target);
  try {
    writeFileSync(tmp, data);
    renameSync(tmp, target);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw e;
  }
}

/**
 * Build a whole output folder atomically: `fill` writes into a fresh temporary folder beside
 * `target`; on success the old target (if any) is replaced by it, on failure it is removed.
 */
export async function writeDirAtomic<T>(target: string, fill: (tmpDir: string) => Promise<T> | T): Promise<T> {
  if (existsSync(target) && !statSync(target).isDirectory()) {
    throw new InputError(`${target}: output path exists and is a file, not a folder`);
  }
  mkdirSync(dirname(target), { recursive: true });
  const tmp = tempNameBeside(target);
  mkdirSync(tmp);
  try {
    const result = await fill(tmp);
    const old = existsSync(target) ? tempNameBeside(target) : null;
    if (old) renameSync(target, old);
    renameSync(tmp, target);
    if (old) rmSync(old, { recursive: true, force: true });
    return result;
  } catch (e) {
    rmSync(tmp, { recursive: true, force: true });
    throw e;
  }
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
