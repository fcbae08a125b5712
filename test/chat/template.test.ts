// One chat template: the Jinja template v4tune writes into tokenizer_config.json, run by
// transformers' apply_chat_template, gives exactly the ids training renders (src/data/documents.ts
// renders through the same template); a chat the template cannot reproduce is refused.
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { readChatTemplate, stampChatTemplate } from '../../src/chat/config.js';
import { chatRefusal, renderChat, V4_CHAT_TEMPLATE, type ChatMessage } from '../../src/chat/template.js';
import { chatBosEos, chatTokenIds, encodeChat, type ChatTokenIds } from '../../src/data/documents.js';
import { loadTokenizer, type TextTokenizer } from '../../src/data/tokenizer.js';
import * as api from '../../src/index.js';
import { embeddedTokenizerFile, tempDir } from '../data/helpers.js';
import { runPython, skipPython } from '../interop/python.js';

vi.setConfig({ testTimeout: 300_000, hookTimeout: 300_000 });

const tmp = tempDir('v4tune-chat-');
let tok: TextTokenizer;
let special: ChatTokenIds;
beforeAll(async () => {
  tok = await loadTokenizer(embeddedTokenizerFile(tmp.dir));
  const ids = chatTokenIds(tok);
  if ('missing' in ids) throw new Error(`missing ${ids.missing.join(', ')}`);
  special = ids;
});
afterAll(() => tmp.cleanup());

const CHATS: Record<string, ChatMessage[]> = {
  'single turn': [{ role: 'user', content: 'What is 2+2?' }, { role: 'assistant', content: 'It is 4.' }],
  'system prompt': [
    { role: 'system', content: 'You are a terse assistant.' },
    { role: 'user', content: 'Name a prime.' },
    { role: 'assistant', content: 'Seven.' },
  ],
  'multi-turn': [
    { role: 'system', content: 'Answer in French.' },
    { role: 'user', content: 'Hello there' },
    { role: 'assistant', content: 'Bonjour !' },
    { role: 'user', content: 'And goodbye?' },
    { role: 'assistant', content: ' Au revoir.\n' },
  ],
  'thinking (last answer reasons; earlier reasoning dropped)': [
    { role: 'user', content: 'Hi' },
    { role: 'assistant', content: 'Hello!', reasoning_content: 'greet back' },
    { role: 'user', content: 'Is 91 prime?' },
    { role: 'assistant', content: 'No: 91 = 7 × 13.', reasoning_content: 'Try 7: 7 × 13 = 91.' },
  ],
  'two user turns in a row, unicode': [
    { role: 'user', content: 'Übersetze:' },
    { role: 'user', content: '猫' },
    { role: 'assistant', content: 'Katze 🐈' },
  ],
};

