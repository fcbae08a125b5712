// `v4tune generate --model DIR --prompt TEXT`: continue a prompt, or with `--chat` answer it as a
// user message through the model folder's chat template (src/stages/generate.ts). Tokens are
// printed as they come (not with --json, which prints the summary).
import type { Command } from 'commander';
import type { BackendName } from '../../backend/ops.js';
import { InputError } from '../../errors.js';
import { action } from '../action.js';
import type { CliContext } from '../context.js';

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
      const maxNewTokens = num(opts.maxNewTokens, 'max-new-tokens', (x) => Number.isInteger(x) && x >= 0);
      const temperature = num(opts.temperature, 'temperature', (x) => x >= 0);
      const topP = num(opts.topP, 'top-p', (x) => x > 0 && x <= 1);
      const topK = num(opts.topK, 'top-k', (x) => Number.isInteger(x) && x >= 0);
      const seed = num(opts.seed, 'seed', Number.isInteger);
      if (!['auto', 'native', 'tfjs', 'ascend'].includes(opts.backend)) throw new InputError(`--backend: must be auto, native, tfjs or ascend (got ${opts.backend})`);
      const [{ readMessages }, { generateText }] = await Promise.all([import('../../chat/prompt.js'), import('../../stages/generate.js')]);
      const print = !ctx.json;
      const r = await generateText({
        model: opts.model,
        prompt: opts.prompt,
        chat: opts.chat,
        system: opts.system,
        messages: opts.messages !== undefined ? readMessages(opts.messages) : undefined,
        think: opts.think,
        adapter: opts.adapter,
        maxNewTokens, temperature, topP, topK, seed,
        backend: opts.backend as BackendName,
        onText: (text) => { if (print) process.stdout.write(text); },
      }, ctx);
      if (print) process.stdout.write('\n');
      return { ...r };
    }));
}
