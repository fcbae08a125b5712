// v4tune's encoder for HF tokenizer.json byte-level BPE tokenizers (DeepSeek V3/V4 and the like):
// the same ids as @huggingface/tokenizers' Tokenizer.encode(text, { add_special_tokens: false }),
// without its per-word strings, JSON keys, TextEncoder calls and object-per-symbol merge queue.
//
// The pipeline, as the library runs it:
//   text → split out added tokens (longest match, left to right; lstrip/rstrip trim the
//          neighbouring text) → normalizer → split out the `normalized` added tokens
//        → pre-tokenizer: each Split regex in turn isolates its matches in every piece
//        → ByteLevel: each piece's UTF-8 bytes as GPT-2's byte↔unicode characters (one word)
//        → BPE on each word: merge the adjacent pair of lowest merge rank, leftmost first,
//          until no pair has a rank → the ids of the final symbols.
// Here words are cached by their text (two generations of a bounded map), a word's symbols are
// integers (the UTF-8 bytes, then merge results), the merge table is an open-addressing hash of
// integer pairs, and the merge loop scans an array for short words and runs a heap for long ones.
//
// byteLevelBpe() reads a tokenizer.json and says whether it is one this encoder reproduces; a
// file using anything else (another model, an unknown normalizer, a Split behaviour the library
// does not treat as Isolated, regex syntax outside bpe-regex.ts's subset...) is refused with the
// reason, and the caller keeps the library's encoder.
import { literalToJs, onigurumaToJs, UnsupportedPattern } from './bpe-regex.js';

/** GPT-2's byte → printable character table (bytes_to_unicode), as ByteLevel uses it. */
const BYTE_CHARS: readonly string[] = (() => {
  const printable = (b: number): boolean => (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
  const out: string[] = new Array<string>(256);
  let extra = 0;
  for (let b = 0; b < 256; b++) out[b] = String.fromCharCode(printable(b) ? b : 256 + extra++);
  return out;
})();

const utf8 = new TextEncoder();

/** Words longer than this (UTF-16 units) are not cached. */
const MAX_CACHED_CHARS = 256;
/** Entries per cache generation: up to twice this many words are cached. */
const CACHE_GENERATION = 50_000;
/** Words of more symbols than this merge with the heap instead of the quadratic scan. */
const SHORT_WORD = 48;
const NO_RANK = 0x7fffffff;

interface AddedToken {
  id: number;
  lstrip: boolean;
  rstrip: boolean;
}

interface TrieNode {
  next: Map<number, TrieNode>;
  end: string | null;
}

/** The library's DictionarySplitter: at each position the longest added token starting there. */
class AddedTokenSplitter {
  private readonly root: TrieNode = { next: new Map(), end: null };
  /** 1 at the UTF-16 code units some token starts with. */
  private readonly firsts = new Uint8Array(65536);
  private readonly empty: boolean;

  constructor(contents: string[]) {
    for (const word of contents) {
      if (word.length === 0) continue;
      let node = this.root;
      for (let i = 0; i < word.length; i++) {
        const c = word.charCodeAt(i);
        let child = node.next.get(c);
        if (!child) { child = { next: new Map(), end: null }; node.next.set(c, child); }
        node = child;
      }
      node.end = word;
      this.firsts[word.charCodeAt(0)] = 1;
    }
    this.empty = this.root.next.size === 0;
  }

  split(text: string): string[] {
    const n = text.length;
    if (this.empty) return n > 0 ? [text] : [];
    const out: string[] = [];
    let start = 0;
    let i = 0;
    while (i < n) {
      if (this.firsts[text.charCodeAt(i)] === 0) { i++; continue; }
      let node: TrieNode | undefined = this.root;
      let match: string | null = null;
      for (let j = i; j < n && (node = node.next.get(text.charCodeAt(j))); j++) if (node.end !== null) match = node.end;
      if (match === null) { i++; continue; }
      if (i > start) out.push(text.slice(start, i));
      out.push(match);
      i += match.length;
      start = i;
    }
    if (start < n) out.push(text.slice(start));
    return out;
  }
}

/** One Split pre-tokenizer: the same regex sticky (tried first, where the last match ended) and global. */
interface SplitRegex {
  sticky: RegExp;
  global: RegExp;
}

interface ByteLevelBpeTables {
  splits: SplitRegex[];
  normalize: ((s: string) => string) | null;
  unnormalized: AddedTokenSplitter;
  normalized: AddedTokenSplitter;
  /** Added tokens by content (and by normalized content), as the library's added_tokens_map. */
  added: Map<string, AddedToken>;
  /** Whether any added token strips its neighbours. */
  strips: boolean;
  /** Vocabulary plus added tokens, string → id (the library's tokens_to_ids). */
  tokenToId: (token: string) => number | undefined;
  /** One more than the largest id (the length of the library's vocabulary array). */
  vocabSize: number;
  ignoreMerges: boolean;
  /** Symbol of each byte. */
  byteSymbol: Int32Array;
  /** Output id of each symbol, -1 when the library drops it (not in the vocabulary, no unk token). */
  symbolId: Int32Array;
  /** Output id of a string the library emits as a token, as its Tokenizer.encode maps it. */
  idOf: (token: string) => number | undefined;
  merges: MergeTable;
}

/**
 * (left symbol, right symbol) → rank and merged symbol, in open-addressing slots of four
 * integers [left, right, rank, merged] (one cache line per probe); an empty slot's left is -1.
 */
class MergeTable {
  readonly cells: Int32Array;
  private readonly mask: number;

  constructor(count: number) {
    let size = 1024;
    while (size < count * 2) size *= 2;
    this.mask = size - 1;
    this.cells = new Int32Array(4 * size).fill(-1);
  }

  private home(a: number, b: number): number {
    let h = Math.imul(a, 0x9e3779b1) ^ Math.imul(b + 0x7f4a7c15, 0x85ebca6b);
    h ^= h >>> 15;
    return h & this.mask;
  }

  /** Offset of the pair's slot in `cells` (rank at +2, merged symbol at +3), or -1. */
  find(a: number, b: number): number {
    const cells = this.cells;
    for (let h = this.home(a, b); ; h = (h + 1) & this.mask) {
      const at = 4 * h;
      const l = cells[at]!;
      if (l === -1) return -1;
      if (l === a && cells[at + 1] === b) return at;
    }
  }

  /** A later merge of the same pair replaces the earlier one's rank (the library's Map does). */
  set(a: number, b: number, rank: number, merged: number): void {
    const cells = this.cells;
    let h = this.home(a, b);
    while (cells[4 * h] !== -1 && !(cells[4 * h] === a && cells[4 * h + 1] === b)) h = (h + 1) & this.mask;
    const at = 4 * h;
    cells[at] = a;
    cells[at + 1] = b;
    cells[at + 2] = rank;
    cells[at + 3] = merged;
  }
}

type Json = Record<string, unknown>;

const isObject = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v);

