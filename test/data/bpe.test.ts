// v4tune's byte-level BPE encoder (src/data/bpe.ts) gives exactly the ids of
// @huggingface/tokenizers: on the bundled corpus, the prepare bench's generated text, seeded
// random text of every kind the pre-tokenizer regexes split, and tokenizer.json variants using
// the other features it reproduces; a file using anything else stays on the library.
import { describe, expect, it, beforeAll, afterAll, vi } from 'vitest';
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import { byteLevelBpe, type ByteLevelBpe } from '../../src/data/bpe.js';
import { loadTokenizer } from '../../src/data/tokenizer.js';
import { mulberry32 } from '../../src/random.js';
// @ts-expect-error the bench is plain JavaScript, without type declarations
import { generateTexts } from '../../bench/prepare.mjs';
import { BUNDLED, embeddedTokenizerFile, tempDir, write } from './helpers.js';

vi.setConfig({ testTimeout: 120_000, hookTimeout: 60_000 });

type Json = Record<string, any>;

const tmp = tempDir();
let tokPath: string;
let base: Json;
let config: Json;
let hf: Tokenizer;
let ours: ByteLevelBpe;
beforeAll(() => {
  tokPath = embeddedTokenizerFile(tmp.dir);
  base = JSON.parse(readFileSync(tokPath, 'utf8')) as Json;
  config = JSON.parse(readFileSync(join(tmp.dir, 'tokenizer_config.json'), 'utf8')) as Json;
  hf = new Tokenizer(base, config);
  ours = accepted(base, config);
});
afterAll(() => tmp.cleanup());

function accepted(json: Json, cfg: Json = {}): ByteLevelBpe {
  const r = byteLevelBpe(json, cfg);
  if ('unsupported' in r) throw new Error(`v4tune-bpe refused the tokenizer: ${r.unsupported}`);
  return r.encoder;
}

const libraryIds = (tok: Tokenizer, text: string): number[] => tok.encode(text, { add_special_tokens: false }).ids;

/** Every text gets the library's full id array (the first difference is reported with its text). */
function expectSameIds(texts: string[], lib: Tokenizer, enc: ByteLevelBpe): number {
  let tokens = 0;
  for (const text of texts) {
    const want = libraryIds(lib, text);
    const got = enc.encode(text);
    if (got.length !== want.length || got.some((id, i) => id !== want[i])) expect({ text, ids: got }).toEqual({ text, ids: want });
    tokens += want.length;
  }
  return tokens;
}

/** Every file of datasets/: whole files, every JSONL line, and each record's text and message fields. */
function bundledStrings(): string[] {
  const out: string[] = [];
  const walk = (dir: string): void => {
    for (const name of readdirSync(dir).sort()) {
      const path = join(dir, name);
      if (statSync(path).isDirectory()) { walk(path); continue; }
      const text = readFileSync(path, 'utf8');
      out.push(text);
      if (!name.endsWith('.jsonl')) continue;
      for (const line of text.split('\n')) {
        if (!line) continue;
        out.push(line);
        const rec = JSON.parse(line) as { text?: string; messages?: { content: string; reasoning_content?: string }[] };
        if (rec.text !== undefined) out.push(rec.text);
        for (const m of rec.messages ?? []) out.push(m.content, ...(m.reasoning_content ? [m.reasoning_content] : []));
      }
    }
  };
  walk(join(BUNDLED, '..'));
  return out;
}

const SPECIAL_TEXT = ['<｜begin▁of▁sentence｜>', '<｜end▁of▁sentence｜>', '<｜User｜>', '<｜Assistant｜>', '<think>', '</think>', '<｜tool▁sep｜>', '<|EOT|>',
  '<｜place▁holder▁no▁7｜>', '<think', '<｜User', '<<think>>', '</think>>', '<｜fim▁hole｜'];
