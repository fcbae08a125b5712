// Tokenizers behind one interface: HF tokenizer.json (byte-level BPE and friends, through
// @huggingface/tokenizers) and SentencePiece .model files (through sentencepiece-js, with the
// model's protobuf read here for its vocabulary and bos/eos ids). A tokenizer.json that
// src/data/bpe.ts reproduces exactly (DeepSeek V3/V4's byte-level BPE) encodes there, several
// times faster; the library still decodes it and encodes every other file.
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { basename, dirname, extname, join } from 'node:path';
import { createRequire } from 'node:module';
import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';
import { InputError } from '../errors.js';
import { readJsonFile } from '../fsutil.js';
import { byteLevelBpe } from './bpe.js';

export type TokenizerKind = 'hf' | 'sentencepiece';

export interface TokenizerIdentity {
  kind: TokenizerKind;
  /** sha256 of the tokenizer file's bytes. */
  hash: string;
}

/** What turns text into ids: src/data/bpe.ts, @huggingface/tokenizers, or sentencepiece-js. */
export type TokenizerEncoder = 'v4tune-bpe' | 'hf-js' | 'sentencepiece-js';

export interface TextTokenizer {
  /** Token ids of `text`, no bos/eos added (special-token text in `text` maps to its id). */
  encode(text: string): number[];
  /** Text of `ids`, special tokens included. */
  decode(ids: ArrayLike<number>): string;
  /** One more than the largest id the tokenizer can produce. */
  vocabSize: number;
  bosId: number;
  eosId: number;
  /** Id of a token given by its text, or undefined when the vocabulary lacks it. */
  tokenToId(token: string): number | undefined;
  identity: TokenizerIdentity;
  /** The encoder behind `encode`, for manifests and benchmarks. */
  encoder?: TokenizerEncoder;
  /** The token with the largest id (named when that id does not fit a model). */
  largestToken?: string;
}

/** Token ids a tokenizer may use: [0, 2^24). */
export const MAX_TOKEN_ID = 1 << 24;

/** Every id of a tokenizer.json (vocab and added tokens) an integer in [0, MAX_TOKEN_ID); returns the token of the largest. */
function checkIds(path: string, json: HfJson): string | undefined {
  const bad = (token: string, id: unknown): InputError =>
    new InputError(`${path}: token ${JSON.stringify(token)} has id ${JSON.stringify(id)}; token ids must be integers from 0 to ${MAX_TOKEN_ID - 1}`);
  let maxId = -1;
  let maxToken: string | undefined;
  const see = (token: string, id: unknown): void => {
    if (typeof id !== 'number' || !Number.isInteger(id) || id < 0 || id >= MAX_TOKEN_ID) throw bad(token, id);
    if (id > maxId) { maxId = id; maxToken = token; }
  };
  const vocab = json.model?.vocab;
  if (vocab && typeof vocab === 'object' && !Array.isArray(vocab)) {
    const v = vocab as Record<string, unknown>;
    for (const t in v) see(t, v[t]);
  }
  if (json.added_tokens !== undefined && !Array.isArray(json.added_tokens)) throw new InputError(`${path}: added_tokens must be a list`);
  for (const t of json.added_tokens ?? []) see(typeof t?.content === 'string' ? t.content : JSON.stringify(t), t?.id);
  return maxToken;
}

/**
 * A regex that nests a repeated group inside a repetition, as `(a+)+` or `(\s*\w)*`: such a
 * pattern backtracks exponentially on a near-match. Returns a description, or null.
 */
