// The chat template (DeepSeek V4's encoding_dsv4.py, chat and thinking modes) and its loss mask,
// token by token against hand-written expectations; text documents: bos, text, eos, all loss.
import { describe, expect, it, beforeAll, afterAll, vi } from 'vitest';
import { loadTokenizer, type TextTokenizer } from '../../src/data/tokenizer.js';
import { chatTokenIds, encodeChat, encodeText, type ChatTokenIds } from '../../src/data/documents.js';
import { embeddedTokenizerFile, tempDir } from './helpers.js';

const BOS = 0;
const EOS = 1;
const USER = 128803;
const ASSISTANT = 128804;
const THINK = 128821;
const END_THINK = 128822;
// Pieces of the embedded tokenizer, checked once below.
const BE_BRIEF = [7153, 9708, 16]; // "Be brief."
const HI = [23166]; // "Hi"
const HELLO = [19923, 3]; // "Hello!"
const WHY = [11687, 33]; // "Why?"
const BECAUSE = [18850, 16]; // "Because."
const Q = [51]; // "Q"
const PLAN = [16013]; // "plan"
const A = [35]; // "A"

vi.setConfig({ testTimeout: 60_000, hookTimeout: 60_000 });

const tmp = tempDir();
let tok: TextTokenizer;
let special: ChatTokenIds;
beforeAll(async () => {
  tok = await loadTokenizer(embeddedTokenizerFile(tmp.dir));
  const ids = chatTokenIds(tok);
  if ('missing' in ids) throw new Error(`missing ${ids.missing.join(', ')}`);
  special = ids;
});
afterAll(() => tmp.cleanup());

/** Expected [ids, mask] from (tokens, loss) runs. */
function runs(...parts: [number[], 0 | 1][]): { ids: number[]; mask: number[] } {
  return { ids: parts.flatMap(([t]) => t), mask: parts.flatMap(([t, m]) => t.map(() => m)) };
}

function got(e: { ids: Int32Array; mask: Uint8Array }): { ids: number[]; mask: number[] } {
  return { ids: [...e.ids], mask: [...e.mask] };
}

describe('chat template', () => {
  it('uses the pieces the expectations are written with', () => {
    expect([tok.encode('Be brief.'), tok.encode('Hi'), tok.encode('Hello!'), tok.encode('Why?'), tok.encode('Because.'), tok.encode('Q'), tok.encode('plan'), tok.encode('A')])
      .toEqual([BE_BRIEF, HI, HELLO, WHY, BECAUSE, Q, PLAN, A]);
    expect(special).toEqual({ user: USER, assistant: ASSISTANT, thinkStart: THINK, thinkEnd: END_THINK });
  });

  it('multi-turn with a system prompt: <bos>{system}<｜User｜>{msg}<｜Assistant｜></think>{answer}<eos> per turn, loss after each <｜Assistant｜> through its <eos>', () => {
    const e = encodeChat(tok, special, [
      { role: 'system', content: 'Be brief.' },
      { role: 'user', content: 'Hi' },
      { role: 'assistant', content: 'Hello!' },
      { role: 'user', content: 'Why?' },
      { role: 'assistant', content: 'Because.' },
    ]);
    expect(got(e)).toEqual(runs(
      [[BOS], 0], [BE_BRIEF, 0], [[USER], 0], [HI, 0], [[ASSISTANT], 0],
      [[END_THINK], 1], [HELLO, 1], [[EOS], 1],
      [[USER], 0], [WHY, 0], [[ASSISTANT], 0],
      [[END_THINK], 1], [BECAUSE, 1], [[EOS], 1],
    ));
  });

  it('thinking mode: the last user turn opens <think>, its answer is {reasoning}</think>{answer}<eos>; earlier reasoning is dropped', () => {
    const e = encodeChat(tok, special, [
      { role: 'user', content: 'Hi' },
      { role: 'assistant', content: 'Hello!', reasoning_content: 'plan' },
      { role: 'user', content: 'Q' },
      { role: 'assistant', content: 'A', reasoning_content: 'plan' },
    ]);
    expect(got(e)).toEqual(runs(
      [[BOS], 0], [[USER], 0], [HI, 0], [[ASSISTANT], 0],
      [[END_THINK], 1], [HELLO, 1], [[EOS], 1],
      [[USER], 0], [Q, 0], [[ASSISTANT], 0],
      [[THINK], 1], [PLAN, 1], [[END_THINK], 1], [A, 1], [[EOS], 1],
    ));
  });

  it('two user turns in a row get no <｜Assistant｜> between them; a trailing user turn gets an unanswered, masked-out <｜Assistant｜></think>', () => {
    const e = encodeChat(tok, special, [
      { role: 'user', content: 'Hi' },
      { role: 'user', content: 'Q' },
      { role: 'assistant', content: 'A' },
      { role: 'user', content: 'Why?' },
    ]);
    expect(got(e)).toEqual(runs(
      [[BOS], 0], [[USER], 0], [HI, 0], [[USER], 0], [Q, 0], [[ASSISTANT], 0],
      [[END_THINK], 1], [A, 1], [[EOS], 1],
      [[USER], 0], [WHY, 0], [[ASSISTANT], 0], [[END_THINK], 0],
    ));
  });

  it('decodes back to the exact V4 prompt string', () => {
    const e = encodeChat(tok, special, [
      { role: 'system', content: 'Be brief.' },
      { role: 'user', content: 'Hi' },
      { role: 'assistant', content: 'Hello!' },
    ]);
    expect(tok.decode(e.ids)).toBe('<｜begin▁of▁sentence｜>Be brief.<｜User｜>Hi<｜Assistant｜></think>Hello!<｜end▁of▁sentence｜>');
  });
});

describe('text documents', () => {
  it('are bos, the text\'s tokens, eos, with loss on every token', () => {
    expect(got(encodeText(tok, 'Hello!'))).toEqual(runs([[BOS], 1], [HELLO, 1], [[EOS], 1]));
  });
});