class Unsupported extends Error {}

/** A token id as this encoder stores it: an integer in [0, 2^24). */
function tokenId(v: unknown, token: string): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v >= 1 << 24) throw new Unsupported(`the id of ${JSON.stringify(token)} (${String(v)})`);
  return v;
}

function unicodeNormalizer(config: unknown): ((s: string) => string)[] {
  if (config === null || config === undefined) return [];
  if (!isObject(config)) throw new Unsupported('a normalizer that is not an object');
  switch (config.type) {
    case 'Sequence': {
      if (!Array.isArray(config.normalizers)) throw new Unsupported('a normalizer Sequence without a normalizers list');
      return config.normalizers.flatMap((n) => {
        if (n === null) throw new Unsupported('a null normalizer in a Sequence');
        return unicodeNormalizer(n);
      });
    }
    case 'NFC':
    case 'NFD':
    case 'NFKC':
    case 'NFKD': {
      const form = config.type;
      return [(s) => s.normalize(form)];
    }
    default:
      throw new Unsupported(`the normalizer ${JSON.stringify(config.type)}`);
  }
}

function splitRegex(config: Json): SplitRegex {
  if (config.behavior !== 'Isolated') throw new Unsupported(`a Split with behavior ${JSON.stringify(config.behavior)}`);
  if (config.invert) throw new Unsupported('an inverted Split');
  const pattern = config.pattern;
  let source: string;
  if (isObject(pattern) && typeof pattern.Regex === 'string') {
    try {
      source = onigurumaToJs(pattern.Regex);
    } catch (e) {
      if (e instanceof UnsupportedPattern) throw new Unsupported(`the Split regex ${JSON.stringify(pattern.Regex)}: ${e.message}`);
      throw e;
    }
  } else if (isObject(pattern) && typeof pattern.String === 'string' && pattern.String.length > 0) {
    source = literalToJs(pattern.String);
  } else {
    throw new Unsupported('a Split without a Regex or String pattern');
  }
  return { sticky: new RegExp(source, 'uy'), global: new RegExp(source, 'gu') };
}

