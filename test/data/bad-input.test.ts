// Bad input to prepare: each case ends with one InputError (exit 2) naming the file (and the
// line and field where there is one), and leaves no output and no temporary folder behind.
import { describe, expect, it, beforeAll, afterAll, vi } from 'vitest';
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, symlinkSync, chmodSync } from 'node:fs';
import { join } from 'node:path';
import { prepareDataset, type PrepareOptions } from '../../src/data/prepare.js';
import { InputError } from '../../src/errors.js';
import { embeddedTokenizerFile, prepareOptions, tempDir, write } from './helpers.js';
import { tinySentencePieceModel } from './sp-model.js';

vi.setConfig({ testTimeout: 60_000, hookTimeout: 60_000 });

const tmp = tempDir();
let tokPath: string;
beforeAll(() => { tokPath = embeddedTokenizerFile(join(tmp.dir, 'tok')); });
afterAll(() => tmp.cleanup());

let n = 0;
/** A fresh case folder with the given files; returns it and its (not yet existing) output path. */
function caseDir(files: Record<string, string | Uint8Array>): { dir: string; out: string } {
  const dir = join(tmp.dir, `case${n++}`);
  mkdirSync(dir, { recursive: true });
  for (const [name, content] of Object.entries(files)) write(join(dir, name), content);
  return { dir, out: join(dir, 'out', 'data') };
}

const src = (path: string, format: PrepareOptions['sources'][number]['format'] = 'auto', text_field = 'text'): PrepareOptions['sources'][number] => ({ path, format, text_field });

/** Run prepare, expect an InputError matching every pattern, and check nothing was left behind. */
async function expectInputError(opts: PrepareOptions, ...patterns: (string | RegExp)[]): Promise<void> {
  const err = await prepareDataset(opts).then(() => null, (e: unknown) => e);
  expect(err).toBeInstanceOf(InputError);
  expect((err as InputError).exitCode).toBe(2);
  for (const p of patterns) expect((err as Error).message).toMatch(p);
  expect((err as Error).message.split('\n')).toHaveLength(1);
  if (existsSync(opts.output) && statSync(opts.output).isDirectory()) {
    expect(readdirSync(opts.output).includes('manifest.json')).toBe(false);
  }
  const parent = join(opts.output, '..');
  if (existsSync(parent)) expect(readdirSync(parent).filter((f) => f.startsWith('.tmp-'))).toEqual([]);
}

const chat = (messages: unknown): string => `${JSON.stringify({ messages })}\n`;
const ok = { role: 'assistant', content: 'ok' };

