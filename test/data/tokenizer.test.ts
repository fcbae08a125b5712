// Tokenizers: the embedded DeepSeek V4 tokenizer round-trips the bundled corpus, has V4's
// special tokens at their ids; SentencePiece .model files load; non-tokenizers are refused.
import { describe, expect, it, beforeAll, afterAll, vi } from 'vitest';
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { loadTokenizer, nestedRepetition, type TextTokenizer } from '../../src/data/tokenizer.js';
import { embeddedTokenizerJson, writeEmbeddedTokenizer } from '../../src/data/embedded-tokenizer.js';
import { InputError } from '../../src/errors.js';
import { BUNDLED, embeddedTokenizerFile, tempDir, write } from './helpers.js';
import { tinySentencePieceModel } from './sp-model.js';

vi.setConfig({ testTimeout: 60_000, hookTimeout: 60_000 });

const tmp = tempDir();
let tok: TextTokenizer;
beforeAll(async () => { tok = await loadTokenizer(embeddedTokenizerFile(tmp.dir)); });
afterAll(() => tmp.cleanup());

/** Every string of the bundled corpus: whole .txt files, `text` fields and chat message contents. */
function bundledStrings(): string[] {
  const out: string[] = [];
  for (const f of readdirSync(BUNDLED).sort()) {
    const text = readFileSync(join(BUNDLED, f), 'utf8');
    if (f.endsWith('.txt')) out.push(text);
    if (!f.endsWith('.jsonl')) continue;
    for (const line of text.split('\n')) {
      if (!line) continue;
      const rec = JSON.parse(line) as { text?: string; messages?: { content: string }[] };
      if (rec.text !== undefined) out.push(rec.text);
      for (const m of rec.messages ?? []) out.push(m.content);
    }
  }
  return out;
}

describe('embedded tokenizer', () => {
  it('decode(encode(x)) == x over every document and message of the bundled corpus', () => {
    const strings = bundledStrings();
    expect(strings.length).toBeGreaterThan(1000);
    let tokens = 0;
    for (const s of strings) {
      const ids = tok.encode(s);
      tokens += ids.length;
      if (tok.decode(ids) !== s) expect(tok.decode(ids)).toBe(s);
    }
    expect(tokens).toBeGreaterThan(100_000);
  });

  it('round-trips text with special-token text, CJK, emoji, tabs and repeated blank lines', () => {
    const s = 'a\t\tb\n\n\n  c <｜User｜>x</think>y 日本語 🤖 é\r\n';
    expect(tok.decode(tok.encode(s))).toBe(s);
  });

  it('has bos 0, eos 1, <｜User｜> 128803, <｜Assistant｜> 128804 and V4\'s <think> 128821, </think> 128822', () => {
    expect([tok.bosId, tok.eosId]).toEqual([0, 1]);
    expect(tok.tokenToId('<｜User｜>')).toBe(128803);
    expect(tok.tokenToId('<｜Assistant｜>')).toBe(128804);
    expect(tok.tokenToId('<think>')).toBe(128821);
    expect(tok.tokenToId('</think>')).toBe(128822);
    expect(tok.encode('<think>r</think>')).toEqual([128821, 84, 128822]);
    expect(tok.vocabSize).toBe(128823);
    expect(tok.identity.kind).toBe('hf');
    expect(tok.identity.hash).toMatch(/^[0-9a-f]{64}$/);
  });

  it('embeddedTokenizerJson and writeEmbeddedTokenizer agree, and the config lists the think tokens as special', () => {
    const dir = join(tmp.dir, 'again');
    writeEmbeddedTokenizer(dir);
    expect(JSON.parse(readFileSync(join(dir, 'tokenizer.json'), 'utf8'))).toEqual(embeddedTokenizerJson());
    const cfg = JSON.parse(readFileSync(join(dir, 'tokenizer_config.json'), 'utf8')) as { added_tokens_decoder: Record<string, { content: string; special: boolean }> };
    expect(cfg.added_tokens_decoder['128821']).toMatchObject({ content: '<think>', special: true });
    expect(cfg.added_tokens_decoder['128822']).toMatchObject({ content: '</think>', special: true });
  });
});

