// `v4tune eval <recipe>`: loss and perplexity of the recipe's model on the eval split of its
// prepared dataset (design.md loss convention), with the number of counted tokens.
import type { Command } from 'commander';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { openDataset } from '../../data/dataset.js';
import { InputError, NonFiniteError } from '../../errors.js';
import { loadModel } from '../../model/load.js';
import type { ModelAdapter, V4Model } from '../../model/v4/model.js';
import { loadAdapter } from '../../lora/peft.js';
import { loadRecipe, type LoadedRecipe } from '../../recipe/load.js';
import { action } from '../action.js';
import type { CliContext } from '../context.js';
import { recipeModelDir } from './prepare.js';

export interface EvalSummary {
  loss: number;
  perplexity: number;
  /** counted (predicted) tokens */
  tokens: number;
  rows: number;
  /** with `mtp`: the MTP head's next-next-token top-1 agreement with the main head, over mtpPairs pairs */
  mtpAgreement?: number;
  mtpPairs?: number;
}

/**
 * Mean next-token loss over the eval rows of a dataset folder, with an adapter if given; with
 * `mtp`, also the MTP block's top-1 agreement with the main head (model.mtpAgreement).
 */
export async function evaluate(model: V4Model, datasetDir: string, ctx: CliContext, maxRows = Infinity, adapter?: ModelAdapter, mtp = false): Promise<EvalSummary> {
  const ds = openDataset(datasetDir);
  const total = Math.min(ds.rowCount('eval'), maxRows);
  if (total === 0) throw new InputError(`${join(datasetDir, 'manifest.json')}: the eval split is empty (raise data.eval_fraction)`);
  const bar = ctx.progress('eval', total, 'rows');
  let lossSum = 0;
  let tokens = 0;
  let rows = 0;
  let agree = 0;
  let pairs = 0;
  for (const row of ds.rows('eval')) {
    if (rows >= total) break;
    const r = await model.loss(row.input_ids, row.loss_mask, { segments: row.segments, adapter });
    lossSum += r.lossSum;
    tokens += r.count;
    if (mtp) {
      const a = await model.mtpAgreement(row.input_ids, { segments: row.segments, adapter });
      agree += a.agree;
      pairs += a.pairs;
    }
    rows++;
    bar.update(rows);
  }
  bar.stop();
  if (tokens === 0) throw new InputError(`${datasetDir}: no eval position counts (every loss_mask target is 0)`);
  const loss = lossSum / tokens;
  if (!Number.isFinite(loss)) throw new NonFiniteError(`eval: the loss over ${tokens} tokens of ${datasetDir} is ${loss} (the model${adapter ? ' or the adapter' : ''} holds or produces non-finite values)`);
  return { loss, perplexity: Math.exp(loss), tokens, rows, ...(mtp ? { mtpAgreement: pairs > 0 ? agree / pairs : 0, mtpPairs: pairs } : {}) };
}

export function register(program: Command): void {
  program.command('eval')
    .description('loss and perplexity of the model on the eval split of the prepared dataset')
    .argument('<recipe>', 'recipe .yaml file')
    .option('--max-rows <n>', 'evaluate at most N eval rows')
    .option('--adapter <dir>', 'evaluate with this PEFT adapter applied (e.g. <output>/adapter after train)')
    .action(action(async (ctx: CliContext, file: string, opts: { maxRows?: string; adapter?: string }) => {
      const recipe: LoadedRecipe = loadRecipe(file);
      const modelDir = recipeModelDir(recipe);
      if (!existsSync(join(modelDir, 'config.json'))) {
        throw new InputError(`${recipe.file}: model folder ${modelDir} has no config.json (run \`v4tune run\` or \`v4tune init-model\` first)`);
      }
      const dataDir = recipe.data.output;
      if (!existsSync(join(dataDir, 'manifest.json'))) {
        throw new InputError(`${recipe.file}: dataset ${dataDir} is not prepared (run \`v4tune prepare ${file}\` first)`);
      }
      let maxRows = Infinity;
      if (opts.maxRows !== undefined) {
        maxRows = Number(opts.maxRows);
        if (!Number.isInteger(maxRows) || maxRows < 1) throw new InputError(`--max-rows must be a positive integer (got ${opts.maxRows})`);
      }
      const adapter = opts.adapter === undefined ? undefined : await loadAdapter(opts.adapter, { warn: (l) => ctx.warn(l) });
      ctx.log(`eval ${modelDir}${opts.adapter ? ` + adapter ${opts.adapter}` : ''} on ${dataDir} (eval split)`);
      const model = await loadModel(modelDir, { backend: recipe.train.backend, note: (l) => ctx.log(l) });
      try {
        const s = await evaluate(model, dataDir, ctx, maxRows, adapter, recipe.train.eval_mtp && model.config.num_nextn_predict_layers > 0);
        ctx.log(`loss ${s.loss.toFixed(4)}  perplexity ${s.perplexity.toFixed(2)}  tokens ${s.tokens}  rows ${s.rows}${s.mtpAgreement !== undefined ? `  MTP top-1 agreement ${(100 * s.mtpAgreement).toFixed(1)}% over ${s.mtpPairs} pairs` : ''}`);
        return { ok: true, model: modelDir, adapter: opts.adapter ?? null, dataset: dataDir, ...s };
      } finally {
        model.dispose();
      }
    }));
}