describe('prepare refuses bad input', () => {
  it('a missing corpus file', async () => {
    const { dir, out } = caseDir({});
    await expectInputError(prepareOptions(tokPath, out, { sources: [src(join(dir, 'nope.txt'))] }), `${join(dir, 'nope.txt')}: no such corpus file`);
  });

  it('an unreadable corpus file: a folder, a dangling link', async () => {
    const { dir, out } = caseDir({ 'sub/x.txt': 'x' });
    await expectInputError(prepareOptions(tokPath, out, { sources: [src(join(dir, 'sub'))] }), `${join(dir, 'sub')}: is a folder`);
    symlinkSync(join(dir, 'gone.txt'), join(dir, 'link.txt'));
    await expectInputError(prepareOptions(tokPath, out, { sources: [src(join(dir, 'link.txt'))] }), `${join(dir, 'link.txt')}: no such corpus file`);
  });

  it.skipIf(process.getuid?.() === 0)('a corpus file without read permission', async () => {
    const { dir, out } = caseDir({ 'secret.txt': 'x' });
    chmodSync(join(dir, 'secret.txt'), 0o000);
    await expectInputError(prepareOptions(tokPath, out, { sources: [src(join(dir, 'secret.txt'))] }), `${join(dir, 'secret.txt')}: cannot read the corpus file (EACCES)`);
  });

  it('a glob that matches nothing', async () => {
    const { dir, out } = caseDir({ 'a.txt': 'text' });
    await expectInputError(prepareOptions(tokPath, out, { sources: [src(join(dir, 'a.txt')), src(join(dir, '**', '*.md'))] }), `${join(dir, '**', '*.md')}: the glob matches no files`);
  });

  it('malformed JSONL, reported as file:line', async () => {
    const { dir, out } = caseDir({ 'd.jsonl': '{"text": "fine"}\n\n{"text": "broken\n' });
    await expectInputError(prepareOptions(tokPath, out, { sources: [src(join(dir, 'd.jsonl'))] }), `${join(dir, 'd.jsonl')}:3: malformed JSONL`);
  });

  it('a JSONL record without the text field', async () => {
    const { dir, out } = caseDir({ 'd.jsonl': '{"text": "fine"}\n{"body": "x"}\n' });
    await expectInputError(prepareOptions(tokPath, out, { sources: [src(join(dir, 'd.jsonl'), 'jsonl')] }), `${join(dir, 'd.jsonl')}:2: field "text" must be a string`);
  });

  it('a chat record with an unknown role', async () => {
    const { dir, out } = caseDir({ 'c.jsonl': chat([{ role: 'user', content: 'q' }, ok]) + chat([{ role: 'user', content: 'q' }, { role: 'tool', content: 'x' }, ok]) });
    await expectInputError(prepareOptions(tokPath, out, { sources: [src(join(dir, 'c.jsonl'))] }), `${join(dir, 'c.jsonl')}:2: messages[1].role "tool" is not one of system, user, assistant`);
  });

  it('a chat record with no assistant turn', async () => {
    const { dir, out } = caseDir({ 'c.jsonl': chat([{ role: 'system', content: 's' }, { role: 'user', content: 'q' }]) });
    await expectInputError(prepareOptions(tokPath, out, { sources: [src(join(dir, 'c.jsonl'), 'chat')] }), `${join(dir, 'c.jsonl')}:1: the conversation has no assistant turn`);
  });

  it('chat sources with a tokenizer that lacks the V4 chat tokens', async () => {
    const { dir, out } = caseDir({ 'c.jsonl': chat([{ role: 'user', content: 'q' }, ok]), 'sp.model': tinySentencePieceModel() });
    await expectInputError(prepareOptions(join(dir, 'sp.model'), out, { sources: [src(join(dir, 'c.jsonl'))] }), `${join(dir, 'c.jsonl')}: chat sources need`, '<｜Assistant｜>');
  });

  it('invalid UTF-8, reported with the byte offset', async () => {
    const bytes = Buffer.concat([Buffer.from('line one\nnaïve '), Buffer.from([0xc3, 0x28]), Buffer.from(' end\n')]);
    const { dir, out } = caseDir({ 'bad.txt': bytes });
    await expectInputError(prepareOptions(tokPath, out, { sources: [src(join(dir, 'bad.txt'))] }), `${join(dir, 'bad.txt')}: not valid UTF-8 at byte 16 (line 2)`);
  });

  it('an empty corpus', async () => {
    const { dir, out } = caseDir({ 'a.txt': '', 'b.txt': '  \n\n', 'c.jsonl': '\n' });
    await expectInputError(prepareOptions(tokPath, out, { sources: [src(join(dir, '*'))] }), 'the corpus is empty', join(dir, 'a.txt'));
  });

  it('a tokenizer file that is not a tokenizer', async () => {
    const { dir, out } = caseDir({ 'a.txt': 'text', 'tokenizer.json': '{"hello": 1}' });
    await expectInputError(prepareOptions(join(dir, 'tokenizer.json'), out, { sources: [src(join(dir, 'a.txt'))] }), `${join(dir, 'tokenizer.json')}: not a tokenizer`);
  });

  it('a missing tokenizer file', async () => {
    const { dir, out } = caseDir({ 'a.txt': 'text' });
    await expectInputError(prepareOptions(join(dir, 'tokenizer.json'), out, { sources: [src(join(dir, 'a.txt'))] }), `${join(dir, 'tokenizer.json')}: no such tokenizer file`);
  });

  it('seq_len < 2', async () => {
    const { dir, out } = caseDir({ 'a.txt': 'text' });
    await expectInputError(prepareOptions(tokPath, out, { sources: [src(join(dir, 'a.txt'))], seq_len: 1 }), 'data.seq_len must be an integer of at least 2 (got 1)');
  });

  it('an output path that is a file', async () => {
    const { dir } = caseDir({ 'a.txt': 'text', 'taken': 'a file' });
    await expectInputError(prepareOptions(tokPath, join(dir, 'taken'), { sources: [src(join(dir, 'a.txt'))] }), `${join(dir, 'taken')}: output path exists and is a file`);
    expect(readFileSync(join(dir, 'taken'), 'utf8')).toBe('a file');
  });

  it('a failure after a good earlier build leaves that build in place, untouched', async () => {
    const { dir, out } = caseDir({ 'a.txt': 'text' });
    await prepareDataset(prepareOptions(tokPath, out, { sources: [src(join(dir, 'a.txt'))] }));
    write(join(dir, 'a.txt'), Buffer.from([0xff]));
    const err = await prepareDataset(prepareOptions(tokPath, out, { sources: [src(join(dir, 'a.txt'))] })).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(InputError);
    expect(readdirSync(out)).toContain('manifest.json');
    expect(readdirSync(join(out, '..')).filter((f) => f.startsWith('.tmp-'))).toEqual([]);
  });
});