const WHITESPACE = [' ', '  ', '   ', '\t', '\t\t', '\n', '\n\n', '\r\n', '\r', ' \n ', '\u00a0', '\u3000', '\u2028', '\u0085', '\ufeff', '\u200b', '\v', '\f', '\u2003'];
const EMOJI = ['🤖', '👩‍💻', '🇯🇵', '👍🏽', '❤️', '🎉🎉', '🧪', '☕', '✨'];
const WORDS = ['привет', 'λόγος', 'مرحبا', 'שלום', 'नमस्ते', 'สวัสดี', 'Straße', 'naïve', 'café', "don't", "I'm", "we'll", 'O\'Brien', 'e\u0301', '\u0301a', 'a\u0308\u0301'];
const NUMBERS = ['٣٤٥', '½', 'Ⅻ', '²³', '①②', '１２３', '3.14', '1,000,000', '-42', '0x1F'];
const SYMBOLS = ['°C', '€', '™', '©', '→', '∑', '±', 'm³/h', '—', '…', '「', '」', '，', '。', '！'];
const PUNCT = '!"#$%&\'()*+,-./:;<=>?@[\\]^_`{|}~';
const CONTROL = ['\x00', '\x07', '\x1b', '\x7f', '\x01\x02'];

/** A seeded random string of the pieces above, ASCII words, digit runs, CJK runs and random code points (no lone surrogates). */
function randomText(r: () => number, long: boolean): string {
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;
  const int = (lo: number, hi: number): number => lo + Math.floor(r() * (hi - lo + 1));
  const chars = (n: number, lo: number, hi: number): string => Array.from({ length: n }, () => String.fromCodePoint(int(lo, hi))).join('');
  const piece = (): string => {
    switch (int(0, 14)) {
      case 0: case 1: case 2: { const w = chars(int(1, 12), 0x61, 0x7a); return r() < 0.3 ? w[0]!.toUpperCase() + w.slice(1) : w; }
      case 3: return chars(int(1, 12), 0x30, 0x39);
      case 4: return Array.from({ length: int(1, 3) }, () => pick([...PUNCT])).join('');
      case 5: return pick(WHITESPACE);
      case 6: return pick([chars(int(1, 8), 0x4e00, 0x9fa5), chars(int(1, 6), 0x3040, 0x309f), chars(int(1, 6), 0x30a0, 0x30ff), chars(int(1, 6), 0xac00, 0xd7a3), chars(int(1, 4), 0x3400, 0x4dbf)]);
      case 7: return pick(EMOJI);
      case 8: return pick(WORDS);
      case 9: return pick(NUMBERS);
      case 10: return pick(SYMBOLS);
      case 11: return pick(SPECIAL_TEXT);
      case 12: return pick(CONTROL);
      case 13: return r() < 0.5 ? chars(1, 0xa0, 0xd7ff) : chars(1, 0xe000, 0xfffd);
      default: return chars(1, 0x10000, 0x2ffff);
    }
  };
  let s = '';
  const n = int(1, 40);
  for (let i = 0; i < n; i++) s += piece() + (r() < 0.5 ? ' ' : '');
  if (long) {
    s += pick([
      'a'.repeat(int(60, 600)), ' '.repeat(int(60, 300)), '\n'.repeat(int(60, 200)), chars(int(40, 300), 0x4e00, 0x9fa5),
      chars(int(60, 400), 0x61, 0x7a), 'ab'.repeat(int(40, 200)), '🤖'.repeat(int(20, 60)), '-'.repeat(int(60, 200)),
    ]);
    s += piece();
  }
  return s;
}

function randomTexts(seed: number, count: number): string[] {
  const r = mulberry32(seed);
  return Array.from({ length: count }, (_, i) => randomText(r, i % 10 === 0));
}

