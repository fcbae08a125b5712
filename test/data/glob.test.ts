// Corpus globs: `*`, `?`, `**`, `[..]`, `{a,b}`; files only, sorted; dot-files only by a dot pattern.
import { describe, expect, it, afterAll } from 'vitest';
import { mkdirSync, symlinkSync } from 'node:fs';
import { join } from 'node:path';
import { expandGlob } from '../../src/data/glob.js';
import { InputError } from '../../src/errors.js';
import { tempDir, write } from './helpers.js';

const tmp = tempDir();
afterAll(() => tmp.cleanup());
for (const f of ['a.txt', 'b.txt', 'c.jsonl', '.hidden.txt', 'sub/d.txt', 'sub/deep/e.txt', 'sub/deep/f.md', 'x1.txt', 'x22.txt']) write(join(tmp.dir, f), f);
mkdirSync(join(tmp.dir, 'folder.txt'));
const rel = (ps: string[]): string[] => ps.map((p) => p.slice(tmp.dir.length + 1));

describe('expandGlob', () => {
  it('matches * within one folder, files only, sorted, without dot-files', () => {
    expect(rel(expandGlob(join(tmp.dir, '*.txt')))).toEqual(['a.txt', 'b.txt', 'x1.txt', 'x22.txt']);
  });
  it('matches ** across any depth, including none', () => {
    expect(rel(expandGlob(join(tmp.dir, '**', '*.txt')))).toEqual(['a.txt', 'b.txt', 'sub/d.txt', 'sub/deep/e.txt', 'x1.txt', 'x22.txt']);
  });
  it('matches ?, classes and alternatives', () => {
    expect(rel(expandGlob(join(tmp.dir, 'x?.txt')))).toEqual(['x1.txt']);
    expect(rel(expandGlob(join(tmp.dir, '[ab].txt')))).toEqual(['a.txt', 'b.txt']);
    expect(rel(expandGlob(join(tmp.dir, '*.{jsonl,md}')))).toEqual(['c.jsonl']);
    expect(rel(expandGlob(join(tmp.dir, 'sub', '*', '*.{txt,md}')))).toEqual(['sub/deep/e.txt', 'sub/deep/f.md']);
  });
  it('matches dot-files only with a dot pattern, and returns a plain path as is', () => {
    expect(rel(expandGlob(join(tmp.dir, '.*.txt')))).toEqual(['.hidden.txt']);
    expect(expandGlob(join(tmp.dir, 'missing.txt'))).toEqual([join(tmp.dir, 'missing.txt')]);
    expect(expandGlob(join(tmp.dir, 'nothing', '*.txt'))).toEqual([]);
  });
});

describe('expandGlob safety', () => {
  it('a symbolic-link cycle under ** ends, each folder walked once, every file found once', () => {
    const root = join(tmp.dir, 'cyc');
    write(join(root, 'a', 'x.txt'), 'x');
    write(join(root, 'b', 'y.txt'), 'y');
    symlinkSync(join(root, 'b'), join(root, 'a', 'to-b'));
    symlinkSync(join(root, 'a'), join(root, 'b', 'to-a'));
    symlinkSync(root, join(root, 'a', 'loop'));
    const found = rel(expandGlob(join(root, '**', '*.txt')));
    expect(found.map((p) => p.split('/').at(-1))).toEqual(expect.arrayContaining(['x.txt', 'y.txt']));
    // each folder is entered once, through the first path that reaches it: each file found once
    expect(found).toHaveLength(2);
  });

  it('stays inside the folder the glob names: a link to a folder or file outside it is not followed', () => {
    const inside = join(tmp.dir, 'jail');
    const outside = join(tmp.dir, 'outside');
    write(join(inside, 'ok.txt'), 'ok');
    write(join(outside, 'secret.txt'), 's');
    symlinkSync(outside, join(inside, 'escape'));
    symlinkSync(join(outside, 'secret.txt'), join(inside, 'secret-link.txt'));
    expect(rel(expandGlob(join(inside, '**', '*.txt')))).toEqual(['jail/ok.txt']);
    expect(rel(expandGlob(join(inside, '*.txt')))).toEqual(['jail/ok.txt']);
  });

  it('refuses globs rooted at /, /proc, /sys or /dev, naming the pattern', () => {
    for (const [pattern, what] of [['/**/*.txt', 'rooted at /'], ['/*.txt', 'rooted at /'], ['/proc/**/status', 'rooted in /proc'], ['/sys/*', 'rooted in /sys'], ['/dev/*', 'rooted in /dev']] as const) {
      let err: unknown = null;
      try { expandGlob(pattern); } catch (e) { err = e; }
      expect(err).toBeInstanceOf(InputError);
      expect((err as Error).message).toContain(`${pattern}: a glob ${what}`);
    }
  });
});