describe('SentencePiece tokenizer', () => {
  it('loads a .model file: encode/decode, vocab size and bos/eos from the model\'s trainer spec', async () => {
    const path = write(join(tmp.dir, 'sp', 'tiny.model'), tinySentencePieceModel());
    const sp = await loadTokenizer(path);
    expect(sp.identity.kind).toBe('sentencepiece');
    expect([sp.vocabSize, sp.bosId, sp.eosId]).toEqual([34, 1, 2]);
    const ids = sp.encode('the cat sat.');
    expect(ids[0]).toBe(32);
    expect(sp.decode(ids)).toBe('the cat sat.');
    expect(sp.tokenToId('<｜User｜>')).toBe(33);
  });
});

describe('a file that is not a tokenizer', () => {
  it.each([
    ['JSON without a model', 'tok.json', '{"version": "1.0", "added_tokens": []}'],
    ['not JSON at all', 'tokenizer.json', 'this is plain text'],
    ['bytes that are not a SentencePiece model', 'bad.model', 'hello world this is not a model'],
  ])('is refused with an InputError naming the file: %s', async (_what, name, content) => {
    const path = write(join(tmp.dir, 'bad', name), content);
    const err = await loadTokenizer(path).then(() => null, (e: unknown) => e);
    expect(err).toBeInstanceOf(InputError);
    expect((err as InputError).message).toContain(path);
    expect((err as InputError).message).toContain('not a tokenizer');
    expect((err as InputError).exitCode).toBe(2);
  });
});

describe('tokenizer.json checks on load', () => {
  /** The embedded tokenizer.json with `edit` applied, written to a fresh folder. */
  const variant = (name: string, edit: (j: { model: { vocab: Record<string, number> }; added_tokens: { id: number; content: string }[]; pre_tokenizer: { pretokenizers: { type: string; pattern?: { Regex?: string } }[] } }) => void): string => {
    const j = embeddedTokenizerJson() as Parameters<typeof edit>[0];
    edit(j);
    return write(join(tmp.dir, name, 'tokenizer.json'), JSON.stringify(j));
  };

  it('refuses a negative, fractional or too large id, naming the file and the token', async () => {
    const neg = variant('neg', (j) => { j.model.vocab['pump'] = -3; });
    await expect(loadTokenizer(neg)).rejects.toThrow(`${neg}: token "pump" has id -3; token ids must be integers from 0 to 16777215`);
    const frac = variant('frac', (j) => { j.added_tokens[0]!.id = 1.5; });
    await expect(loadTokenizer(frac)).rejects.toThrow(/token "<｜begin▁of▁sentence｜>" has id 1.5/);
    const huge = variant('huge', (j) => { j.added_tokens.push({ ...j.added_tokens[0]!, id: 2 ** 30, content: '<huge>' }); });
    await expect(loadTokenizer(huge)).rejects.toThrow(`${huge}: token "<huge>" has id 1073741824`);
  });

  it('refuses a Split regex that backtracks catastrophically (a repeated repetition), naming the file', async () => {
    const bad = variant('regex', (j) => { j.pre_tokenizer.pretokenizers[0]!.pattern = { Regex: '(\\s*\\p{L}+)+$' }; });
    const err = await loadTokenizer(bad).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(InputError);
    expect((err as Error).message).toContain(`${bad}: the pre_tokenizer's Split regex "(\\\\s*\\\\p{L}+)+$" can backtrack catastrophically`);
  });

  it('nestedRepetition: flags (a+)+, (a*)*, (?:x+y?){2,}, passes the patterns real tokenizers use', async () => {
    for (const p of ['(a+)+', '(a*)*b', '(?:x+y?){2,}', '((ab)+c)*', '(\\d+\\s?)+$']) expect(nestedRepetition(p)).not.toBeNull();
    for (const p of ['\\p{N}{1,3}', '(ab)+', '(a|b)*c', '[a+]+', '\\(a+\\)+', ' ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+', '(?:a{2})+']) expect(nestedRepetition(p)).toBeNull();
    const json = embeddedTokenizerJson() as { pre_tokenizer: { pretokenizers: { pattern?: { Regex?: string } }[] } };
    for (const s of json.pre_tokenizer.pretokenizers) if (s.pattern?.Regex) expect(nestedRepetition(s.pattern.Regex)).toBeNull();
  });
});