/** The Split regexes of a pre-tokenizer that ends in ByteLevel without its own regex. */
function preTokenizer(config: unknown): SplitRegex[] {
  if (!isObject(config)) throw new Unsupported('no pre-tokenizer');
  const steps = config.type === 'Sequence' ? config.pretokenizers : [config];
  if (!Array.isArray(steps) || steps.length === 0) throw new Unsupported('a pre-tokenizer Sequence without pretokenizers');
  const last = steps[steps.length - 1] as unknown;
  if (!isObject(last) || last.type !== 'ByteLevel') throw new Unsupported('a pre-tokenizer that does not end in ByteLevel');
  if (last.use_regex !== false) throw new Unsupported('a ByteLevel pre-tokenizer with its own regex');
  if (last.add_prefix_space) throw new Unsupported('a ByteLevel pre-tokenizer that adds a prefix space');
  return steps.slice(0, -1).map((s: unknown) => {
    if (!isObject(s) || s.type !== 'Split') throw new Unsupported(`the pre-tokenizer ${JSON.stringify(isObject(s) ? s.type : s)}`);
    return splitRegex(s);
  });
}

/** Post-processors that leave the tokens as they are when no special tokens are added. */
function checkPostProcessor(config: unknown): void {
  if (config === null || config === undefined) return;
  if (!isObject(config)) throw new Unsupported('a post-processor that is not an object');
  if (config.type === 'ByteLevel') return;
  if (config.type === 'Sequence' && Array.isArray(config.processors)) {
    for (const p of config.processors as unknown[]) {
      if (p === null) throw new Unsupported('a null post-processor in a Sequence');
      checkPostProcessor(p);
    }
    return;
  }
  if (config.type === 'TemplateProcessing' && Array.isArray(config.single)) {
    const items = config.single as unknown[];
    const sequences = items.filter((it) => isObject(it) && 'Sequence' in it);
    const specials = items.filter((it) => isObject(it) && 'SpecialToken' in it);
    const a = sequences[0];
    if (sequences.length === 1 && specials.length === items.length - 1 && isObject(a) && isObject(a.Sequence) && a.Sequence.id === 'A') return;
  }
  throw new Unsupported(`the post-processor ${JSON.stringify(config.type)}`);
}

