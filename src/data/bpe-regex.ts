// Oniguruma patterns of tokenizer.json `Split` pre-tokenizers, as JavaScript `u` regexes with the
// same matches as @huggingface/tokenizers gives them. That library rewrites each pattern
// (rewrite_oniguruma_to_js); this reads the subset byte-level BPE tokenizers use and rewrites it
// the same way: \s, \S, \d, \D become the Unicode properties Oniguruma means by them
// (\p{White_Space}: JavaScript's own \s adds U+FEFF and misses U+0085), a hyphen that cannot
// start a range is escaped, escaped punctuation JavaScript's `u` mode refuses is unescaped.
// Anything outside the subset (., ^, $, \b, \w, inline flags, atomic groups, possessive
// quantifiers, nested classes, class intersection, \x, \u...) is refused: the caller then
// leaves the whole tokenizer to the library.

/** Escapes rewritten the same way in and out of a character class. */
const PROPERTY_ESCAPES: Record<string, string> = {
  s: '\\p{White_Space}',
  S: '\\P{White_Space}',
  d: '\\p{Nd}',
  D: '\\P{Nd}',
};
const CONTROL_ESCAPES = new Set(['n', 'r', 't', 'f', 'v']);
/** Characters JavaScript regexes give a meaning; escaped, they stay escaped. */
const SYNTAX_CHARS = '^$\\.*+?()[]{}|/';

export class UnsupportedPattern extends Error {}

/** `\p{Name}` as JavaScript accepts it, or a refusal (the library would retry it as a Script). */
function property(text: string): string {
  try {
    new RegExp(text, 'u');
  } catch {
    throw new UnsupportedPattern(`${text} is not a Unicode property JavaScript knows`);
  }
  if (/^\\[pP]\{Word\}$/.test(text)) throw new UnsupportedPattern(`${text} (rewritten to a word class by the library)`);
  return text;
}

/** One escape at `i` (the backslash): [JavaScript text, next index, whether it is a set]. */
function escapeAt(src: string, i: number, inClass: boolean): [string, number, boolean] {
  const braced = /^\\([pP])\{([^}]*)\}/.exec(src.slice(i));
  if (braced) return [property(braced[0]), i + braced[0].length, true];
  const c = src[i + 1];
  if (c === undefined) throw new UnsupportedPattern('a trailing backslash');
  const set = PROPERTY_ESCAPES[c];
  if (set !== undefined) return [set, i + 2, true];
  if (CONTROL_ESCAPES.has(c)) return [`\\${c}`, i + 2, false];
  if (/[A-Za-z0-9]/.test(c)) throw new UnsupportedPattern(`\\${c}`);
  const code = src.codePointAt(i + 1)!;
  const ch = String.fromCodePoint(code);
  const keepEscaped = SYNTAX_CHARS.includes(ch) || (inClass && ch === '-');
  return [keepEscaped ? `\\${ch}` : ch, i + 1 + ch.length, false];
}

/** The character class opening at `start`: [JavaScript text, index after its `]`]. */
function characterClass(src: string, start: number): [string, number] {
  let i = start + 1;
  let out = '[';
  if (src[i] === '^') { out += '^'; i++; }
  // What the class ends with so far decides what a `-` means: a range only after a single char.
  let tail: 'none' | 'char' | 'set' | 'range' | 'complete' = 'none';
  while (i < src.length) {
    const c = src[i]!;
    if (c === ']') {
      if (tail === 'none') throw new UnsupportedPattern('an empty character class or a leading ]');
      if (tail === 'range') throw new UnsupportedPattern('a range without an end');
      return [`${out}]`, i + 1];
    }
    if (c === '[') throw new UnsupportedPattern('a nested character class');
    if (src.startsWith('&&', i)) throw new UnsupportedPattern('a character class intersection');
    if (c === '-') {
      const last = src[i + 1] === ']';
      if (tail === 'char' && !last) { out += '-'; tail = 'range'; }
      else if (tail === 'set' && !last) throw new UnsupportedPattern('a range from a set');
      else { out += '\\-'; tail = tail === 'range' ? 'complete' : 'char'; }
      i++;
      continue;
    }
    let text: string;
    let isSet = false;
    if (c === '\\') {
      [text, i, isSet] = escapeAt(src, i, true);
    } else {
      text = String.fromCodePoint(src.codePointAt(i)!);
      i += text.length;
      if (text === '^') text = '\\^';
    }
    if (isSet && tail === 'range') throw new UnsupportedPattern('a range to a set');
    out += text;
    tail = isSet ? 'set' : tail === 'range' ? 'complete' : 'char';
  }
  throw new UnsupportedPattern('an unterminated character class');
}

/** The JavaScript source of an Oniguruma pattern, or an UnsupportedPattern naming what is not handled. */
export function onigurumaToJs(src: string): string {
  let out = '';
  // Whether the last thing written can take a quantifier, and whether it is one.
  let atom = false;
  let quantified = false;
  const emitAtom = (text: string): void => { out += text; atom = true; quantified = false; };
  for (let i = 0; i < src.length;) {
    const c = src[i]!;
    if (c === '\\') {
      const [text, next] = escapeAt(src, i, false);
      emitAtom(text);
      i = next;
      continue;
    }
    switch (c) {
      case '[': {
        const [text, next] = characterClass(src, i);
        emitAtom(text);
        i = next;
        continue;
      }
      case '(': {
        const prefix = /^\((?:\?:|\?=|\?!|\?<=|\?<!)?/.exec(src.slice(i))![0];
        if (src[i + prefix.length] === '?') throw new UnsupportedPattern(`the group ${src.slice(i, i + 4)}`);
        out += prefix;
        atom = false;
        quantified = false;
        i += prefix.length;
        continue;
      }
      case ')':
        out += ')';
        atom = true;
        quantified = false;
        i++;
        continue;
      case '|':
        out += '|';
        atom = false;
        quantified = false;
        i++;
        continue;
      case '{': {
        const q = /^\{\d+(?:,\d*)?\}/.exec(src.slice(i));
        if (!q || !atom || quantified) throw new UnsupportedPattern(`the brace at ${i}`);
        i += q[0].length;
        if (src[i] === '+' || src[i] === '*') throw new UnsupportedPattern(`a quantified quantifier at ${i}`);
        out += q[0];
        quantified = true;
        continue;
      }
      case '*':
      case '+':
      case '?':
        if (!atom) throw new UnsupportedPattern(`a quantifier without an atom at ${i}`);
        if (quantified) {
          // After a quantifier only `?` (lazy) means the same to both engines; `+` is possessive.
          if (c !== '?') throw new UnsupportedPattern(`a possessive or doubled quantifier at ${i}`);
          out += '?';
          atom = false;
          i++;
          continue;
        }
        out += c;
        quantified = true;
        i++;
        continue;
      case '.':
      case '^':
      case '$':
      case ']':
      case '}':
        throw new UnsupportedPattern(`"${c}" at ${i}`);
      default: {
        const ch = String.fromCodePoint(src.codePointAt(i)!);
        emitAtom(ch);
        i += ch.length;
      }
    }
  }
  try {
    new RegExp(out, 'u');
  } catch (e) {
    throw new UnsupportedPattern(`JavaScript refuses it (${(e as Error).message})`);
  }
  return out;
}

/** A literal string pattern, escaped as the library escapes it. */
export function literalToJs(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
