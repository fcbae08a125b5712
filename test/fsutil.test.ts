// The write rules every stage shares (src/fsutil.ts, src/lock.ts): which folders an output may
// replace, what is left of an interrupted write and who may clean it, fs errors that name their
// path, and the run-folder lock.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { InputError, V4tuneError } from '../src/errors.js';
import { claimOutput, OUTPUT_MARKER, sweepTemps, withPath, writeDirAtomic, writeFileAtomic } from '../src/fsutil.js';
import { LOCK_FILE, lockRunFolder } from '../src/lock.js';

let dir: string;
let sleeper: ChildProcess;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'v4tune-fsutil-'));
  sleeper = spawn('sleep', ['60']);
});
afterAll(() => {
  sleeper.kill();
  rmSync(dir, { recursive: true, force: true });
});

const sub = (name: string): string => {
  const d = join(dir, name);
  mkdirSync(d, { recursive: true });
  return d;
};

describe('claimOutput: which folders an output may replace', () => {
  it('a missing or empty folder, or one holding the same kind of v4tune output', async () => {
    expect(() => claimOutput(join(dir, 'absent'), { kind: 'dataset' })).not.toThrow();
    expect(() => claimOutput(sub('empty'), { kind: 'dataset' })).not.toThrow();
    const own = join(dir, 'own');
    await writeDirAtomic(own, (t) => writeFileSync(join(t, 'manifest.json'), '{}'), { kind: 'dataset' });
    expect(readdirSync(own).sort()).toEqual([OUTPUT_MARKER, 'manifest.json']);
    expect(() => claimOutput(own, { kind: 'dataset' })).not.toThrow();
  });

  it('refuses a foreign folder or another kind of output unless overwrite, naming the folder and the flag', () => {
    const foreign = sub('foreign');
    writeFileSync(join(foreign, 'notes.txt'), 'x');
    expect(() => claimOutput(foreign, { kind: 'model' })).toThrow(InputError);
    expect(() => claimOutput(foreign, { kind: 'model', flag: '--out-overwrite' })).toThrow(`${foreign}: folder exists and was not written by v4tune (1 entries: notes.txt); v4tune will not replace it — choose another output folder, or pass --out-overwrite to replace it`);
    expect(() => claimOutput(foreign, { kind: 'model', overwrite: true })).not.toThrow();
    expect(() => claimOutput(join(dir, 'own'), { kind: 'merged' })).toThrow('holds a v4tune dataset, not a merged');
    writeFileSync(join(dir, 'a-file'), 'x');
    expect(() => claimOutput(join(dir, 'a-file'), { kind: 'model', overwrite: true })).toThrow('exists and is a file');
  });

  it('always refuses an output that is or contains an input, through symlinks too, even with overwrite', () => {
    const root = sub('io');
    const input = join(sub('io/corpus'), 'a.txt');
    writeFileSync(input, 'x');
    expect(() => claimOutput(root, { kind: 'dataset', overwrite: true, inputs: [input] })).toThrow('contains');
    expect(() => claimOutput(join(root, 'corpus'), { kind: 'dataset', overwrite: true, inputs: [join(root, 'corpus')] })).toThrow(' is ');
    symlinkSync(root, join(dir, 'io-link'));
    expect(() => claimOutput(join(dir, 'io-link'), { kind: 'dataset', overwrite: true, inputs: [input] })).toThrow('an input of this run');
    expect(() => claimOutput(join(root, 'out'), { kind: 'dataset', inputs: [input] })).not.toThrow();
  });

  it('a failed fill leaves neither the temporary nor a changed target', async () => {
    const t = join(dir, 'fails');
    await expect(writeDirAtomic(t, () => { throw new Error('disk on fire'); }, { kind: 'model' })).rejects.toThrow('disk on fire');
    expect(existsSync(t)).toBe(false);
    expect(readdirSync(dir).filter((n) => n.startsWith('.tmp-fails'))).toEqual([]);
  });
});

