// `v4tune generate --model DIR --prompt TEXT`: continue a prompt (bos + text), or with `--chat`
// answer it as a user message through the model folder's chat template (`--system`,
// `--messages FILE` for a whole conversation, `--think` to open the answer with <think>); with
// `--adapter`, the base model plus a trained adapter. Greedy by default, or sampled (temperature,
// top-k, top-p, seeded). Tokens are printed as they come. The model folder must hold its
// tokenizer (tokenizer.json or tokenizer.model).
import type { Command } from 'commander';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { BackendName } from '../../backend/ops.js';
import { generateTokens, textStreamer } from '../../chat/generate.js';
import { chatPrompt, readMessages } from '../../chat/prompt.js';
import type { ChatMessage } from '../../chat/template.js';
import { loadTokenizer } from '../../data/tokenizer.js';
import { InputError } from '../../errors.js';
import { loadAdapter } from '../../lora/peft.js';
import { loadModel } from '../../model/load.js';
import { action } from '../action.js';
import type { CliContext } from '../context.js';

export { sampleToken, seededRandom } from '../../chat/generate.js';

function tokenizerFile(dir: string): string {
  for (const f of ['tokenizer.json', 'tokenizer.model']) if (existsSync(join(dir, f))) return join(dir, f);
  throw new InputError(`${dir}: no tokenizer in the model folder (tokenizer.json or tokenizer.model); generate needs one`);
}

function num(v: string, name: string, ok: (x: number) => boolean): number {
  const x = Number(v);
  if (!Number.isFinite(x) || !ok(x)) throw new InputError(`--${name}: invalid value ${JSON.stringify(v)}`);
  return x;
}

interface GenerateCliOptions {
  model: string;
  prompt?: string;
  chat?: boolean;
  system?: string;
  messages?: string;
  think?: boolean;
  adapter?: string;
  maxNewTokens: string;
  temperature: string;
  topP: string;
  topK: string;
  seed: string;
  backend: string;
}

export function register(program: Command): void {
  program.command('generate')
    .description('continue a prompt, or answer it as a chat (--chat), with the model and optionally an adapter (greedy unless --temperature > 0)')
    .requiredOption('--model <dir>', 'V4 model folder (with its tokenizer)')
    .option('--prompt <text>', 'prompt text (with --chat: the user message)')
    .option('--chat', 'render the prompt as a user message through the folder\'s chat template and generate the answer')
    .option('--system <text>', 'with --chat: a system message before the user message')
    .option('--messages <file>', 'a JSON conversation ([{role, content}, ...], ending with a user turn) to answer (implies --chat)')
    .option('--think', 'with --chat: open the answer with <think> (thinking mode)')
    .option('--adapter <dir>', 'apply this PEFT adapter (e.g. <output>/adapter after train)')
    .option('--max-new-tokens <n>', 'tokens to generate at most', '64')
    .option('--temperature <t>', '0 = greedy', '0')
    .option('--top-p <p>', 'nucleus sampling mass', '1')
    .option('--top-k <k>', 'sample among the k most likely tokens only (0 = no limit)', '0')
    .option('--seed <n>', 'sampling seed', '0')
    .option('--backend <name>', 'auto | native | tfjs | ascend', 'auto')
    .action(action(async (ctx: CliContext, opts: GenerateCliOptions) => {
      if (!existsSync(join(opts.model, 'config.json'))) throw new InputError(`${opts.model}: not a model folder (no config.json)`);
      const chat = opts.chat === true || opts.messages !== undefined;
      if (opts.messages === undefined && opts.prompt === undefined) throw new InputError('generate needs --prompt <text> (or --messages <file>)');
      if (!chat && (opts.system !== undefined || opts.think)) throw new InputError('--system and --think apply with --chat only');
      const tokFile = tokenizerFile(opts.model);
      const maxNew = num(opts.maxNewTokens, 'max-new-tokens', (x) => Number.isInteger(x) && x >= 0);
      const temperature = num(opts.temperature, 'temperature', (x) => x >= 0);
      const topP = num(opts.topP, 'top-p', (x) => x > 0 && x <= 1);
      const topK = num(opts.topK, 'top-k', (x) => Number.isInteger(x) && x >= 0);
      const seed = num(opts.seed, 'seed', Number.isInteger);
      if (!['auto', 'native', 'tfjs', 'ascend'].includes(opts.backend)) throw new InputError(`--backend: must be auto, native, tfjs or ascend (got ${opts.backend})`);
      const tok = await loadTokenizer(tokFile);
      let prompt: number[];
      let messages: ChatMessage[] | null = null;
      if (chat) {
        messages = opts.messages !== undefined ? readMessages(opts.messages) : [
          ...(opts.system !== undefined ? [{ role: 'system' as const, content: opts.system }] : []),
          { role: 'user' as const, content: opts.prompt! },
        ];
        if (opts.messages !== undefined && opts.prompt !== undefined) messages.push({ role: 'user', content: opts.prompt });
        const p = chatPrompt(opts.model, tok, messages, opts.think === true);
        ctx.log(`chat template: ${p.template}`);
        prompt = p.ids;
      } else {
        prompt = [tok.bosId, ...tok.encode(opts.prompt!)];
      }
      const adapter = opts.adapter === undefined ? null : await loadAdapter(opts.adapter, { warn: (l) => ctx.warn(l) });
      const model = await loadModel(opts.model, { backend: opts.backend as BackendName, note: (l) => ctx.log(l) });
      try {
        adapter?.assertFits(model.config, opts.adapter!);
        if (prompt.some((id) => id >= model.config.vocab_size)) throw new InputError(`${tokFile}: token ids exceed the model's vocab_size ${model.config.vocab_size}`);
        const eos = model.config.eos_token_id;
        const stream = textStreamer((ids) => tok.decode(ids.filter((t) => t !== eos)));
        const shown: number[] = [];
        const print = !ctx.json;
        if (print && !chat) process.stdout.write(opts.prompt!);
        const ids = await generateTokens(model, prompt, {
          maxNewTokens: maxNew, temperature, topP, topK, seed, adapter, stopId: eos,
          onToken: (id) => {
            shown.push(id);
            const add = stream(shown);
            if (print && add) process.stdout.write(add);
          },
        });
        if (print) process.stdout.write('\n');
        const text = tok.decode(ids.filter((t) => t !== eos));
        return { ok: true, prompt: opts.prompt ?? null, messages, adapter: opts.adapter ?? null, completion: text, ids, tokens: ids.length };
      } finally {
        model.dispose();
      }
    }));
}
