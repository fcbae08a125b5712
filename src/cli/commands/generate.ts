// `v4tune generate --model DIR --prompt TEXT`: greedy by default, or sampled with temperature and
// top-p (seeded). The model folder must hold its tokenizer (tokenizer.json or tokenizer.model).
import type { Command } from 'commander';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { loadTokenizer } from '../../data/tokenizer.js';
import { InputError } from '../../errors.js';
import { loadModel } from '../../model/load.js';
import { action } from '../action.js';
import type { CliContext } from '../context.js';
import { mulberry32 } from '../../random.js';

/** A seeded uniform generator in [0, 1) (the sampler's randomness). */
export const seededRandom = mulberry32;

/**
 * The next token from logits [V]: argmax (ties to the lower id) when temperature = 0; else a
 * draw from softmax(logits / temperature) restricted to the smallest set of most likely tokens
 * whose probability reaches topP.
 */
export function sampleToken(logits: Float32Array, temperature: number, topP: number, rand: () => number): number {
  if (temperature <= 0) {
    let best = 0;
    for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
    return best;
  }
  let mx = -Infinity;
  for (const v of logits) mx = Math.max(mx, v);
  const p = new Float64Array(logits.length);
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += p[i] = Math.exp((logits[i] - mx) / temperature);
  const order = Array.from(p.keys()).sort((a, b) => p[b] - p[a] || a - b);
  const keep: number[] = [];
  let mass = 0;
  for (const i of order) {
    keep.push(i);
    mass += p[i] / sum;
    if (mass >= topP) break;
  }
  let u = rand() * keep.reduce((s, i) => s + p[i], 0);
  for (const i of keep) {
    u -= p[i];
    if (u <= 0) return i;
  }
  return keep[keep.length - 1];
}

function tokenizerFile(dir: string): string {
  for (const f of ['tokenizer.json', 'tokenizer.model']) if (existsSync(join(dir, f))) return join(dir, f);
  throw new InputError(`${dir}: no tokenizer in the model folder (tokenizer.json or tokenizer.model); generate needs one`);
}

function num(v: string, name: string, ok: (x: number) => boolean): number {
  const x = Number(v);
  if (!Number.isFinite(x) || !ok(x)) throw new InputError(`--${name}: invalid value ${JSON.stringify(v)}`);
  return x;
}

export function register(program: Command): void {
  program.command('generate')
    .description('continue a prompt with the model (greedy unless --temperature > 0)')
    .requiredOption('--model <dir>', 'V4 model folder (with its tokenizer)')
    .requiredOption('--prompt <text>', 'prompt text')
    .option('--max-new-tokens <n>', 'tokens to generate at most', '64')
    .option('--temperature <t>', '0 = greedy', '0')
    .option('--top-p <p>', 'nucleus sampling mass', '1')
    .option('--seed <n>', 'sampling seed', '0')
    .option('--backend <name>', 'auto | native | tfjs', 'auto')
    .action(action(async (ctx: CliContext, opts: { model: string; prompt: string; maxNewTokens: string; temperature: string; topP: string; seed: string; backend: string }) => {
      if (!existsSync(join(opts.model, 'config.json'))) throw new InputError(`${opts.model}: not a model folder (no config.json)`);
      const tokFile = tokenizerFile(opts.model);
      const maxNew = num(opts.maxNewTokens, 'max-new-tokens', (x) => Number.isInteger(x) && x >= 0);
      const temperature = num(opts.temperature, 'temperature', (x) => x >= 0);
      const topP = num(opts.topP, 'top-p', (x) => x > 0 && x <= 1);
      const seed = num(opts.seed, 'seed', Number.isInteger);
      if (!['auto', 'native', 'tfjs'].includes(opts.backend)) throw new InputError(`--backend: must be auto, native or tfjs (got ${opts.backend})`);
      const tok = await loadTokenizer(tokFile);
      const model = await loadModel(opts.model, { backend: opts.backend as 'auto' | 'native' | 'tfjs', note: (l) => ctx.log(l) });
      try {
        const prompt = [tok.bosId, ...tok.encode(opts.prompt)];
        if (prompt.some((id) => id >= model.config.vocab_size)) throw new InputError(`${tokFile}: token ids exceed the model's vocab_size ${model.config.vocab_size}`);
        const ids = prompt.slice();
        const rand = seededRandom(seed);
        const bar = ctx.progress('generate', maxNew, 'tokens');
        for (let i = 0; i < maxNew; i++) {
          const next = sampleToken(await model.lastLogits(Int32Array.from(ids)), temperature, topP, rand);
          ids.push(next);
          bar.update(i + 1);
          if (next === model.config.eos_token_id) break;
        }
        bar.stop();
        const text = tok.decode(ids.slice(prompt.length));
        if (!ctx.json) process.stdout.write(`${opts.prompt}${text}\n`);
        return { ok: true, prompt: opts.prompt, completion: text, tokens: ids.length - prompt.length };
      } finally {
        model.dispose();
      }
    }));
}