export function nestedRepetition(pattern: string): string | null {
  interface Frame { start: number; unbounded: boolean }
  const stack: Frame[] = [{ start: 0, unbounded: false }];
  /** The quantifier at `i`: [length, whether it repeats more than once, whether it is unbounded]. */
  const quantifier = (i: number): [number, boolean, boolean] => {
    const c = pattern[i];
    let n = 0;
    let repeats = false;
    let unbounded = false;
    if (c === '*' || c === '+') { n = 1; repeats = true; unbounded = true; }
    else if (c === '?') n = 1;
    else if (c === '{') {
      const m = /^\{(\d+)(,(\d*))?\}/.exec(pattern.slice(i));
      if (m) {
        n = m[0].length;
        const max = m[2] === undefined ? Number(m[1]) : m[3] === '' ? Infinity : Number(m[3]);
        repeats = max > 1;
        unbounded = max === Infinity;
      }
    }
    if (n > 0 && (pattern[i + n] === '?' || pattern[i + n] === '+')) n++;
    return [n, repeats, unbounded];
  };
  for (let i = 0; i < pattern.length;) {
    const c = pattern[i]!;
    let atomEnd: number;
    if (c === '\\') atomEnd = i + 2;
    else if (c === '[') {
      let j = i + 1;
      if (pattern[j] === '^') j++;
      if (pattern[j] === ']') j++;
      while (j < pattern.length && pattern[j] !== ']') j += pattern[j] === '\\' ? 2 : 1;
      atomEnd = j + 1;
    } else if (c === '(') { stack.push({ start: i, unbounded: false }); i++; continue; }
    else if (c === ')') {
      const frame = stack.length > 1 ? stack.pop()! : { start: 0, unbounded: false };
      const [n, repeats, unbounded] = quantifier(i + 1);
      if (repeats && frame.unbounded) return `the group ${JSON.stringify(pattern.slice(frame.start, i + 1 + n))} repeats a repetition`;
      stack.at(-1)!.unbounded ||= frame.unbounded || unbounded;
      i += 1 + n;
      continue;
    } else atomEnd = i + 1;
    const [n, , unbounded] = quantifier(atomEnd);
    if (unbounded) stack.at(-1)!.unbounded = true;
    i = atomEnd + n;
  }
  return null;
}

/** Refuse Split pre-tokenizer regexes that backtrack catastrophically (nestedRepetition). */
function checkSplitRegexes(path: string, config: unknown): void {
  if (!config || typeof config !== 'object') return;
  const c = config as { type?: unknown; pretokenizers?: unknown; pattern?: unknown };
  if (Array.isArray(c.pretokenizers)) for (const p of c.pretokenizers) checkSplitRegexes(path, p);
  if (c.type !== 'Split' || !c.pattern || typeof c.pattern !== 'object') return;
  const re = (c.pattern as { Regex?: unknown }).Regex;
  if (typeof re !== 'string') return;
  const why = nestedRepetition(re);
  if (why) throw new InputError(`${path}: the pre_tokenizer's Split regex ${JSON.stringify(re)} can backtrack catastrophically (${why}); refused`);
}

const BOS_NAMES = ['<｜begin▁of▁sentence｜>', '<s>', '<|begin_of_text|>', '<bos>', '<|startoftext|>'];
const EOS_NAMES = ['<｜end▁of▁sentence｜>', '</s>', '<|end_of_text|>', '<eos>', '<|endoftext|>'];

/** The tokenizer kind of a file, from its extension or, failing that, its first byte. */
export function tokenizerKindOf(path: string, bytes: Uint8Array): TokenizerKind {
  const ext = extname(path).toLowerCase();
  if (ext === '.json') return 'hf';
  if (ext === '.model') return 'sentencepiece';
  let i = 0;
  while (i < bytes.length && (bytes[i] === 0x20 || bytes[i] === 0x0a || bytes[i] === 0x0d || bytes[i] === 0x09)) i++;
  return bytes[i] === 0x7b ? 'hf' : 'sentencepiece';
}

export function sha256Hex(bytes: Uint8Array | string): string {
  return createHash('sha256').update(bytes).digest('hex');
}

/** The last tokenizers loaded in this process, by path and content hash (building one takes a second). */
const recent = new Map<string, Promise<TextTokenizer>>();
const RECENT_MAX = 2;

/** Load a tokenizer file; anything that is not a tokenizer is an InputError naming the file. */
export async function loadTokenizer(path: string): Promise<TextTokenizer> {
  let bytes: Buffer;
  try {
    bytes = readFileSync(path);
  } catch (e) {
    throw new InputError(`${path}: cannot read the tokenizer (${(e as NodeJS.ErrnoException).code ?? String(e)})`);
  }
  const kind = tokenizerKindOf(path, bytes);
  const identity: TokenizerIdentity = { kind, hash: sha256Hex(bytes) };
  const key = `${path}\0${identity.hash}`;
  const hit = recent.get(key);
  if (hit) return hit;
  const loading = kind === 'hf' ? Promise.resolve().then(() => hfTokenizer(path, bytes, identity)) : sentencePieceTokenizer(path, bytes, identity);
  recent.set(key, loading);
  loading.catch(() => recent.delete(key));
  while (recent.size > RECENT_MAX) recent.delete(recent.keys().next().value!);
  return loading;
}