function readTables(json: unknown, config: Json): ByteLevelBpeTables {
  if (!isObject(json)) throw new Unsupported('not an object');
  // What the library's Tokenizer requires before it loads a file (it decodes ours).
  for (const key of ['model', 'decoder', 'post_processor', 'pre_tokenizer', 'normalizer']) {
    if (!(key in json)) throw new Unsupported(`no "${key}"`);
  }
  const decoder = json.decoder;
  if (decoder !== null && !(isObject(decoder) && decoder.type === 'ByteLevel')) throw new Unsupported('a decoder other than ByteLevel');
  if (config.remove_space === true) throw new Unsupported('remove_space in tokenizer_config.json');
  if (config.do_lowercase_and_remove_accent) throw new Unsupported('do_lowercase_and_remove_accent in tokenizer_config.json');
  const model = json.model;
  if (!isObject(model) || model.type !== 'BPE') throw new Unsupported(`the model ${JSON.stringify(isObject(model) ? model.type : model)}`);
  if (!isObject(model.vocab) || !Array.isArray(model.merges)) throw new Unsupported('a BPE model without a vocab object and a merges list');
  if (model.dropout !== null && model.dropout !== undefined) throw new Unsupported('BPE dropout');
  for (const key of ['end_of_word_suffix', 'continuing_subword_suffix', 'continuing_subword_prefix', 'byte_fallback', 'fuse_unk'] as const) {
    if (model[key]) throw new Unsupported(`BPE ${key}`);
  }
  const normalizers = unicodeNormalizer(json.normalizer);
  const hasNormalizer = json.normalizer !== null && json.normalizer !== undefined;
  const normalize = normalizers.length === 0 ? null : (s: string) => normalizers.reduce((t, f) => f(t), s);
  const splits = preTokenizer(json.pre_tokenizer);
  checkPostProcessor(json.post_processor);

  const vocab = new Map<string, number>();
  let maxVocabId = -1;
  for (const token in model.vocab) {
    const id = tokenId(model.vocab[token], token);
    vocab.set(token, id);
    if (id > maxVocabId) maxVocabId = id;
  }
  const vocabEntries = vocab.size;
  const unkToken = model.unk_token;
  const unkTokenId = typeof unkToken === 'string' ? vocab.get(unkToken) : undefined;

  // Added tokens by content (and normalized content); the library also writes their ids over
  // the vocabulary's (tokens_to_ids), kept here as addedIds in front of `vocab`.
  const added = new Map<string, AddedToken>();
  const addedIds = new Map<string, number>();
  const unnormalizedContents: string[] = [];
  const normalizedContents: string[] = [];
  let strips = false;
  let maxAddedId = -1;
  const addedList = json.added_tokens;
  if (!Array.isArray(addedList)) throw new Unsupported('no added_tokens list');
  for (const t of addedList as unknown[]) {
    if (!isObject(t) || typeof t.content !== 'string') throw new Unsupported('an added token without content');
    if (t.single_word) throw new Unsupported(`the single_word added token ${JSON.stringify(t.content)}`);
    const special = Boolean(t.special ?? false);
    const token: AddedToken = { id: tokenId(t.id, t.content), lstrip: Boolean(t.lstrip ?? false), rstrip: Boolean(t.rstrip ?? false) };
    strips ||= token.lstrip || token.rstrip;
    if (token.id > maxAddedId) maxAddedId = token.id;
    addedIds.set(t.content, token.id);
    added.set(t.content, token);
    if (Boolean(t.normalized ?? !special) && hasNormalizer) {
      const content = normalize === null ? t.content : normalize(t.content);
      normalizedContents.push(content);
      added.set(content, token);
    } else {
      unnormalizedContents.push(t.content);
    }
  }
  const tokenToId = (token: string): number | undefined => addedIds.get(token) ?? vocab.get(token);
  const idOf = (token: string): number | undefined => added.get(token)?.id ?? tokenToId(token) ?? unkTokenId;

  // Symbols are the strings BPE builds: a vocabulary string is numbered by its id there (one
  // string per id, checked), any other string past the largest id. A symbol the library does
  // not find in tokens_to_ids comes out as the unk token, or not at all when there is none.
  const seen = new Uint8Array(maxVocabId + 1);
  for (const id of vocab.values()) {
    if (seen[id]) throw new Unsupported(`two vocabulary strings with the id ${id}`);
    seen[id] = 1;
  }
  const unkId = unkToken !== null && unkToken !== undefined ? idOf(String(unkToken)) : -1;
  const extras = new Map<string, number>();
  const extraIds: number[] = [];
  const symbol = (s: string): number => {
    const v = vocab.get(s);
    if (v !== undefined) return v;
    let k = extras.get(s);
    if (k === undefined) {
      k = maxVocabId + 1 + extraIds.length;
      extras.set(s, k);
      const id = tokenToId(s) !== undefined ? idOf(s) : unkId;
      if (id === undefined) throw new Unsupported(`the unk token ${JSON.stringify(unkToken)} has no id`);
      extraIds.push(id);
    }
    return k;
  };
  const byteSymbol = Int32Array.from(BYTE_CHARS, symbol);
  const merges = new MergeTable(model.merges.length);
  // The library reads every merge in the format of the first: [a, b] pairs or "a b" strings
  // (split(' ', 2): the second part ends at the next space).
  const pairs = Array.isArray(model.merges[0]);
  for (let rank = 0; rank < model.merges.length; rank++) {
    const m: unknown = model.merges[rank];
    let a: unknown;
    let b: unknown;
    if (pairs) {
      if (!Array.isArray(m)) continue;
      [a, b] = m as unknown[];
    } else {
      if (typeof m !== 'string') continue;
      const space = m.indexOf(' ');
      if (space < 0) continue;
      const end = m.indexOf(' ', space + 1);
      a = m.slice(0, space);
      b = m.slice(space + 1, end < 0 ? m.length : end);
    }
    if (typeof a !== 'string' || typeof b !== 'string') continue;
    merges.set(symbol(a), symbol(b), rank, symbol(a + b));
  }
  const symbolId = new Int32Array(maxVocabId + 1 + extraIds.length);
  for (let id = 0; id <= maxVocabId; id++) symbolId[id] = seen[id] ? id : -1;
  for (const [k, token] of added) {
    const v = vocab.get(k);
    if (v !== undefined) symbolId[v] = token.id;
  }
  symbolId.set(extraIds, maxVocabId + 1);
  // The library's vocabulary array: as long as its vocab map, then written at every id.
  const vocabSize = Math.max(vocabEntries, maxVocabId + 1, maxAddedId + 1);

  return {
    splits, normalize, unnormalized: new AddedTokenSplitter(unnormalizedContents), normalized: new AddedTokenSplitter(normalizedContents),
    added, strips, tokenToId, vocabSize, ignoreMerges: model.ignore_merges === true, byteSymbol, symbolId, idOf, merges,
  };
}

