// The generate stage: continue a prompt (bos + text), or answer it as a chat through the model
// folder's chat template (a system message, a whole conversation, thinking mode), with the base
// model or base + adapter. Greedy by default, or sampled (temperature, top-k, top-p, seeded).
// The model folder must hold its tokenizer (tokenizer.json or tokenizer.model).
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { BackendName } from '../backend/ops.js';
import { generateTokens, textStreamer } from '../model/generate.js';
import { chatPrompt } from '../chat/prompt.js';
import type { ChatMessage } from '../chat/template.js';
import { loadTokenizer } from '../data/tokenizer.js';
import { InputError } from '../errors.js';
import { loadAdapter } from '../lora/peft.js';
import { loadModel } from '../model/load.js';
import { silentSink, type Sink } from '../sink.js';
import { readModelConfig } from './inputs.js';

export interface GenerateRequest {
  /** V4 model folder, with its tokenizer */
  model: string;
  /** the text to continue; with `chat`, the user message (after `messages`, when both are given) */
  prompt?: string;
  /** answer through the folder's chat template (implied by `messages`) */
  chat?: boolean;
  /** chat: a system message before the user message */
  system?: string;
  /** a conversation ending with a user turn, to answer */
  messages?: ChatMessage[];
  /** chat: open the answer with <think> */
  think?: boolean;
  /** a PEFT adapter folder to apply */
  adapter?: string;
  /** tokens to generate at most (default 64) */
  maxNewTokens?: number;
  /** 0 (default) = greedy */
  temperature?: number;
  topP?: number;
  /** sample among the k most likely tokens only (0 = no limit) */
  topK?: number;
  seed?: number;
  backend?: BackendName;
  /**
   * Told the text as it grows: for a plain prompt the prompt itself first, then each new piece
   * of the completion (held back while it ends inside a multi-byte character).
   */
  onText?: (text: string) => void;
}

/** What the generate stage returns (and `generate --json` prints). */
export interface GenerateResult {
  ok: true;
  prompt: string | null;
  messages: ChatMessage[] | null;
  adapter: string | null;
  completion: string;
  ids: number[];
  tokens: number;
}

function tokenizerFile(dir: string): string {
  for (const f of ['tokenizer.json', 'tokenizer.model']) if (existsSync(join(dir, f))) return join(dir, f);
  throw new InputError(`${dir}: no tokenizer in the model folder (tokenizer.json or tokenizer.model); generate needs one`);
}

export async function generateText(req: GenerateRequest, sink: Sink = silentSink): Promise<GenerateResult> {
  readModelConfig(req.model);
  const chat = req.chat === true || req.messages !== undefined;
  if (req.messages === undefined && req.prompt === undefined) throw new InputError('generate needs --prompt <text> (or --messages <file>)');
  if (!chat && (req.system !== undefined || req.think)) throw new InputError('--system and --think apply with --chat only');
  const tokFile = tokenizerFile(req.model);
  const tok = await loadTokenizer(tokFile);
  let prompt: number[];
  let messages: ChatMessage[] | null = null;
  if (chat) {
    messages = req.messages !== undefined ? [...req.messages] : [
      ...(req.system !== undefined ? [{ role: 'system' as const, content: req.system }] : []),
      { role: 'user' as const, content: req.prompt! },
    ];
    if (req.messages !== undefined && req.prompt !== undefined) messages.push({ role: 'user', content: req.prompt });
    const p = chatPrompt(req.model, tok, messages, req.think === true);
    sink.log(`chat template: ${p.template}`);
    prompt = p.ids;
  } else {
    prompt = [tok.bosId, ...tok.encode(req.prompt!)];
  }
  const adapter = req.adapter === undefined ? null : await loadAdapter(req.adapter, { warn: (l) => sink.warn(l) });
  const model = await loadModel(req.model, { backend: req.backend ?? 'auto', note: (l) => sink.log(l) });
  try {
    adapter?.assertFits(model.config, req.adapter!);
    if (prompt.some((id) => id >= model.config.vocab_size)) throw new InputError(`${tokFile}: token ids exceed the model's vocab_size ${model.config.vocab_size}`);
    const eos = model.config.eos_token_id;
    const stream = textStreamer((ids) => tok.decode(ids.filter((t) => t !== eos)));
    const shown: number[] = [];
    if (!chat) req.onText?.(req.prompt!);
    const ids = await generateTokens(model, prompt, {
      maxNewTokens: req.maxNewTokens ?? 64, temperature: req.temperature ?? 0, topP: req.topP ?? 1, topK: req.topK ?? 0, seed: req.seed ?? 0, adapter, stopId: eos,
      onToken: (id) => {
        shown.push(id);
        const add = stream(shown);
        if (add) req.onText?.(add);
      },
    });
    const text = tok.decode(ids.filter((t) => t !== eos));
    return { ok: true, prompt: req.prompt ?? null, messages, adapter: req.adapter ?? null, completion: text, ids, tokens: ids.length };
  } finally {
    model.dispose();
  }
}