describe('V4 chat template', () => {
  it('renders the V4 prompt format', () => {
    const be = { bosToken: '<｜begin▁of▁sentence｜>', eosToken: '<｜end▁of▁sentence｜>' };
    expect(renderChat(CHATS['system prompt']!, be)).toBe('<｜begin▁of▁sentence｜>You are a terse assistant.<｜User｜>Name a prime.<｜Assistant｜></think>Seven.<｜end▁of▁sentence｜>');
    expect(renderChat(CHATS['thinking (last answer reasons; earlier reasoning dropped)']!, be)).toBe(
      '<｜begin▁of▁sentence｜><｜User｜>Hi<｜Assistant｜></think>Hello!<｜end▁of▁sentence｜><｜User｜>Is 91 prime?<｜Assistant｜><think>Try 7: 7 × 13 = 91.</think>No: 91 = 7 × 13.<｜end▁of▁sentence｜>');
    expect(renderChat([{ role: 'user', content: 'Q' }], { ...be, addGenerationPrompt: true })).toBe('<｜begin▁of▁sentence｜><｜User｜>Q<｜Assistant｜></think>');
    expect(renderChat([{ role: 'user', content: 'Q' }], { ...be, addGenerationPrompt: true, thinking: true })).toBe('<｜begin▁of▁sentence｜><｜User｜>Q<｜Assistant｜><think>');
    expect(renderChat([{ role: 'user', content: 'Q' }], be)).toBe('<｜begin▁of▁sentence｜><｜User｜>Q');
  });

  it('is what the embedded tokenizer_config.json carries, and stampChatTemplate sets it in a folder (other fields kept)', () => {
    expect(readChatTemplate(tmp.dir)).toBe(V4_CHAT_TEMPLATE);
    const d = join(tmp.dir, 'other');
    mkdirSync(d);
    writeFileSync(join(d, 'tokenizer_config.json'), JSON.stringify({ bos_token: 'X', chat_template: '{{ "v3" }}' }));
    expect(stampChatTemplate(d)).toBe(true);
    expect(JSON.parse(readFileSync(join(d, 'tokenizer_config.json'), 'utf8'))).toEqual({ bos_token: 'X', chat_template: V4_CHAT_TEMPLATE });
    const none = join(tmp.dir, 'none');
    mkdirSync(none);
    expect(stampChatTemplate(none)).toBe(false);
  });

  it('is part of the library API (a GGUF writer or server reads the template from there or from tokenizer_config.json)', () => {
    expect(api.V4_CHAT_TEMPLATE).toBe(V4_CHAT_TEMPLATE);
    expect(api.readChatTemplate(tmp.dir)).toBe(V4_CHAT_TEMPLATE);
    expect(api.renderChat([{ role: 'user', content: 'Q' }], { bosToken: '<s>', eosToken: '</s>', addGenerationPrompt: true })).toBe('<s><｜User｜>Q<｜Assistant｜></think>');
  });

  it('refuses chats it cannot reproduce, with the reason', () => {
    expect(chatRefusal([{ role: 'system', content: 's' }, { role: 'assistant', content: 'a' }])).toMatch(/messages\[1\] is an assistant turn that does not follow a user turn/);
    expect(chatRefusal([{ role: 'user', content: 'q' }, { role: 'assistant', content: 'a' }, { role: 'assistant', content: 'b' }])).toMatch(/messages\[2\]/);
    expect(chatRefusal([{ role: 'user', content: 'say <｜Assistant｜> please' }, { role: 'assistant', content: 'a' }])).toMatch(/messages\[0\]\.content contains "<｜Assistant｜>", a marker of V4's chat format/);
    expect(chatRefusal([{ role: 'user', content: 'q' }, { role: 'assistant', content: 'a', reasoning_content: 'x</think>y' }])).toMatch(/reasoning_content contains "<\/think>"/);
    expect(() => encodeChat(tok, special, [{ role: 'user', content: 'q<｜end▁of▁sentence｜>' }, { role: 'assistant', content: 'a' }])).toThrow(/chat refused: messages\[0\]\.content contains/);
    for (const c of Object.values(CHATS)) expect(chatRefusal(c)).toBeNull();
  });

  it.skipIf(skipPython)('transformers apply_chat_template on the written tokenizer_config.json gives exactly the ids training renders (and tokenizer(text) v4tune\'s bos + ids)', () => {
    const trained = Object.fromEntries(Object.entries(CHATS).map(([k, m]) => [k, [...encodeChat(tok, special, m).ids]]));
    const gen = [{ role: 'user' as const, content: 'Is 97 prime?' }];
    const be = chatBosEos(tok);
    const genIds = (thinking: boolean) => tok.encode(renderChat(gen, { ...be, addGenerationPrompt: true, thinking }));
    const out = runPython(`
import json, sys
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained(sys.argv[1])
chats = json.loads(sys.argv[2])
gen = json.loads(sys.argv[3])
def ids(x):
    return list(x["input_ids"] if hasattr(x, "keys") else x)
res = {k: ids(tok.apply_chat_template(m, tokenize=True)) for k, m in chats.items()}
res["gen"] = ids(tok.apply_chat_template(gen, tokenize=True, add_generation_prompt=True))
res["gen_thinking"] = ids(tok.apply_chat_template(gen, tokenize=True, add_generation_prompt=True, thinking=True))
res["text"] = ids(tok("Pump P-2 pressure 4 bar: ok."))
print(json.dumps(res))
`, [tmp.dir, JSON.stringify(CHATS), JSON.stringify(gen)]);
    const hf = JSON.parse(out.trim().split('\n').pop()!) as Record<string, number[]>;
    for (const k of Object.keys(CHATS)) expect(hf[k], k).toEqual(trained[k]);
    expect(hf.gen).toEqual(genIds(false));
    expect(hf.gen_thinking).toEqual(genIds(true));
    expect(hf.gen![0]).toBe(0); // bos, rendered by the template
    // plain text: the tokenizer's post-processor puts bos first, as v4tune's documents and prompts
    expect(hf.text).toEqual([tok.bosId, ...tok.encode('Pump P-2 pressure 4 bar: ok.')]);
  });
});