/** A word's ids: one id, or several (none when the library drops every symbol). */
type WordIds = number | number[];

export class ByteLevelBpe {
  private hot = new Map<string, WordIds>();
  private cold = new Map<string, WordIds>();
  /** Scratch of the merge loops, grown to the longest word seen. */
  private symbols = new Int32Array(256);
  private ranks = new Int32Array(256);
  private slots = new Int32Array(256);
  private prev = new Int32Array(256);
  private next = new Int32Array(256);
  private heap = new Float64Array(256);

  /** Id of a token given by its text, as the library's token_to_id (added tokens over the vocabulary). */
  readonly tokenToId: (token: string) => number | undefined;
  /** One more than the largest id, as the length of the library's vocabulary. */
  readonly vocabSize: number;

  constructor(private readonly t: ByteLevelBpeTables) {
    this.tokenToId = t.tokenToId;
    this.vocabSize = t.vocabSize;
  }

  /** Token ids of `text` (no bos/eos), equal to the library's. */
  encode(text: string): number[] {
    const t = this.t;
    const out: number[] = [];
    const sections = t.unnormalized.split(text);
    if (t.strips) this.stripAround(sections);
    for (const section of sections) {
      if (section.length === 0) continue;
      const token = this.addedToken(section);
      if (token !== undefined) { out.push(token.id); continue; }
      const normalized = t.normalize === null ? section : t.normalize(section);
      if (normalized.length === 0) continue;
      const parts = t.normalized.split(normalized);
      if (t.strips) this.stripAround(parts);
      for (const part of parts) {
        if (part.length === 0) continue;
        const token2 = this.addedToken(part);
        if (token2 !== undefined) out.push(token2.id);
        else this.preTokenize(part, 0, out);
      }
    }
    return out;
  }

  private addedToken(s: string): AddedToken | undefined {
    return this.t.added.get(s);
  }

  /** An added token's lstrip/rstrip trims the text beside it (JavaScript trimEnd/trimStart, as the library). */
  private stripAround(parts: string[]): void {
    for (let i = 0; i < parts.length; i++) {
      const token = this.addedToken(parts[i]!);
      if (!token) continue;
      if (token.lstrip && i > 0) parts[i - 1] = parts[i - 1]!.trimEnd();
      if (token.rstrip && i < parts.length - 1) parts[i + 1] = parts[i + 1]!.trimStart();
    }
  }

  /**
   * Split `piece` with Split regex `level`, each match and each gap between matches going on to
   * the next level, as the library's regex_split over String.matchAll (an empty match splits
   * nothing off but moves on by one code point). Past the last level, a piece is a word.
   */
  private preTokenize(piece: string, level: number, out: number[]): void {
    const splits = this.t.splits;
    if (level === splits.length) { this.word(piece, out); return; }
    const { sticky, global } = splits[level]!;
    const n = piece.length;
    let from = 0;
    let prev = 0;
    while (from <= n) {
      let start: number;
      let end: number;
      sticky.lastIndex = from;
      if (sticky.test(piece)) {
        start = from;
        end = sticky.lastIndex;
      } else if (from === n) {
        break;
      } else {
        global.lastIndex = from;
        const m = global.exec(piece);
        if (m === null) break;
        start = m.index;
        end = start + m[0].length;
      }
      if (prev < start) this.preTokenize(piece.slice(prev, start), level + 1, out);
      if (end > start) this.preTokenize(piece.slice(start, end), level + 1, out);
      prev = end;
      from = end > start ? end : advance(piece, end);
    }
    if (prev < n) this.preTokenize(prev === 0 ? piece : piece.slice(prev), level + 1, out);
  }

