// DeepSeek V4's chat format as one Jinja `chat_template`: the text training renders (src/data/
// documents.ts renders every chat through it) and the template v4tune writes into the
// tokenizer_config.json of every model, merged and quantized folder, so transformers'
// `apply_chat_template` (and the GGUF, which embeds it) gives the ids the adapter was trained on.
//
//   {bos}{system}<｜User｜>{user}<｜Assistant｜></think>{answer}{eos}<｜User｜>…
//
// (DeepSeek's encoding_dsv4.py, chat mode.) Thinking mode — the final assistant turn carries
// `reasoning_content`, or the caller passes `thinking=true` for a generation prompt — opens the
// turn after the LAST user message with `<think>` and renders its answer as
// `{reasoning}</think>{answer}{eos}`; earlier turns drop their reasoning and keep `</think>`. A user
// turn followed by a user turn gets no `<｜Assistant｜>`; a final user turn gets
// `<｜Assistant｜>` and the opening marker only with `add_generation_prompt`. bos is rendered by
// the template (the tokenizer's post-processor adds none), so apply_chat_template's ids start
// with it exactly as training's do.
import { Template } from '@huggingface/jinja';

export const USER_TOKEN = '<｜User｜>';
export const ASSISTANT_TOKEN = '<｜Assistant｜>';
export const THINK_START_TOKEN = '<think>';
export const THINK_END_TOKEN = '</think>';

export type ChatRole = 'system' | 'user' | 'assistant';

export interface ChatMessage {
  role: ChatRole;
  content: string;
  /** Assistant reasoning; rendered only on the assistant turn after the last user turn. */
  reasoning_content?: string;
}

/** The Jinja source (Jinja2 as transformers runs it; @huggingface/jinja renders it identically). */
export const V4_CHAT_TEMPLATE = [
  "{%- set ns = namespace(last_user=-1, thinking=(thinking is defined and thinking)) -%}",
  "{%- for m in messages -%}{%- if m['role'] == 'user' -%}{%- set ns.last_user = loop.index0 -%}{%- endif -%}{%- endfor -%}",
  "{%- for m in messages -%}{%- if m['role'] == 'assistant' and loop.index0 > ns.last_user and m['reasoning_content'] is string -%}{%- set ns.thinking = true -%}{%- endif -%}{%- endfor -%}",
  '{{- bos_token -}}',
  '{%- for m in messages -%}',
  "{%- if m['role'] == 'system' -%}",
  "{{- m['content'] -}}",
  "{%- elif m['role'] == 'user' -%}",
  `{{- '${USER_TOKEN}' + m['content'] -}}`,
  "{%- if (loop.last and add_generation_prompt) or (not loop.last and messages[loop.index0 + 1]['role'] == 'assistant') -%}",
  `{{- '${ASSISTANT_TOKEN}' -}}`,
  `{%- if ns.thinking and loop.index0 == ns.last_user -%}{{- '${THINK_START_TOKEN}' -}}{%- else -%}{{- '${THINK_END_TOKEN}' -}}{%- endif -%}`,
  '{%- endif -%}',
  '{%- else -%}',
  "{%- if ns.thinking and loop.index0 > ns.last_user -%}",
  "{%- if m['reasoning_content'] is string -%}{{- m['reasoning_content'] -}}{%- endif -%}",
  `{{- '${THINK_END_TOKEN}' -}}`,
  '{%- endif -%}',
  "{{- m['content'] + eos_token -}}",
  '{%- endif -%}',
  '{%- endfor -%}',
].join('');

const compiled = new Map<string, Template>();

export interface RenderChatOptions {
  bosToken: string;
  eosToken: string;
  /** end a chat whose last turn is a user turn with `<｜Assistant｜>` and the opening marker */
  addGenerationPrompt?: boolean;
  /** open the answer to the last user turn with `<think>` (generation prompts) */
  thinking?: boolean;
}

/** The texts the format reserves: content holding one would tokenize as that marker. */
export function reservedTexts(bosToken: string, eosToken: string): string[] {
  return [bosToken, eosToken, USER_TOKEN, ASSISTANT_TOKEN, THINK_START_TOKEN, THINK_END_TOKEN].filter((t) => t.length > 0);
}

/**
 * Why the template cannot reproduce this chat as training means it, or null. The template renders
 * any list, but training marks the loss from the rendered tokens (after each `<｜Assistant｜>`
 * through its eos), so an assistant turn must directly follow a user turn, and no text may hold a
 * format marker (it would tokenize as the marker, not as the text).
 */
export function chatRefusal(messages: readonly ChatMessage[], reserved: readonly string[] = reservedTexts('<｜begin▁of▁sentence｜>', '<｜end▁of▁sentence｜>')): string | null {
  for (const [i, m] of messages.entries()) {
    if (m.role !== 'system' && m.role !== 'user' && m.role !== 'assistant') return `messages[${i}].role ${JSON.stringify(m.role)} is not one of system, user, assistant`;
    if (m.role === 'assistant' && messages[i - 1]?.role !== 'user') {
      return `messages[${i}] is an assistant turn that does not follow a user turn: V4's format opens an answer only after <｜User｜>…<｜Assistant｜>, so the template cannot render it as an answer (merge it into the previous assistant turn or add the user turn)`;
    }
    for (const [field, text] of [['content', m.content], ['reasoning_content', m.reasoning_content]] as const) {
      if (typeof text !== 'string') continue;
      const hit = reserved.find((r) => text.includes(r));
      if (hit) return `messages[${i}].${field} contains ${JSON.stringify(hit)}, a marker of V4's chat format: it would tokenize as the marker, so the rendered chat would not read back as these messages`;
    }
  }
  return null;
}

/** The chat rendered by V4_CHAT_TEMPLATE (or `template`, another folder's), as transformers' apply_chat_template(tokenize=False) renders it. */
export function renderChat(messages: readonly ChatMessage[], o: RenderChatOptions, template = V4_CHAT_TEMPLATE): string {
  let t = compiled.get(template);
  if (!t) {
    t = new Template(template);
    compiled.set(template, t);
  }
  return t.render({
    messages: messages.map((m) => ({ ...m })),
    bos_token: o.bosToken,
    eos_token: o.eosToken,
    add_generation_prompt: o.addGenerationPrompt === true,
    ...(o.thinking ? { thinking: true } : {}),
  });
}
