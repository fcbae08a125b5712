// What a recipe's `train` section asks beyond the optimizer's numbers: the run's length (steps,
// or epochs over the train split), a warm start from an existing adapter, and the eval prompts
// turned into token ids.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { renderChat } from '../chat/template.js';
import { chatBosEos } from '../data/documents.js';
import type { TextTokenizer } from '../data/tokenizer.js';
import { InputError } from '../errors.js';
import type { Adapter } from '../lora/adapter.js';
import { loadAdapter } from '../lora/peft.js';
import type { LoadedRecipe } from '../recipe/load.js';
import type { SampleSettings } from './run.js';

export const DEFAULT_STEPS = 100;

/** Optimizer steps of the run: train.steps, or ceil(epochs · rows / rows per step), or 100. */
export function resolveSteps(t: { steps?: number; epochs?: number; batch_rows: number; grad_accum: number }, trainRows: number): number {
  if (t.steps !== undefined) return t.steps;
  if (t.epochs !== undefined) return Math.max(1, Math.ceil((t.epochs * trainRows) / (t.batch_rows * t.grad_accum)));
  return DEFAULT_STEPS;
}

/**
 * Copy a saved adapter's factors into `fresh` (made from the recipe's `lora`): every module must
 * be in both with the same shapes, so the warm-started run trains exactly what the recipe names.
 */
export async function warmStart(fresh: Adapter, dir: string, where: string, warn: (l: string) => void, holds?: (module: string) => boolean): Promise<void> {
  if (!existsSync(join(dir, 'adapter_config.json'))) throw new InputError(`${where}: train.warm_start ${dir} is not an adapter folder (no adapter_config.json)`);
  // `holds`: fresh is one rank's part of the adapter (expert parallel); the rest stays unread
  const from = await loadAdapter(dir, { warn, holds });
  const have = new Set(from.modules());
  for (const m of fresh.modules()) {
    const a = from.factors(m);
    const b = fresh.factors(m)!;
    if (!a) throw new InputError(`${where}: train.warm_start ${dir} has no LoRA on ${m}, which lora.targets asks for (use the same lora settings as the run that made it)`);
    if (a.A.length !== b.A.length || a.B.length !== b.B.length) {
      throw new InputError(`${where}: train.warm_start ${dir}: ${m} has factors of ${a.A.length} + ${a.B.length} values, lora asks for ${b.A.length} + ${b.B.length} (another r?)`);
    }
    b.A.set(a.A);
    b.B.set(a.B);
    have.delete(m);
  }
  if (have.size > 0) throw new InputError(`${where}: train.warm_start ${dir} adapts ${[...have][0]}, which lora.targets does not (${have.size} such modules)`);
}

/** train.eval_prompts as token ids: text continued after bos, `{chat}` through the chat template. */
export function samplePrompts(recipe: LoadedRecipe, tok: TextTokenizer): SampleSettings | undefined {
  const t = recipe.train;
  if (t.eval_prompts.length === 0) return undefined;
  const be = chatBosEos(tok);
  return {
    prompts: t.eval_prompts.map((p) => (typeof p === 'string'
      ? { label: p, ids: [tok.bosId, ...tok.encode(p)] }
      : { label: p.chat, ids: tok.encode(renderChat([{ role: 'user', content: p.chat }], { ...be, addGenerationPrompt: true })) })),
    maxNewTokens: t.eval_max_new_tokens,
    stopId: tok.eosId,
    decode: (ids) => tok.decode(ids),
  };
}