  private word(word: string, out: number[]): void {
    let ids = this.hot.get(word);
    if (ids === undefined) {
      ids = this.cold.get(word) ?? this.bpe(word);
      if (word.length <= MAX_CACHED_CHARS) {
        this.hot.set(word, ids);
        if (this.hot.size >= CACHE_GENERATION) { this.cold = this.hot; this.hot = new Map(); }
      }
    }
    if (typeof ids === 'number') out.push(ids);
    else for (let i = 0; i < ids.length; i++) out.push(ids[i]!);
  }

  /** The ids of one word (a pre-tokenized piece of text). */
  private bpe(word: string): WordIds {
    const t = this.t;
    let n = this.utf8Symbols(word);
    if (t.ignoreMerges) {
      const whole = this.byteLevelText(word);
      if (t.tokenToId(whole) !== undefined) return t.idOf(whole)!;
    }
    if (n > 1) n = n <= SHORT_WORD ? this.mergeShort(n) : this.mergeLong(n);
    const symbols = this.symbols;
    const symbolId = t.symbolId;
    if (n === 1 && symbolId[symbols[0]!]! >= 0) return symbolId[symbols[0]!]!;
    const ids: number[] = [];
    for (let i = 0; i < n; i++) {
      const id = symbolId[symbols[i]!]!;
      if (id >= 0) ids.push(id);
    }
    return ids.length === 1 ? ids[0]! : ids;
  }

  private grow(n: number): void {
    if (this.symbols.length >= n) return;
    let size = this.symbols.length;
    while (size < n) size *= 2;
    this.symbols = new Int32Array(size);
    this.ranks = new Int32Array(size);
    this.slots = new Int32Array(size);
    this.prev = new Int32Array(size);
    this.next = new Int32Array(size);
    this.heap = new Float64Array(3 * size);
  }

  /** The word's UTF-8 bytes (lone surrogates as U+FFFD, as TextEncoder) as byte symbols; returns their count. */
  private utf8Symbols(word: string): number {
    this.grow(word.length * 3);
    const s = this.symbols;
    const bs = this.t.byteSymbol;
    const len = word.length;
    let n = 0;
    for (let i = 0; i < len; i++) {
      let c = word.charCodeAt(i);
      if (c < 0x80) { s[n++] = bs[c]!; continue; }
      if (c < 0x800) { s[n++] = bs[0xc0 | (c >> 6)]!; s[n++] = bs[0x80 | (c & 0x3f)]!; continue; }
      if (c >= 0xd800 && c <= 0xdfff) {
        const d = i + 1 < len ? word.charCodeAt(i + 1) : 0;
        if (c <= 0xdbff && d >= 0xdc00 && d <= 0xdfff) {
          const cp = ((c - 0xd800) << 10) + (d - 0xdc00) + 0x10000;
          s[n++] = bs[0xf0 | (cp >> 18)]!;
          s[n++] = bs[0x80 | ((cp >> 12) & 0x3f)]!;
          s[n++] = bs[0x80 | ((cp >> 6) & 0x3f)]!;
          s[n++] = bs[0x80 | (cp & 0x3f)]!;
          i++;
          continue;
        }
        c = 0xfffd;
      }
      s[n++] = bs[0xe0 | (c >> 12)]!;
      s[n++] = bs[0x80 | ((c >> 6) & 0x3f)]!;
      s[n++] = bs[0x80 | (c & 0x3f)]!;
    }
    return n;
  }

  /** The word as ByteLevel writes it (for ignore_merges' whole-word lookup). */
  private byteLevelText(word: string): string {
    let out = '';
    for (const b of utf8.encode(word)) out += BYTE_CHARS[b];
    return out;
  }

  /** Pair `i` of the symbols: its slot in the merge table and rank. */
  private rankPair(i: number): void {
    const slot = this.t.merges.find(this.symbols[i]!, this.symbols[i + 1]!);
    this.slots[i] = slot;
    this.ranks[i] = slot < 0 ? NO_RANK : this.t.merges.cells[slot + 2]!;
  }