interface HfJson {
  model?: { vocab?: unknown };
  added_tokens?: { id: number; content: string }[];
  pre_tokenizer?: unknown;
}

function specialName(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  if (v && typeof v === 'object' && typeof (v as { content?: unknown }).content === 'string') return (v as { content: string }).content;
  return undefined;
}

function hfTokenizer(path: string, bytes: Buffer, identity: TokenizerIdentity): TextTokenizer {
  let json: HfJson;
  try {
    json = JSON.parse(bytes.toString('utf8')) as HfJson;
  } catch (e) {
    throw new InputError(`${path}: not a tokenizer (not valid JSON: ${(e as Error).message})`);
  }
  if (!json || typeof json !== 'object' || !json.model || typeof json.model !== 'object' || !json.model.vocab || typeof json.model.vocab !== 'object') {
    throw new InputError(`${path}: not a tokenizer (a tokenizer.json has a "model" with a "vocab")`);
  }
  const largestToken = checkIds(path, json);
  checkSplitRegexes(path, json.pre_tokenizer);
  const configPath = join(dirname(path), 'tokenizer_config.json');
  let config: Record<string, unknown> = {};
  if (basename(path) === 'tokenizer.json' && existsSync(configPath)) {
    config = readJsonFile(configPath) as Record<string, unknown>;
  }
  // The library's Tokenizer takes half a second to build: with v4tune's encoder it is built
  // on the first decode only (bpe.ts takes a file only when the library loads it too).
  const library = (parsed: HfJson): HfTokenizer => {
    try {
      return new HfTokenizer(parsed, config);
    } catch (e) {
      throw new InputError(`${path}: not a tokenizer (${(e as Error).message})`);
    }
  };
  const fast = byteLevelBpe(json, config);
  let encode: (text: string) => number[];
  let tokenToId: (s: string) => number | undefined;
  let vocabSize: number;
  let lazy: HfTokenizer | null = null;
  let hf: () => HfTokenizer;
  if ('encoder' in fast) {
    const encoder = fast.encoder;
    encode = (text) => encoder.encode(text);
    tokenToId = encoder.tokenToId;
    vocabSize = encoder.vocabSize;
    hf = () => (lazy ??= library(JSON.parse(bytes.toString('utf8')) as HfJson));
  } else {
    const tok = library(json);
    const vocab = tok.get_vocab(true);
    let maxId = -1;
    for (const id of vocab.values()) if (id > maxId) maxId = id;
    for (const t of json.added_tokens ?? []) if (t.id > maxId) maxId = t.id;
    encode = (text) => (text.length === 0 ? [] : tok.encode(text, { add_special_tokens: false }).ids);
    tokenToId = (s) => tok.token_to_id(s);
    vocabSize = maxId + 1;
    hf = () => tok;
  }
  const findSpecial = (key: string, names: string[]): number => {
    const named = specialName(config[key]);
    for (const n of named ? [named, ...names] : names) {
      const id = tokenToId(n);
      if (id !== undefined) return id;
    }
    throw new InputError(`${path}: the tokenizer has no ${key.replace('_token', '')} token (looked for ${(named ? [named, ...names] : names).join(', ')})`);
  };
  const bosId = findSpecial('bos_token', BOS_NAMES);
  const eosId = findSpecial('eos_token', EOS_NAMES);
  return {
    encode,
    encoder: 'encoder' in fast ? 'v4tune-bpe' : 'hf-js',
    decode: (ids) => hf().decode(Array.from(ids), { skip_special_tokens: false, clean_up_tokenization_spaces: false }),
    vocabSize,
    bosId,
    eosId,
    tokenToId,
    identity,
    ...(largestToken !== undefined ? { largestToken } : {}),
  };
}

// --- SentencePiece -----------------------------------------------------------------------------

interface SpProcessor {
  load(path: string): Promise<void>;
  encodeIds(text: string): number[];
  decodeIds(ids: number[]): string;
}

interface SpModelInfo {
  pieces: string[];
  bosId: number;
  eosId: number;
}

