// A chat prompt for generation: the messages rendered by the model folder's chat template (the
// one v4tune writes into tokenizer_config.json, or another tool's), with the assistant turn opened.
import { chatBosEos } from '../data/documents.js';
import type { TextTokenizer } from '../data/tokenizer.js';
import { InputError } from '../errors.js';
import { readJsonFile } from '../fsutil.js';
import { readChatTemplate } from './config.js';
import { chatRefusal, renderChat, type ChatMessage, type ChatRole } from './template.js';

export interface ChatPrompt {
  ids: number[];
  text: string;
  /** where the template came from */
  template: 'model folder' | 'v4tune (the folder has none)';
}

export function chatPrompt(modelDir: string, tok: TextTokenizer, messages: readonly ChatMessage[], thinking = false): ChatPrompt {
  if (messages.length === 0 || messages[messages.length - 1]!.role !== 'user') throw new InputError('chat: the messages must end with a user turn (the answer is generated)');
  const why = chatRefusal(messages);
  if (why) throw new InputError(`chat: ${why}`);
  const folder = readChatTemplate(modelDir);
  const text = renderChat(messages, { ...chatBosEos(tok), addGenerationPrompt: true, thinking }, folder ?? undefined);
  return { ids: tok.encode(text), text, template: folder ? 'model folder' : 'v4tune (the folder has none)' };
}

/** Messages from a JSON file: an array of {role, content}, or {messages: [...]}. */
export function readMessages(path: string): ChatMessage[] {
  const raw = readJsonFile(path);
  const list = Array.isArray(raw) ? raw : (raw as { messages?: unknown })?.messages;
  if (!Array.isArray(list)) throw new InputError(`${path}: expected a JSON array of {role, content} or {"messages": [...]}`);
  return list.map((m: unknown, i) => {
    const r = m as { role?: unknown; content?: unknown; reasoning_content?: unknown };
    if (!['system', 'user', 'assistant'].includes(r?.role as string) || typeof r.content !== 'string') {
      throw new InputError(`${path}: messages[${i}] must be {role: system|user|assistant, content: string}`);
    }
    return { role: r.role as ChatRole, content: r.content, ...(typeof r.reasoning_content === 'string' ? { reasoning_content: r.reasoning_content } : {}) };
  });
}
