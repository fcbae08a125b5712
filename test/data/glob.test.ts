// Corpus globs: `*`, `?`, `**`, `[..]`, `{a,b}`; files only, sorted; dot-files only by a dot pattern.
import { describe, expect, it, afterAll } from 'vitest';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { expandGlob } from '../../src/data/glob.js';
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
