// The eval stage: loss and perplexity of the recipe's model (with an adapter if given) on the
// eval split of its prepared dataset (design.md loss convention), with the counted tokens.
import { loadAdapter } from '../lora/peft.js';
import { loadModel } from '../model/load.js';
import type { LoadedRecipe } from '../recipe/load.js';
import { silentSink, type Sink } from '../sink.js';
import { evaluate, type EvalResult } from '../train/evaluate.js';
import { requireDataset } from './dataset-inputs.js';
import { requireModelDir } from './inputs.js';

export type { EvalResult } from '../train/evaluate.js';

export interface EvalRecipeOptions {
  /** a PEFT adapter folder to apply (e.g. `<output>/adapter` after train) */
  adapter?: string;
  /** evaluate at most this many eval rows (default: the whole split) */
  maxRows?: number;
}

/** What the eval stage returns (and `eval --json` prints): the eval and what it ran on. */
export interface EvalSummary extends EvalResult {
  ok: true;
  model: string;
  adapter: string | null;
  dataset: string;
}

export async function evalRecipe(recipe: LoadedRecipe, sink: Sink = silentSink, opts: EvalRecipeOptions = {}): Promise<EvalSummary> {
  const modelDir = requireModelDir(recipe);
  const dataDir = requireDataset(recipe, false).dir;
  const adapter = opts.adapter === undefined ? undefined : await loadAdapter(opts.adapter, { warn: (l) => sink.warn(l) });
  sink.log(`eval ${modelDir}${opts.adapter ? ` + adapter ${opts.adapter}` : ''} on ${dataDir} (eval split)`);
  const model = await loadModel(modelDir, { backend: recipe.train.backend, note: (l) => sink.log(l) });
  try {
    const s = await evaluate(model, dataDir, { maxRows: opts.maxRows, adapter, mtp: recipe.train.eval_mtp && model.config.num_nextn_predict_layers > 0, sink });
    sink.log(`loss ${s.loss.toFixed(4)}  perplexity ${s.perplexity.toFixed(2)}  tokens ${s.tokens}  rows ${s.rows}${s.mtpAgreement !== undefined ? `  MTP top-1 agreement ${(100 * s.mtpAgreement).toFixed(1)}% over ${s.mtpPairs} pairs` : ''}`);
    return { ok: true, model: modelDir, adapter: opts.adapter ?? null, dataset: dataDir, ...s };
  } finally {
    model.dispose();
  }
}