/** Read a protobuf varint at `pos`; returns [value, next position]. */
function readVarint(b: Uint8Array, pos: number): [number, number] {
  let v = 0;
  let mul = 1;
  for (let k = 0; k < 10; k++) {
    if (pos >= b.length) throw new Error('truncated varint');
    const c = b[pos++]!;
    v += (c & 0x7f) * mul;
    if ((c & 0x80) === 0) return [v, pos];
    mul *= 128;
  }
  throw new Error('varint too long');
}

/** Walk the fields of one protobuf message: calls `onField(field, wireType, value | [start, end])`. */
function readFields(b: Uint8Array, start: number, end: number, onField: (field: number, wire: number, v: number, s: number, e: number) => void): void {
  let pos = start;
  while (pos < end) {
    const [key, p1] = readVarint(b, pos);
    const field = Math.floor(key / 8);
    const wire = key & 7;
    if (field === 0) throw new Error('field number 0');
    pos = p1;
    if (wire === 0) { const [v, p2] = readVarint(b, pos); onField(field, wire, v, 0, 0); pos = p2; }
    else if (wire === 1) { pos += 8; }
    else if (wire === 5) { pos += 4; }
    else if (wire === 2) {
      const [len, p2] = readVarint(b, pos);
      if (p2 + len > end) throw new Error('length past the end');
      onField(field, wire, 0, p2, p2 + len);
      pos = p2 + len;
    } else throw new Error(`wire type ${wire}`);
    if (pos > end) throw new Error('field past the end');
  }
}

/** A signed int32 from a varint read as an unsigned number (negative ids are 10-byte varints). */
function int32(v: number): number {
  return v >= 2 ** 63 ? -1 : v > 0x7fffffff ? v - 2 ** 64 : v;
}

/** The parts of a SentencePiece ModelProto v4tune needs: pieces (field 1) and trainer ids (field 2). */
export function parseSentencePieceModel(b: Uint8Array): SpModelInfo {
  const pieces: string[] = [];
  let bosId = 1;
  let eosId = 2;
  const dec = new TextDecoder('utf-8', { fatal: true });
  readFields(b, 0, b.length, (field, wire, _v, s, e) => {
    if (field === 1 && wire === 2) {
      let piece: string | undefined;
      readFields(b, s, e, (f, w, _pv, ps, pe) => {
        if (f === 1 && w === 2) piece = dec.decode(b.subarray(ps, pe));
      });
      if (piece === undefined) throw new Error('a piece without text');
      pieces.push(piece);
    } else if (field === 2 && wire === 2) {
      readFields(b, s, e, (f, w, v) => {
        if (w !== 0) return;
        if (f === 41) bosId = int32(v);
        else if (f === 42) eosId = int32(v);
      });
    }
  });
  if (pieces.length === 0) throw new Error('no pieces');
  return { pieces, bosId, eosId };
}

const require = createRequire(import.meta.url);

async function sentencePieceTokenizer(path: string, bytes: Buffer, identity: TokenizerIdentity): Promise<TextTokenizer> {
  let info: SpModelInfo;
  try {
    info = parseSentencePieceModel(bytes);
  } catch (e) {
    throw new InputError(`${path}: not a tokenizer (not a SentencePiece model: ${(e as Error).message})`);
  }
  const n = info.pieces.length;
  if (info.bosId < 0 || info.bosId >= n) throw new InputError(`${path}: the SentencePiece model has no bos token (bos_id ${info.bosId})`);
  if (info.eosId < 0 || info.eosId >= n) throw new InputError(`${path}: the SentencePiece model has no eos token (eos_id ${info.eosId})`);
  const { SentencePieceProcessor } = require('sentencepiece-js') as { SentencePieceProcessor: new () => SpProcessor };
  const sp = new SentencePieceProcessor();
  try {
    await sp.load(path);
    sp.encodeIds('a');
  } catch (e) {
    throw new InputError(`${path}: not a tokenizer (sentencepiece could not load it: ${(e as Error).message})`);
  }
  const byPiece = new Map<string, number>();
  info.pieces.forEach((p, i) => { if (!byPiece.has(p)) byPiece.set(p, i); });
  return {
    encode: (text) => (text.length === 0 ? [] : sp.encodeIds(text)),
    decode: (ids) => sp.decodeIds(Array.from(ids)),
    vocabSize: n,
    bosId: info.bosId,
    eosId: info.eosId,
    tokenToId: (s) => byPiece.get(s),
    identity,
    encoder: 'sentencepiece-js',
  };
}