  /** Merge `n` symbols in place, scanning all pairs for the lowest rank each time; returns the new count. */
  private mergeShort(n: number): number {
    const s = this.symbols;
    const ranks = this.ranks;
    const slots = this.slots;
    const cells = this.t.merges.cells;
    for (let i = 0; i < n - 1; i++) this.rankPair(i);
    while (n > 1) {
      let best = NO_RANK;
      let at = -1;
      for (let i = 0; i < n - 1; i++) if (ranks[i]! < best) { best = ranks[i]!; at = i; }
      if (at < 0) break;
      s[at] = cells[slots[at]! + 3]!;
      for (let i = at + 1; i < n - 1; i++) { s[i] = s[i + 1]!; ranks[i] = ranks[i + 1]!; slots[i] = slots[i + 1]!; }
      n--;
      if (at > 0) this.rankPair(at - 1);
      if (at < n - 1) this.rankPair(at);
    }
    return n;
  }

  /**
   * Merge `n` symbols in place with a linked list and a min-heap of (rank, left position): a
   * merged symbol keeps its left position, so ties go leftmost, as in the library's queue.
   * Stale entries are skipped when the pair at their position no longer has their rank.
   */
  private mergeLong(n: number): number {
    const s = this.symbols;
    const prev = this.prev;
    const next = this.next;
    const merges = this.t.merges;
    const heap = this.heap;
    let size = 0;
    const push = (rank: number, pos: number): void => {
      let i = size++;
      const key = rank * 4294967296 + pos;
      while (i > 0) {
        const parent = (i - 1) >> 1;
        if (heap[parent]! <= key) break;
        heap[i] = heap[parent]!;
        i = parent;
      }
      heap[i] = key;
    };
    const pop = (): number => {
      const top = heap[0]!;
      const last = heap[--size]!;
      let i = 0;
      for (;;) {
        let child = 2 * i + 1;
        if (child >= size) break;
        if (child + 1 < size && heap[child + 1]! < heap[child]!) child++;
        if (heap[child]! >= last) break;
        heap[i] = heap[child]!;
        i = child;
      }
      heap[i] = last;
      return top;
    };
    const offer = (pos: number): void => {
      const slot = merges.find(s[pos]!, s[next[pos]!]!);
      if (slot >= 0) push(merges.cells[slot + 2]!, pos);
    };
    for (let i = 0; i < n; i++) { prev[i] = i - 1; next[i] = i + 1 < n ? i + 1 : -1; }
    for (let i = 0; i < n - 1; i++) offer(i);
    while (size > 0) {
      const key = pop();
      const rank = Math.floor(key / 4294967296);
      const pos = key - rank * 4294967296;
      const right = next[pos]!;
      if (s[pos]! < 0 || right < 0) continue;
      const slot = merges.find(s[pos]!, s[right]!);
      if (slot < 0 || merges.cells[slot + 2] !== rank) continue;
      s[pos] = merges.cells[slot + 3]!;
      s[right] = -1;
      const after = next[right]!;
      next[pos] = after;
      if (after >= 0) { prev[after] = pos; offer(pos); }
      if (prev[pos]! >= 0) offer(prev[pos]!);
    }
    let m = 0;
    for (let i = 0; i >= 0; i = next[i]!) s[m++] = s[i]!;
    return m;
  }
}

/** Where String.matchAll searches next after an empty match at `i` (one code point on). */
function advance(s: string, i: number): number {
  if (i + 1 >= s.length) return i + 1;
  const c = s.charCodeAt(i);
  if (c >= 0xd800 && c <= 0xdbff) {
    const d = s.charCodeAt(i + 1);
    if (d >= 0xdc00 && d <= 0xdfff) return i + 2;
  }
  return i + 1;
}

export type ByteLevelBpeLoad = { encoder: ByteLevelBpe } | { unsupported: string };

/**
 * v4tune's encoder for a parsed tokenizer.json (and its tokenizer_config.json), or why the file
 * is not one it reproduces exactly.
 */
export function byteLevelBpe(json: unknown, config: Record<string, unknown> = {}): ByteLevelBpeLoad {
  try {
    return { encoder: new ByteLevelBpe(readTables(json, config)) };
  } catch (e) {
    if (e instanceof Unsupported) return { unsupported: e.message };
    throw e;
  }
}
