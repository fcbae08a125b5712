// Documents and how one becomes tokens with its loss mask: plain text (bos, text, eos; loss on
// every token) and chat, rendered in DeepSeek V4's prompt format (DeepSeek's encoding_dsv4.py,
// chat mode; thinking mode when the final assistant turn carries `reasoning_content`):
//
//   <bos>{system}<｜User｜>{user}<｜Assistant｜></think>{answer}<eos><｜User｜>{user}<｜Assistant｜></think>{answer}<eos>
//
// Thinking mode: the transition after the LAST user turn is `<think>` and that turn's answer is
// `{reasoning}</think>{answer}<eos>`; earlier turns drop their reasoning (drop_thinking) and keep
// `</think>`. A user turn followed by a user turn gets no `<｜Assistant｜>` tag. Loss mask
// (design.md, "Chat loss mask"): for every assistant turn, the tokens after `<｜Assistant｜>` up to
// and including that turn's `<eos>`; everything else 0.
import type { TextTokenizer } from './tokenizer.js';

export type ChatRole = 'system' | 'user' | 'assistant';

export interface ChatMessage {
  role: ChatRole;
  content: string;
  /** Assistant reasoning; rendered only on assistant turns after the last user turn. */
  reasoning_content?: string;
}

export type Document =
  | { kind: 'text'; text: string }
  | { kind: 'chat'; messages: ChatMessage[] };

/** A document's tokens and per-token loss mask (1 = the token is a training target). */
export interface EncodedDocument {
  ids: Int32Array;
  mask: Uint8Array;
}

export const USER_TOKEN = '<｜User｜>';
export const ASSISTANT_TOKEN = '<｜Assistant｜>';
export const THINK_START_TOKEN = '<think>';
export const THINK_END_TOKEN = '</think>';

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

/** Growable token + mask buffer. */
class TokenBuilder {
  ids: number[] = [];
  mask: number[] = [];
  push(ids: ArrayLike<number>, m: 0 | 1): void {
    for (let i = 0; i < ids.length; i++) { this.ids.push(ids[i]!); this.mask.push(m); }
  }
  done(): EncodedDocument {
    return { ids: Int32Array.from(this.ids), mask: Uint8Array.from(this.mask) };
  }
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

/** Chat document in V4's prompt format with the assistant-only loss mask (see the file header). */
export function encodeChat(tok: TextTokenizer, special: ChatTokenIds, messages: ChatMessage[]): EncodedDocument {
  let lastUser = -1;
  messages.forEach((m, i) => { if (m.role === 'user') lastUser = i; });
  const thinking = messages.some((m, i) => m.role === 'assistant' && i > lastUser && typeof m.reasoning_content === 'string');
  const b = new TokenBuilder();
  b.push([tok.bosId], 0);
  messages.forEach((m, i) => {
    if (m.role === 'system') {
      b.push(tok.encode(m.content), 0);
    } else if (m.role === 'user') {
      b.push([special.user], 0);
      b.push(tok.encode(m.content), 0);
      const next = messages[i + 1];
      if (next === undefined || next.role === 'assistant') {
        b.push([special.assistant], 0);
        // The transition token belongs to the assistant turn that follows (masked in when there is one).
        const answered: 0 | 1 = next === undefined ? 0 : 1;
        b.push([thinking && i >= lastUser ? special.thinkStart : special.thinkEnd], answered);
      }
    } else {
      if (thinking && i > lastUser) {
        b.push(tok.encode(m.reasoning_content ?? ''), 1);
        b.push([special.thinkEnd], 1);
      }
      b.push(tok.encode(m.content), 1);
      b.push([tok.eosId], 1);
    }
  });
  return b.done();
}

/** Tokens and loss mask of any document. */
export function encodeDocument(tok: TextTokenizer, special: ChatTokenIds | null, doc: Document): EncodedDocument {
  if (doc.kind === 'text') return encodeText(tok, doc.text);
  if (special === null) throw new Error('chat document without chat token ids');
  return encodeChat(tok, special, doc.messages);
}
