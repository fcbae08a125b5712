// Documents and how one becomes tokens with its loss mask: plain text (bos, text, eos; loss on
// every token) and chat, rendered by DeepSeek V4's chat template (src/chat/template.ts, the Jinja
// template v4tune also writes into every model folder's tokenizer_config.json) and tokenized as
// one string, as transformers' apply_chat_template does:
//
//   <bos>{system}<｜User｜>{user}<｜Assistant｜></think>{answer}<eos><｜User｜>{user}<｜Assistant｜></think>{answer}<eos>
//
// Loss mask (design.md, "Chat loss mask"): for every assistant turn, the tokens after
// `<｜Assistant｜>` up to and including that turn's `<eos>`; everything else 0. A chat the template
// cannot reproduce (chatRefusal) is refused with the reason.
import { InputError } from '../errors.js';
import { ASSISTANT_TOKEN, chatRefusal, renderChat, reservedTexts, THINK_END_TOKEN, THINK_START_TOKEN, USER_TOKEN, type ChatMessage } from '../chat/template.js';
import type { TextTokenizer } from './tokenizer.js';

export type { ChatMessage, ChatRole } from '../chat/template.js';
export type Document =
  | { kind: 'text'; text: string }
  | { kind: 'chat'; messages: ChatMessage[] };

/** A document's tokens and per-token loss mask (1 = the token is a training target). */
export interface EncodedDocument {
  ids: Int32Array;
  mask: Uint8Array;
}

export { ASSISTANT_TOKEN, THINK_END_TOKEN, THINK_START_TOKEN, USER_TOKEN } from '../chat/template.js';

export interface ChatTokenIds {
  user: number;
  assistant: number;
  thinkStart: number;
  thinkEnd: number;
}

/** The chat markers' ids, or the names of those the tokenizer lacks. */
export function chatTokenIds(tok: TextTokenizer): ChatTokenIds | { missing: string[] } {
  const names = [USER_TOKEN, ASSISTANT_TOKEN, THINK_START_TOKEN, THINK_END_TOKEN];
  const ids = names.map((n) => tok.tokenToId(n));
  const missing = names.filter((_, i) => ids[i] === undefined);
  if (missing.length > 0) return { missing };
  const [user, assistant, thinkStart, thinkEnd] = ids as [number, number, number, number];
  return { user, assistant, thinkStart, thinkEnd };
}

/** Text document: bos, the text's tokens, eos; loss on every token. */
export function encodeText(tok: TextTokenizer, text: string): EncodedDocument {
  const body = tok.encode(text);
  const ids = new Int32Array(body.length + 2);
  ids[0] = tok.bosId;
  for (let i = 0; i < body.length; i++) ids[i + 1] = body[i]!;
  ids[body.length + 1] = tok.eosId;
  return { ids, mask: new Uint8Array(ids.length).fill(1) };
}

/** The text of a special token id: the name the tokenizer maps to it. */
function specialText(tok: TextTokenizer, id: number, names: readonly string[]): string {
  return names.find((n) => tok.tokenToId(n) === id) ?? tok.decode([id]);
}

/** bos and eos as the template writes them (`bos_token` / `eos_token` of tokenizer_config.json). */
export function chatBosEos(tok: TextTokenizer): { bosToken: string; eosToken: string } {
  return {
    bosToken: specialText(tok, tok.bosId, ['<｜begin▁of▁sentence｜>', '<s>', '<|begin_of_text|>', '<bos>']),
    eosToken: specialText(tok, tok.eosId, ['<｜end▁of▁sentence｜>', '</s>', '<|end_of_text|>', '<eos>']),
  };
}

/**
 * Chat document: V4's chat template rendered and tokenized as one string (a chat ending with a
 * user turn renders as with add_generation_prompt, its opening marker masked out), with the
 * assistant-only loss mask read off the tokens (see the file header).
 */
export function encodeChat(tok: TextTokenizer, special: ChatTokenIds, messages: ChatMessage[]): EncodedDocument {
  const be = chatBosEos(tok);
  const why = chatRefusal(messages, reservedTexts(be.bosToken, be.eosToken));
  if (why) throw new InputError(`chat refused: ${why}`);
  const ids = Int32Array.from(tok.encode(renderChat(messages, { ...be, addGenerationPrompt: true })));
  const mask = new Uint8Array(ids.length);
  let open = -1; // index of the last <｜Assistant｜> whose eos has not come yet
  let answers = 0;
  for (let t = 0; t < ids.length; t++) {
    if (ids[t] === special.assistant) open = t;
    else if (open >= 0 && ids[t] === tok.eosId) {
      mask.fill(1, open + 1, t + 1);
      open = -1;
      answers++;
    }
  }
  const expected = messages.filter((m) => m.role === 'assistant').length;
  if (answers !== expected) throw new InputError(`chat refused: the rendered chat holds ${answers} answers but the messages hold ${expected} assistant turns`);
  return { ids, mask };
}

/** Tokens and loss mask of any document. */
export function encodeDocument(tok: TextTokenizer, special: ChatTokenIds | null, doc: Document): EncodedDocument {
  if (doc.kind === 'text') return encodeText(tok, doc.text);
  if (special === null) throw new Error('chat document without chat token ids');
  return encodeChat(tok, special, doc.messages);
}