describe('v4tune-bpe on the embedded DeepSeek V4 tokenizer', () => {
  it('takes the embedded tokenizer.json', () => {
    expect(byteLevelBpe(base, config)).toHaveProperty('encoder');
  });

  it('gives the library\'s ids on every file, line, document and message of the bundled corpus', () => {
    const strings = bundledStrings();
    expect(strings.length).toBeGreaterThan(2000);
    expect(expectSameIds(strings, hf, ours)).toBeGreaterThan(300_000);
  });

  it('gives the library\'s ids on 2 MB of the prepare bench\'s generated corpus', () => {
    const texts = (generateTexts as (r: () => number, bytes: number) => string[])(mulberry32(42), 2e6);
    expect(expectSameIds(texts, hf, ours)).toBeGreaterThan(500_000);
  });

  it('gives the library\'s ids on seeded random text: ASCII, digit runs, punctuation, whitespace runs, CJK, emoji, marks, special tokens mid-text, long runs', () => {
    expect(expectSameIds(randomTexts(1, 4000), hf, ours)).toBeGreaterThan(200_000);
  });

  it('gives the library\'s ids on text with lone surrogates (both encode them as U+FFFD)', () => {
    expectSameIds(['a\ud800b', '\udc00', 'x \ud83d', '\ud83d\ud83d\ude00', '日本\udfff語'], hf, ours);
  });

  it('gives the same ids however often a word repeats (the word cache returns what merging gives)', () => {
    const text = randomTexts(2, 50).join(' ');
    const first = ours.encode(text);
    expect(ours.encode(text)).toEqual(first);
    expect(accepted(base, config).encode(text)).toEqual(first);
  });

  it('follows the file\'s merge ranks: swapping two merges changes the ids, in both encoders alike', () => {
    const merges = base.model.merges as string[];
    const at = merges.indexOf('i n');
    const later = merges.indexOf('Ġ i');
    expect(at).toBeGreaterThanOrEqual(0);
    expect(later).toBeGreaterThan(at);
    const swapped = structuredClone(base);
    [swapped.model.merges[at], swapped.model.merges[later]] = [merges[later], merges[at]];
    const text = 'in in in pin inside';
    const hfSwapped = new Tokenizer(swapped, config);
    expect(libraryIds(hfSwapped, text)).not.toEqual(libraryIds(hf, text));
    expectSameIds([text, ...randomTexts(3, 300)], hfSwapped, accepted(swapped, config));
  });
});