describe('temporaries of interrupted writes', () => {
  it('a dead writer\'s temporary is removed and reported; a live or foreign one stops the write naming it', () => {
    const parent = sub('temps');
    const target = join(parent, 'merged');
    const dead = join(parent, `.tmp-merged-999999@${hostname().replace(/[^A-Za-z0-9.]/g, '_')}-0123abcd`);
    mkdirSync(dead);
    const notes: string[] = [];
    sweepTemps(target, (l) => notes.push(l));
    expect(existsSync(dead)).toBe(false);
    expect(notes.join()).toContain('left by an interrupted v4tune run (pid 999999)');

    const live = join(parent, `.tmp-merged-${sleeper.pid}@${hostname().replace(/[^A-Za-z0-9.]/g, '_')}-0123abcd`);
    mkdirSync(live);
    expect(() => sweepTemps(target)).toThrow(`being written by another v4tune process (pid ${sleeper.pid}`);
    rmSync(live, { recursive: true });

    const other = join(parent, '.tmp-merged-12@elsewhere.example-0123abcd');
    mkdirSync(other);
    expect(() => sweepTemps(target)).toThrow('another writer on host elsewhere.example (pid 12)');
    rmSync(other, { recursive: true });
    // a temporary of another target with a similar name is not touched
    const cousin = join(parent, `.tmp-merged-2-999999@${hostname().replace(/[^A-Za-z0-9.]/g, '_')}-0123abcd`);
    mkdirSync(cousin);
    sweepTemps(target, () => {});
    expect(existsSync(cousin)).toBe(true);
  });
});

describe('fs errors name their path', () => {
  it('ENOSPC, EROFS, EISDIR become one V4tuneError naming the path; other errors pass through', () => {
    const err = (code: string, path?: string) => Object.assign(new Error(`${code}: oops`), { code, path });
    const e = withPath(err('ENOSPC', '/data/x.arrow'), '/data') as V4tuneError;
    expect(e).toBeInstanceOf(V4tuneError);
    expect(e.message).toBe('/data/x.arrow: cannot write: no space left on the device (ENOSPC)');
    expect((withPath(err('EROFS'), '/ro/out') as Error).message).toBe('/ro/out: cannot write: the file system is read-only (EROFS)');
    const plain = new Error('plain');
    expect(withPath(plain, '/x')).toBe(plain);
    expect(() => writeFileAtomic(sub('a-folder'), 'x')).toThrow(`${join(dir, 'a-folder')}: is a folder`);
  });
});

describe('the run-folder lock', () => {
  it('is re-entrant in one process and released by the last holder', () => {
    const d = sub('lock1');
    const a = lockRunFolder(d, 'v4tune run r.yaml');
    const b = lockRunFolder(d, 'v4tune train r.yaml');
    b.release();
    expect(existsSync(join(d, LOCK_FILE))).toBe(true);
    a.release();
    a.release();
    expect(existsSync(join(d, LOCK_FILE))).toBe(false);
  });

  it('refuses a live holder or one on another host, naming it; takes over a dead or unreadable one', () => {
    const d = sub('lock2');
    const file = join(d, LOCK_FILE);
    writeFileSync(file, JSON.stringify({ pid: sleeper.pid, host: hostname(), command: 'v4tune train other.yaml', started: 'T' }));
    expect(() => lockRunFolder(d, 'v4tune train r.yaml')).toThrow(`${d}: in use by v4tune train other.yaml (pid ${sleeper.pid}, since T)`);
    writeFileSync(file, JSON.stringify({ pid: 1, host: 'gpu-node-7', command: 'v4tune run r.yaml', started: 'T' }));
    expect(() => lockRunFolder(d, 'v4tune train r.yaml')).toThrow(`on host gpu-node-7, since T); if it is not running, delete ${file}`);
    writeFileSync(file, 'garbage');
    const notes: string[] = [];
    const l = lockRunFolder(d, 'v4tune train r.yaml', (n) => notes.push(n));
    expect(notes.join()).toContain('removed an unreadable lock file');
    l.release();
  });
});