describe('v4tune-bpe on the features of other tokenizer.json files it reproduces', () => {
  const variants: [string, (j: Json) => void][] = [
    ['an NFKC normalizer, lstrip/rstrip added tokens and a normalized non-special added token', (j) => {
      j.normalizer = { type: 'Sequence', normalizers: [{ type: 'NFKC' }] };
      for (const t of j.added_tokens as Json[]) if (t.content === '<think>') Object.assign(t, { lstrip: true, rstrip: true });
      for (const t of j.added_tokens as Json[]) if (t.content === '</think>') Object.assign(t, { rstrip: true });
      (j.added_tokens as Json[]).push({ id: 128823, content: 'Ｔｏｋ', single_word: false, lstrip: false, rstrip: false, normalized: true, special: false });
    }],
    ['ignore_merges (with a vocabulary word no merges build) and merges as [a, b] pairs', (j) => {
      j.model.ignore_merges = true;
      j.model.vocab['Ġzqxj'] = 129000;
      j.model.merges = (j.model.merges as string[]).map((m) => m.split(' '));
    }],
    ['other Split regexes (\\s, \\d, lookahead, {n}, a String pattern) and a TemplateProcessing post-processor', (j) => {
      j.pre_tokenizer.pretokenizers = [
        { type: 'Split', pattern: { String: '\n\n' }, behavior: 'Isolated', invert: false },
        { type: 'Split', pattern: { Regex: "[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\d{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+" }, behavior: 'Isolated', invert: false },
        j.pre_tokenizer.pretokenizers.at(-1),
      ];
      j.post_processor = { type: 'TemplateProcessing', single: [{ SpecialToken: { id: '<｜begin▁of▁sentence｜>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }], pair: [], special_tokens: {} };
    }],
  ];
  it.each(variants)('gives the library\'s ids with %s', (_what, change) => {
    const json = structuredClone(base);
    change(json);
    const texts = [...randomTexts(4, 1500), 'Tok Ｔｏｋ ﬁle ①  <think>  x  </think>  y', 'a\n\nb\n\n\nc', 'the zqxj, zqxj and zqxjs'];
    expectSameIds(texts, new Tokenizer(json, {}), accepted(json));
  });
});

describe('a tokenizer.json v4tune-bpe does not reproduce', () => {
  const refused: [string, (j: Json) => void, RegExp][] = [
    ['a Lowercase normalizer', (j) => { j.normalizer = { type: 'Lowercase' }; }, /normalizer "Lowercase"/],
    ['a Split that is not Isolated', (j) => { j.pre_tokenizer.pretokenizers[0].behavior = 'MergedWithPrevious'; }, /behavior "MergedWithPrevious"/],
    ['an inline case-insensitive regex', (j) => { j.pre_tokenizer.pretokenizers[0].pattern.Regex = "(?i:'s|'t)|\\p{N}{1,3}"; }, /Split regex/],
    ['a single_word added token', (j) => { (j.added_tokens as Json[])[0]!.single_word = true; }, /single_word/],
    ['a ByteLevel pre-tokenizer with its own regex', (j) => { j.pre_tokenizer = { type: 'ByteLevel', add_prefix_space: false, use_regex: true }; }, /its own regex/],
    ['a WordPiece model', (j) => { j.model = { type: 'WordPiece', vocab: { '[UNK]': 0 }, unk_token: '[UNK]' }; }, /model "WordPiece"/],
  ];
  it.each(refused)('is refused with the reason: %s', (_what, change, reason) => {
    const json = structuredClone(base);
    change(json);
    const r = byteLevelBpe(json, {});
    expect(r).toHaveProperty('unsupported');
    expect((r as { unsupported: string }).unsupported).toMatch(reason);
  });

  it('still loads and encodes through the library: an unsupported normalizer', async () => {
    const json = structuredClone(base);
    json.normalizer = { type: 'Lowercase' };
    const path = write(join(tmp.dir, 'lower', 'tokenizer.json'), JSON.stringify(json));
    const tok = await loadTokenizer(path);
    expect(tok.encoder).toBe('hf-js');
    const lib = new Tokenizer(json, {});
    for (const text of ['Hello World <think>OK</think>', ...randomTexts(5, 50)]) expect(tok.encode(text)).toEqual(text ? libraryIds(lib, text) : []);
  });

  it('still loads and encodes through the library: a WordPiece model', async () => {
    const json = {
      version: '1.0', truncation: null, padding: null, normalizer: null, pre_tokenizer: { type: 'Whitespace' }, post_processor: null,
      decoder: { type: 'WordPiece', prefix: '##', cleanup: false },
      added_tokens: [{ id: 0, content: '[UNK]', special: true }, { id: 1, content: '<s>', special: true }, { id: 2, content: '</s>', special: true }],
      model: { type: 'WordPiece', unk_token: '[UNK]', continuing_subword_prefix: '##', max_input_chars_per_word: 100, vocab: { '[UNK]': 0, '<s>': 1, '</s>': 2, pump: 3, seal: 4, '##s': 5, the: 6, '.': 7 } },
    };
    const path = write(join(tmp.dir, 'wordpiece', 'tokenizer.json'), JSON.stringify(json));
    const tok = await loadTokenizer(path);
    expect(tok.encoder).toBe('hf-js');
    expect([tok.bosId, tok.eosId, tok.vocabSize]).toEqual([1, 2, 8]);
    expect(tok.encode('the pumps seal.')).toEqual([6, 3, 5, 4, 7]);
    expect(tok.encode('<s>the valve</s>')).toEqual([1, 6, 0, 2]);
  });
});

describe('loadTokenizer with v4tune-bpe', () => {
  it('encodes the embedded tokenizer with v4tune-bpe, with the library\'s vocabulary size, token ids and decode', async () => {
    const tok = await loadTokenizer(tokPath);
    expect(tok.encoder).toBe('v4tune-bpe');
    expect(tok.vocabSize).toBe(128823);
    expect([tok.bosId, tok.eosId]).toEqual([0, 1]);
    for (const t of ['<think>', '<｜User｜>', '<｜tool▁sep｜>', 'Ġthe', 'hello', 'no such token']) expect(tok.tokenToId(t)).toBe(hf.token_to_id(t));
    const text = 'Pump P-03 <think>seal</think> 日本語 🤖\r\n';
    expect(tok.encode(text)).toEqual(libraryIds(hf, text));
    expect(tok.decode(tok.encode(text))).toBe(text);
    expect(tok.encode('')).toEqual([]);
  });
});
